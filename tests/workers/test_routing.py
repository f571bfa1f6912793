"""Capability routing under load, against the real RabbitMQ: the agent fleet issue's routing "must show".

About twenty agents with random capability sets serve 2,000 tasks spread over mixed requirement sets. Each agent is
the real agent runtime, ``workers.agent.Agent``, in this process: it learns lanes from the control broadcast and
the lane list, consumes through its intake, claims each task, runs the stand-in skill of ``tests.agents_standin``
(loaded as ``devart agent --module`` loads it) and reports the result. What stands in for the rest of devart is
the API, ``StandInAPI``: it keeps the dispatched tasks, grants each claim once (refusing as the API does: 403 for
a lane the agent cannot serve, 409 for a task already claimed), records the reports, and deactivates an agent
through its keepalive reply, as the API does. Tasks are published the way ``activities.dispatch`` does: the lane
is declared and announced on first use, then task messages go to the task exchange with publisher confirms,
persistent, routing key = lane. The test owns its AMQP prefix and deletes everything it declared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import aio_pika
import pytest

from devart.core.contracts import AgentTaskMessage, SandboxHandle, SandboxSpec, Source, StageResult, TaskDetail
from devart.core.devstack import services
from devart.core.messaging.topology import Topology, can_serve, lane_name, lane_requirements
from devart.sandboxes.base import ExecResult, OutputCallback
from devart.workers.agent import Agent
from devart.workers.agent_client import AgentClient, Refused
from devart_sdk import load
from tests.agents_standin import PROBE
from tests.helpers import poll
from tests.stack import require

log = logging.getLogger("devart.tests.routing")

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CAPABILITIES = ("python", "node", "test", "docker", "lint", "deploy")
AGENTS = 20
TASKS = 2000
SEED = 4
#: Tasks published concurrently, each awaiting its own publisher confirm.
PUBLISH_WINDOW = 100
#: Generous: RabbitMQ's round-robin keeps an agent's share of a lane, per task slot, within a small factor.
MAX_SPREAD_RATIO = 4.0
#: How often the agents call keepalive: the delay before a deactivation reaches an agent.
KEEPALIVE = 0.2


@dataclass
class Ledger:
    """What the stand-in API knows: the dispatched tasks, the lanes announced, every claim and report."""

    tasks: dict[str, TaskDetail] = field(default_factory=dict)
    lane_of: dict[str, str] = field(default_factory=dict)
    lanes: list[str] = field(default_factory=list)
    claims: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: (monotonic time, agent, task id, lane) of every claim granted
    granted: list[tuple[float, str, str, str]] = field(default_factory=list)
    misroutes: list[str] = field(default_factory=list)
    completed: dict[str, list[tuple[str, StageResult]]] = field(default_factory=lambda: defaultdict(list))
    #: Anything else an agent reported (failures, cancellations, hand-backs): none is expected.
    other_reports: list[str] = field(default_factory=list)


class StandInAPI(AgentClient):
    """The API's agent routes as one agent sees them, over the shared ledger (no HTTP, no database)."""

    def __init__(self, name: str, capabilities: set[str], ledger: Ledger) -> None:  # noqa: D107
        # No super().__init__(): nothing here goes over HTTP.
        self.name, self.capabilities, self.ledger = name, capabilities, ledger
        self.active = True
        self.keepalives = 0
        self.lane_lists = 0

    async def close(self) -> None:
        return None

    async def me(self) -> dict[str, Any]:
        return {"name": self.name, "capabilities": sorted(self.capabilities), "active": self.active, "org": "default"}

    async def keepalive(self, status: str, skills: list[str]) -> dict[str, Any]:
        self.keepalives += 1
        assert PROBE in skills, skills
        return {"active": self.active, "handback": False}

    async def lanes(self) -> list[str]:
        self.lane_lists += 1
        return list(self.ledger.lanes)

    async def claim(self, task_id: str) -> TaskDetail:
        lane = self.ledger.lane_of[task_id]
        self.ledger.claims[task_id].append(self.name)
        if not can_serve(self.capabilities, lane):
            self.ledger.misroutes.append(f"{task_id} on {lane} -> {self.name} {sorted(self.capabilities)}")
            raise Refused(403, f"agent {self.name} lacks capabilities for lane {lane}")
        if len(self.ledger.claims[task_id]) > 1:
            raise Refused(409, f"task {task_id} is already claimed by {self.ledger.claims[task_id][0]}")
        self.ledger.granted.append((time.monotonic(), self.name, task_id, lane))
        return self.ledger.tasks[task_id].model_copy(update={"claim_id": uuid.uuid4().hex})

    async def heartbeat(self, task: TaskDetail, details: dict[str, Any]) -> bool:
        return False

    async def complete(self, task: TaskDetail, result: StageResult) -> None:
        self.ledger.completed[task.task_id].append((self.name, result))

    async def fail(self, task: TaskDetail, error_type: str, message: str, non_retryable: bool,
                   result: StageResult | None) -> None:
        self.ledger.other_reports.append(f"{self.name} failed {task.task_id}: {error_type}: {message}")

    async def cancelled(self, task: TaskDetail) -> None:
        self.ledger.other_reports.append(f"{self.name} cancelled {task.task_id}")

    async def release(self, task: TaskDetail, reason: str) -> None:
        self.ledger.other_reports.append(f"{self.name} released {task.task_id}: {reason}")


