"""``python -m bench.chaos``: the chaos test's harness at scale, on a stack of its own.

Starts the benchmark's stack (``bench.stack``) and a few agents, then runs ``tests/chaos/harness.py``: many runs
(chains and fan-outs that must succeed, runs that must fail, a few cancelled mid-run) while agents, the pipeline
worker, the API and the Temporal dev server are SIGKILLed in a seeded order and started again after a short outage.
``tests/chaos/checks.py`` then checks every run's end state (API, Temporal, feed), results applied twice, sandboxes
and processes left behind. Prints runs by end state, the problems and how long each part took to serve again, and
writes ``bench/results/chaos.json``. Exits 1 when a check failed, so a long soak can run it in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika

from bench import stack as bench_stack
from bench.__main__ import machine
from bench.report import RESULTS, progress
from devart.core.database import db
from devart.core.devstack import embedded, services, stackctl
from devart.core.devstack.stackplan import DEFAULT_POOL
from devart.core.devstack.supervisor import Child
from devart.core.messaging.topology import Topology
from devart.domain.agents import create_or_rotate
from devart.sandboxes.factory import get_sandbox
from devart.sandboxes.local import LocalSandbox
from tests.chaos.checks import Verdict, verify
from tests.chaos.clients import until
from tests.chaos.harness import REVIVE_DEADLINE, Harness, Target
from tests.chaos.plan import make_plan

#: About five minutes on 2 CPUs: a run started every two seconds, a kill every ten.
FULL = {"runs": 120, "kills": 24, "window": 240.0, "agents": 4, "concurrency": 4, "cancels": 4}
#: A smoke check of the harness itself, about a minute and a half.
QUICK = {"runs": 20, "kills": 6, "window": 45.0, "agents": 3, "concurrency": 3, "cancels": 1}
#: Under ``devart up``'s supervisor (``--supervised``): its pool is three agents running one task each, so fewer
#: runs, and no outage of the harness's own: the supervisor decides when a killed part starts again.
SUPERVISED = {"runs": 40, "kills": 12, "window": 150.0, "agents": 3, "concurrency": 1, "cancels": 2,
              "outage": (0.0, 0.0)}
#: Settings the API and agents get: heartbeats often enough for the stages' short heartbeat timeout.
AGENT_ENV = {"DEVART_AGENT_HEARTBEAT_INTERVAL": "0.5", "DEVART_AGENT_KEEPALIVE_INTERVAL": "1.0",
             "DEVART_AGENT_MODULES": "tests.plugins.noop"}


@dataclass
class BenchTarget:
    """The benchmark stack's parts, killed and revived through its own handles (``Target`` of the harness)."""

    stack: bench_stack.BenchStack
    concurrency: int
    keys: dict[str, str] = field(default_factory=dict)  #: agent name -> key, to start it again as itself

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    def _agent(self, name: str) -> Child:
        return next(a for a in self.stack.agents if a.name == f"agent-{name}")

    def _child(self, part: str) -> Child:
        parts = {"api": self.stack.api, "agents-api": self.stack.agents_api, "worker": self.stack.worker}
        return parts.get(part) or self._agent(part)

    def pid(self, part: str) -> int:
        return self.stack.temporal.pid if part == "temporal" else self._child(part).proc.pid

    def sigkill(self, part: str) -> None:
        if part == "temporal":
            os.kill(self.stack.temporal.pid, signal.SIGKILL)
            self.stack.temporal.wait()
            return
        child = self._child(part)
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
        self.stack.supervisor.children.remove(child)

    def revive(self, part: str) -> None:
        s = self.stack
        if part == "temporal":
            port = int(s.temporal_address.rsplit(":", 1)[1])
            s.temporal = services.start_temporal(s.state / "temporal.db", port=port, headless=True,
                                                 log_file=s.state / "logs" / "temporal.log")
        elif part == "api":
            s.api = s.supervisor.api("127.0.0.1", int(s.env["DEVART_API_PORT"]))
            s.supervisor.wait_healthy(s.api_url, s.api)
        elif part == "agents-api":
            s.agents_api = s.supervisor.agents_api("127.0.0.1", int(s.env["DEVART_API_AGENT_PORT"]))
            s.supervisor.wait_healthy(bench_stack.agents_api_url(s.env), s.agents_api)
        elif part == "worker":
            s.worker = s.supervisor.worker()
        else:
            s.agents.remove(self._agent(part))
            s.agents.append(self._start_agent(part))

    def _start_agent(self, name: str) -> Child:
        return self.stack.supervisor.agent(name, [self.stack.capability], self.keys[name], "--concurrency",
                                           str(self.concurrency),
                                           DEVART_AGENT_API_URL=bench_stack.agents_api_url(self.stack.env))


