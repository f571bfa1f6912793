"""What a chaos batch does, decided up front from one seed: which runs start when, what is killed when, for how long.

The same seed gives the same batch (the pipelines, their order and timing, the kill order and outages), so a
failure found by ``tests/chaos/test_chaos.py`` or ``bench/chaos.py`` is replayed with ``DEVART_CHAOS_SEED``. Only
the machine's own timing differs between two replays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

#: Seconds of silence after which a claimed task counts as dead and Temporal retries it: short, so a killed agent
#: costs a run seconds, yet several agent heartbeats (0.5-1 s apart) long, so a busy machine is not mistaken for one.
HEARTBEAT_TIMEOUT = 6
#: Attempts a stage may take: every kill of an agent, the API or Temporal can cost a claimed task one attempt, and
#: a run that succeeds by design must not fail because the chaos used up its retries.
MAX_ATTEMPTS = 40
#: The parts killed, each at least once per batch; ``agent`` is one of the batch's agents, chosen by the seed, and
#: ``agents-api`` the API process the agents claim and report through (``devart api --agents-only``).
PARTS = ("agent", "worker", "api", "agents-api", "temporal")
#: How each kind of run must end: the run's status in the API, its workflow's status in Temporal, and every stage's.
EXPECTED: dict[str, tuple[str, str, dict[str, str]]] = {
    "chain": ("succeeded", "COMPLETED", {"work": "succeeded", "report": "succeeded"}),
    "fanout": ("succeeded", "COMPLETED", {"left": "succeeded", "right": "succeeded", "join": "succeeded"}),
    "fail": ("failed", "FAILED", {"work": "succeeded", "broken": "failed", "after": "skipped"}),
    "cancel": ("cancelled", "CANCELED", {"long": "cancelled"}),
}


@dataclass(frozen=True)
class PlannedRun:
    ticket: str  #: the run's ``ticket`` parameter: finds its row when the API died before answering the start
    kind: str  #: a key of ``EXPECTED``
    at: float  #: seconds after the batch starts
    nap: float  #: seconds the agent sleeps in the first stage, so kills land on claimed tasks


@dataclass(frozen=True)
class PlannedKill:
    at: float  #: seconds after the batch starts (later if the previous kill's part is not back yet)
    role: str  #: a key of ``PARTS``
    part: str  #: what the stack kills: ``temporal``, ``api``, ``agents-api``, ``worker`` or an agent's name
    outage: float  #: seconds the part stays down before it is started again


@dataclass(frozen=True)
class Plan:
    seed: int
    runs: list[PlannedRun]
    kills: list[PlannedKill]


def make_plan(seed: int, *, runs: int, kills: int, window: float, agents: list[str], cancels: int = 1,
              fail_share: float = 0.2, outage: tuple[float, float] = (0.3, 2.5),
              nap: tuple[float, float] = (3.0, 10.0)) -> Plan:
    """Spread ``runs`` starts over the first 80 % of ``window`` seconds and ``kills`` kills over all of it.

    Every part of ``PARTS`` is killed at least once (so ``kills`` must be at least 5), in an order the seed picks.
    """
    if kills < len(PARTS):
        raise ValueError(f"a batch kills each of {', '.join(PARTS)} at least once: kills must be >= {len(PARTS)}")
    rng = random.Random(seed)
    fails = max(1, round(runs * fail_share))
    kinds = ["cancel"] * cancels + ["fail"] * fails
    kinds += [rng.choice(("chain", "fanout")) for _ in range(runs - len(kinds))]
    rng.shuffle(kinds)
    starts = sorted(rng.uniform(0, window * 0.8) for _ in kinds)
    planned = [PlannedRun(ticket=f"r{i:04d}", kind=kind, at=round(at, 2), nap=round(rng.uniform(*nap), 2))
               for i, (kind, at) in enumerate(zip(kinds, starts, strict=True))]
    roles = list(PARTS) + [rng.choice(PARTS) for _ in range(kills - len(PARTS))]
    rng.shuffle(roles)
    times = sorted(rng.uniform(window * 0.05, window) for _ in roles)
    chosen = [PlannedKill(at=round(at, 2), role=role, part=rng.choice(agents) if role == "agent" else role,
                          outage=round(rng.uniform(*outage), 2)) for role, at in zip(roles, times, strict=True)]
    return Plan(seed=seed, runs=planned, kills=chosen)


def _stage(name: str, skill: str, capability: str, inputs: dict[str, Any], depends_on: list[str] | None = None
           ) -> dict[str, Any]:
    return {
        "name": name, "skill": skill, "requires": [capability], "depends_on": depends_on or [], "inputs": inputs,
        "timeout": 120, "heartbeat_timeout": HEARTBEAT_TIMEOUT, "wait_timeout": 600,
        "retry": {"initial_interval": 0.5, "backoff_coefficient": 2.0, "maximum_interval": 2,
                  "maximum_attempts": MAX_ATTEMPTS},
    }


def pipelines(prefix: str, capability: str) -> dict[str, dict[str, Any]]:
    """The batch's pipeline definitions by kind, named ``<prefix>-<kind>``, on a lane only the batch's agents serve.

    Every stage runs in a real sandbox (a sandboxed command of the ``noop`` or ``shell`` skill); the first stage of
    each also sleeps in the agent for the run's ``nap``, so kills find tasks in flight.
    """
    params = {"ticket": "", "nap": "0"}
    napping = {"sleep": "${nap}", "sandbox_command": "echo ${ticket} > ticket.txt && cat ticket.txt"}
    stages: dict[str, list[dict[str, Any]]] = {
        "chain": [_stage("work", "noop", capability, napping),
                  _stage("report", "shell", capability, {"command": "echo report ${ticket}"}, ["work"])],
        "fanout": [_stage("left", "noop", capability, napping),
                   _stage("right", "noop", capability, {"sandbox_command": "ls -la"}),
                   _stage("join", "shell", capability, {"command": "echo joined ${ticket}"}, ["left", "right"])],
        "fail": [_stage("work", "noop", capability, napping),
                 _stage("broken", "shell", capability,
                        {"command": "echo failing ${ticket}; exit 1", "retryable": "false"}, ["work"]),
                 _stage("after", "shell", capability, {"command": "echo never"}, ["broken"])],
        # A long command in the sandbox: the cancel must reach it through the agent and the teardown.
        "cancel": [_stage("long", "noop", capability, {"sandbox_command": "sleep 600"})],
    }
    return {kind: {"name": f"{prefix}-{kind}", "params": params, "stages": s} for kind, s in stages.items()}