class NoSandbox:
    """The probe skill runs no command, so its agents need no sandbox; any use of one is a failure."""

    backend = "none"

    async def provision(self, run_id: str, stage: str, source: Source, spec: SandboxSpec) -> SandboxHandle:
        raise AssertionError("the routing test provisions no sandbox")

    async def exec(self, handle: SandboxHandle, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                   timeout: float = 600.0, on_output: OutputCallback | None = None,
                   output_cap: int = 0) -> ExecResult:
        raise AssertionError(f"the routing test runs no command: {command}")

    async def store_artifact(self, handle: SandboxHandle, name: str, data: bytes) -> bool:
        raise AssertionError("the routing test stores no artifact")

    async def teardown(self, handle: SandboxHandle) -> None:
        raise AssertionError("the routing test tears down no sandbox")

    async def list(self) -> list[SandboxHandle]:
        return []


def task_detail(task_id: str, requires: list[str]) -> TaskDetail:
    """What the API's claim returns for a dispatched task of the probe skill."""
    return TaskDetail(
        task_id=task_id, attempt=1, claim_id="", heartbeat_interval=5.0, run_id=f"run-{task_id}", pipeline="routing",
        stage="probe", skill=PROBE, requires=requires, inputs={"n": task_id},
        sandbox=SandboxHandle(backend="none", id=task_id, workspace="/nowhere"), source=Source(repo="/nowhere"),
    )


def fleet_plan(rng: random.Random) -> tuple[list[set[str]], list[str], list[list[str]]]:
    """Agents' capability sets, the lanes in use, and each task's requirements (in a shuffled order).

    A lane is used only when at least two agents can serve it, so deactivating any one agent leaves it served.
    """
    agents = [set(rng.sample(CAPABILITIES, rng.randint(2, 4))) for _ in range(AGENTS)]
    subsets = [lane_name(list(c)) for size in (1, 2, 3) for c in combinations(CAPABILITIES, size)]
    lanes = [lane for lane in subsets if sum(can_serve(caps, lane) for caps in agents) >= 2]
    weights = [rng.randint(1, 6) for _ in lanes]
    tasks = []
    for lane in rng.choices(lanes, weights=weights, k=TASKS):
        requires = sorted(lane_requirements(lane))
        rng.shuffle(requires)
        tasks.append(requires)
    return agents, lanes, tasks


async def delete_topology(topology: Topology, lanes: list[str]) -> None:
    async with await aio_pika.connect(AMQP_URL) as connection:
        assert not await topology.delete(connection, lanes)