async def batch(target: Target, cfg: dict[str, Any], seed: int, settle: float, *, agents: list[str],
                capability: str, state: Path) -> tuple[Verdict, dict[str, Any]]:
    """Run the seed's batch on a started stack whose agents are ``agents`` (reporting to its agents' API), and
    check it."""
    repo = state / "repo"
    repo.mkdir()
    (repo / "README").write_text("a repository for chaos runs\n")
    plan = make_plan(seed, runs=cfg["runs"], kills=cfg["kills"], window=cfg["window"], agents=agents,
                     cancels=cfg["cancels"], outage=cfg.get("outage", (0.3, 2.5)))
    harness = Harness(target, plan, prefix=f"chaos-{uuid.uuid4().hex[:6]}", capability=capability, agents=agents,
                      repo=repo, agents_api_url=bench_stack.agents_api_url(dict(target.env)))
    try:
        async def serving() -> bool:
            rows = await harness.db.rows("SELECT 1 FROM agents WHERE name = ANY(:n) AND last_seen_at IS NOT NULL",
                                         n=agents)
            return len(rows) == len(agents)

        await until(serving, deadline=60, what="the agents to serve")
        progress(f"seed {seed}: {cfg['runs']} runs and {cfg['kills']} kills over {cfg['window']:.0f}s")
        await harness.run_batch(settle)
        progress(f"batch over in {harness.batch.seconds:.0f}s; checking")
        sandbox = get_sandbox()
        assert isinstance(sandbox, LocalSandbox)
        verdict = await verify(harness, sandbox_root=sandbox.root, temporal_db=state / "temporal.db")
        dead = await harness.db.rows("SELECT count(*) AS n FROM dead_letters")
        lanes = [str(r["name"]) for r in await harness.db.rows("SELECT name FROM lanes")]
    finally:
        await harness.close()
    return verdict, {"dead_letters": int(dead[0]["n"]), "lanes": lanes}


async def soak(cfg: dict[str, Any], seed: int, settle: float) -> tuple[Verdict, dict[str, Any]]:
    """The batch on the benchmark's stack, its parts killed and started again here."""
    stack = bench_stack.start()
    target = BenchTarget(stack, cfg["concurrency"])
    try:
        names = [f"chaos-agent-{i}-{uuid.uuid4().hex[:4]}" for i in range(cfg["agents"])]
        for name in names:
            async with db.session() as s:
                target.keys[name] = await create_or_rotate(s, name, [stack.capability])
            stack.agents.append(target._start_agent(name))
        return await batch(target, cfg, seed, settle, agents=names, capability=stack.capability, state=stack.state)
    finally:
        left = await bench_stack.delete_broker_objects(stack)
        if left:
            progress(f"could not remove from RabbitMQ: {left}")
        bench_stack.stop(stack)


@dataclass
class SupervisedTarget:
    """A ``devart up`` stack (``core/devstack/stackctl.py``): parts are killed here and started again by its
    supervisor."""

    state: Path
    env: dict[str, str]
    killed: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _child(part: str) -> str:
        return part if part in ("temporal", "api", "agents-api", "worker") else f"agent-{part}"

    def pid(self, part: str) -> int:
        record = stackctl.read(self.state)
        pid = record.children[self._child(part)].pid if record else None
        assert pid is not None, f"{part} is not running"
        return pid

    def sigkill(self, part: str) -> None:
        self.killed[part] = self.pid(part)
        os.kill(self.killed[part], signal.SIGKILL)

    def revive(self, part: str) -> None:
        """Start nothing: wait until the supervisor has started the part again."""
        stackctl.wait_running(self.state, self._child(part), not_pid=self.killed.pop(part), timeout=REVIVE_DEADLINE)


async def supervised_soak(cfg: dict[str, Any], seed: int, settle: float) -> tuple[Verdict, dict[str, Any]]:
    """The batch on a stack ``devart up`` runs (its supervisor, PostgreSQL, Temporal, API, worker, agent pool)."""
    state = Path(tempfile.mkdtemp(prefix="devart-chaos-"))
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("DEVART_", "TEMPORAL_", "AMQP_", "OTEL_")) and k != "DATABASE_URL"},
           **services.isolated_env(state, "devart-chaos", amqp_url), **AGENT_ENV,
           "DEVART_UI_URL": f"http://127.0.0.1:{services.free_port()}", "DEVART_LOG_LEVEL": "WARNING",
           # A kill is no crash loop: the supervisor must start a part again however often the chaos kills it.
           "DEVART_SUPERVISOR_CRASH_LOOP": "1000"}
    extra: dict[str, Any] = {}
    try:
        await asyncio.to_thread(stackctl.start, state, env)
        env["DATABASE_URL"] = embedded.url(state)
        os.environ.update(env)  # the checks' sweep and database reads reach this stack
        verdict, extra = await batch(SupervisedTarget(state, env), cfg, seed, settle, agents=list(DEFAULT_POOL),
                                     capability="python", state=state)
        return verdict, extra
    finally:
        await _delete_lanes(env, extra.get("lanes", []))
        await asyncio.to_thread(stackctl.stop, state)
        shutil.rmtree(state, ignore_errors=True)


async def _delete_lanes(env: dict[str, str], lanes: list[str]) -> None:
    """Leave the shared RabbitMQ as it was: the stack's exchanges, lanes and dead-letter queue go."""
    topology = Topology(prefix=env["AMQP_PREFIX"], delivery_limit=0)
    async with await aio_pika.connect(env["AMQP_URL"], timeout=10) as connection:
        left = await topology.delete(connection, lanes)
    if left:
        progress(f"could not remove from RabbitMQ: {left}")


def table(f: dict[str, Any], problems: list[str]) -> str:
    lines = [f"seed {f['seed']}: {f['planned']} runs ({', '.join(f'{n} {k}' for k, n in sorted(f['kinds'].items()))})"
             f" in {f['seconds']:.0f}s, {len(f['kills'])} kills",
             "end states: " + ", ".join(f"{n} {s}" for s, n in sorted(f["end_states"].items()))
             + f" ({f['wrong_end_states']} not as designed)",
             f"results applied twice: {f['double_applied']}; sandboxes until the sweep: {f['sandboxes_until_swept']},"
             f" after it: {f['sandboxes_left']} (artifact folders {f['artifacts_left']}, mounts "
             f"{f.get('mounts_left', 0)}, processes {f['sandbox_processes_left']}); duplicate processes: "
             f"{f['duplicate_processes']}",
             f"attempts {f['attempts']}, stages retried {f['retried_stages']}, late reports refused "
             f"{f['late_reports']}, starts refused {f['refused_starts']}, adopted {f['adopted_starts']}, "
             f"recorded but never started {f['orphaned_starts']}, dead letters {f.get('dead_letters', 0)}",
             f"run seconds: p50 {f['run_seconds'].get('p50')}, max {f['run_seconds'].get('max')}",
             "", f"{'part killed':<12}{'kills':>6}{'back p50 s':>12}{'back max s':>12}"]
    lines += [f"{role:<12}{s.get('n', 0):>6}{s.get('p50', '-'):>12}{s.get('max', '-'):>12}"
              for role, s in f["recovery_s"].items()]
    lines += ["", f"{len(problems)} problem(s)" + (":" if problems else "")] + [f"  {p}" for p in problems[:50]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 runs, 6 kills: a smoke check of the harness")
    parser.add_argument("--supervised", action="store_true",
                        help="on a `devart up` stack whose supervisor starts what is killed (40 runs, 12 kills)")
    parser.add_argument("--seed", type=int, help="replay a batch (default: DEVART_CHAOS_SEED, else a random one)")
    for name in ("runs", "kills", "agents", "concurrency", "cancels"):
        parser.add_argument(f"--{name}", type=int, help=f"override the mode's {name}")
    parser.add_argument("--window", type=float, help="seconds the starts and kills are spread over")
    parser.add_argument("--settle", type=float, default=240.0,
                        help="seconds every run has to end once the last killed part serves again")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for chaos.json")
    args = parser.parse_args()
    cfg: dict[str, Any] = dict(SUPERVISED if args.supervised else QUICK if args.quick else FULL)
    cfg.update({k: getattr(args, k) for k in (*FULL, "window") if getattr(args, k, None) is not None})
    seed = args.seed if args.seed is not None else int(os.environ.get("DEVART_CHAOS_SEED") or
                                                        random.randrange(1_000_000))
    os.environ.update(AGENT_ENV)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("devart.chaos").setLevel(logging.INFO)
    info = machine()
    started = time.monotonic()
    verdict, extra = asyncio.run((supervised_soak if args.supervised else soak)(cfg, seed, args.settle))
    extra.pop("lanes", None)
    figures = {**verdict.figures, **extra}
    print(table(figures, verdict.problems))
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick,
              "supervised": args.supervised, "settings": cfg,
              "seconds": round(time.monotonic() - started, 1), "machine": info, "figures": figures,
              "problems": verdict.problems}
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"chaos{'-supervised' if args.supervised else '-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    if verdict.problems:
        mode = " --supervised" if args.supervised else " --quick" if args.quick else ""
        print(f"replay: python -m bench.chaos --seed {seed}{mode}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