@pytest.mark.timeout(120)
async def test_routing_under_load_with_a_deactivation_mid_stream() -> None:
    require(services.amqp_reachable(AMQP_URL), f"RabbitMQ is not reachable at {AMQP_URL} (rabbitmq-server -detached)")
    # Given: a fleet of real agents that knows no lane yet, so every lane reaches it through the control broadcast
    rng = random.Random(SEED)
    topology = Topology(prefix=f"devart-route-{uuid.uuid4().hex[:8]}", delivery_limit=5)
    capability_sets, _, tasks = fleet_plan(rng)
    ledger = Ledger()
    skills = load("tests.agents_standin").runners()
    clients = [StandInAPI(f"agent-{i:02d}", caps, ledger) for i, caps in enumerate(capability_sets)]
    slots = {c.name: rng.randint(1, 5) for c in clients}
    agents = [Agent(c.name, sorted(c.capabilities), c, NoSandbox(), AMQP_URL, topology, concurrency=slots[c.name],
                    keepalive_interval=KEEPALIVE, drain_grace=5.0, skills=skills) for c in clients]
    stop = asyncio.Event()
    declared: list[str] = []
    publisher = await aio_pika.connect(AMQP_URL)
    serving: list[asyncio.Task[None]] = []
    try:
        channel = await publisher.channel(publisher_confirms=True)
        exchange = await topology.declare_exchanges(channel)
        control = await channel.get_exchange(topology.control_exchange)
        serving = [asyncio.create_task(agent.run(stop)) for agent in agents]

        async def listening() -> bool:  # bound to the control exchange, and has read the (empty) lane list
            for task in serving:
                if task.done():
                    task.result()  # an agent that died at its start says why
            return all(c.lane_lists >= 1 for c in clients)

        await poll(listening, deadline=30, what="every agent to start serving", every=0.05)
        for i, requires in enumerate(tasks):
            ledger.tasks[f"task-{i:04d}"] = task_detail(f"task-{i:04d}", requires)
            ledger.lane_of[f"task-{i:04d}"] = lane_name(requires)
        published_at: dict[str, float] = {}

        async def publish(index: int) -> None:
            task_id, requires = f"task-{index:04d}", tasks[index]
            body = AgentTaskMessage(task_id=task_id, run_id=f"run-{task_id}", stage="probe", attempt=1,
                                    lane=lane_name(requires)).model_dump_json(exclude={"priority"})
            await exchange.publish(
                aio_pika.Message(body=body.encode(), content_type="application/json", message_id=task_id,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT, type="agent.task"),
                routing_key=lane_name(requires),
            )
            published_at[task_id] = time.monotonic()

        async def publish_range(start: int, stop: int) -> None:
            for chunk in range(start, stop, PUBLISH_WINDOW):
                window = range(chunk, min(stop, chunk + PUBLISH_WINDOW))
                for lane in dict.fromkeys(lane_name(tasks[i]) for i in window):  # the dispatcher's _ensure_band
                    if lane not in declared:
                        await topology.declare_lane(channel, lane)
                        declared.append(lane)
                        ledger.lanes.append(lane)
                        await control.publish(aio_pika.Message(body=lane.encode(), type="lane.declared"),
                                              routing_key="")
                await asyncio.gather(*(publish(i) for i in window))

        # When: half the tasks go out, the busiest agent is deactivated through its keepalive, then the other half
        await publish_range(0, TASKS // 2)
        await poll(completed(ledger, TASKS // 4), deadline=30, what="the fleet to start working", every=0.02)
        busiest = Counter(agent for _, agent, _, _ in ledger.granted).most_common(1)[0][0]
        victim = next(c for c in clients if c.name == busiest)
        victim.active = False
        seen = victim.keepalives
        # The agent stops consuming inside the keepalive call that hears it; the call after that one starts only
        # once it has, so from then on nothing may reach the victim's skill.

        async def stopped() -> bool:
            return victim.keepalives >= seen + 2

        await poll(stopped, deadline=10, what=f"{victim.name} to hear of its deactivation", every=0.02)
        cutoff = time.monotonic()
        before_cutoff = sum(1 for _, agent, _, _ in ledger.granted if agent == victim.name)
        await publish_range(TASKS // 2, TASKS)
        await poll(completed(ledger, TASKS), deadline=60, what=f"all {TASKS} tasks to be completed", every=0.05)

        # Then: every agent serves exactly its lanes, no misroute, every task claimed and run once and reported
        # whole, nothing left behind, load spread, and the deactivated agent went quiet
        assert set(declared) == set(ledger.lane_of.values())
        for agent, client in zip(agents, clients, strict=True):
            assert set(agent._intake.bands) == {ln for ln in declared if can_serve(client.capabilities, ln)}, agent.name
        assert ledger.misroutes == []
        assert ledger.other_reports == []
        assert {t: claims for t, claims in ledger.claims.items() if len(claims) != 1} == {}
        assert set(ledger.completed) == set(ledger.tasks)
        assert {t: len(done) for t, done in ledger.completed.items() if len(done) != 1} == {}
        claimer = {task: agent for _, agent, task, _ in ledger.granted}
        for task_id, [(agent_name, result)] in ledger.completed.items():
            assert agent_name == claimer[task_id]
            assert result.status == "succeeded" and result.output["task_id"] == task_id
            assert result.output["requires"] == sorted(ledger.tasks[task_id].requires)
            assert result.output["inputs"] == {"n": task_id}
        await poll(settled(channel, topology, declared), deadline=10, what="every lane to be empty", every=0.05)
        dlq = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        assert dlq.declaration_result.message_count == 0

        late = [task for t, agent, task, _ in ledger.granted if agent == victim.name and t > cutoff]
        assert late == [], f"{victim.name} claimed {len(late)} tasks after it stopped consuming"
        assert before_cutoff > 0
        lane_of = ledger.lane_of
        served_after = [t for t in list(lane_of)[TASKS // 2:] if can_serve(victim.capabilities, lane_of[t])]
        assert served_after, "the deactivated agent could have served none of the second half: a vacuous check"
        assert all(published_at[t] > cutoff and claimer[t] != victim.name for t in served_after)

        counts = Counter(claimer.values())
        traffic = Counter(lane_of.values())
        idle = [c.name for c in clients if counts[c.name] == 0 and any(can_serve(c.capabilities, ln) for ln in traffic)]
        assert idle == [], f"eligible agents that got no task: {idle} (distribution {counts})"
        busiest_lane, busiest_count = traffic.most_common(1)[0]
        per_slot = {c.name: sum(1 for t in lane_of if lane_of[t] == busiest_lane and claimer[t] == c.name)
                    / slots[c.name] for c in clients if c is not victim and can_serve(c.capabilities, busiest_lane)}
        ratio = max(per_slot.values()) / max(1e-9, min(per_slot.values()))
        log.info("lanes=%d tasks per agent=%s victim=%s (%d before cutoff, %d of the second half rerouted)",
                 len(declared), dict(counts), victim.name, before_cutoff, len(served_after))
        log.info("busiest lane %s (%d tasks) per eligible agent and slot=%s max/min=%.2f", busiest_lane,
                 busiest_count, per_slot, ratio)
        assert min(per_slot.values()) > 0 and ratio <= MAX_SPREAD_RATIO, per_slot
    finally:
        stop.set()
        await asyncio.gather(*serving, return_exceptions=True)
        await publisher.close()
        await delete_topology(topology, declared)


def completed(ledger: Ledger, count: int) -> Callable[[], Awaitable[int | None]]:
    async def check() -> int | None:
        return len(ledger.completed) if len(ledger.completed) >= count else None

    return check


def settled(channel: aio_pika.abc.AbstractChannel, topology: Topology,
            lanes: list[str]) -> Callable[[], Awaitable[bool]]:
    """Whether every lane's queue is empty: an agent acknowledges a task only after it has chosen its next."""

    async def check() -> bool:
        for lane in lanes:
            queue = await channel.declare_queue(topology.lane_queue(lane), passive=True)
            if queue.declaration_result.message_count:
                return False
        return True

    return check
