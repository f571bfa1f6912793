"""The load driver and the scale sweep.

``closed_loop`` runs K workflows at concurrency C: each of C loops starts one, waits for its result and starts the
next. A baseline run is ``execute_workflow`` start → result; a devart run is ``POST /v1/runs`` sent → the run
workflow's result through its Temporal handle (``result()`` is one long poll: waiting costs the API nothing).

The sweep puts N runs in flight at once (1, 10, 100, 1,000), baseline and devart; at each level both run
``max(N, minimum)`` workflows, and a sampler reads the resident memory (psutil RSS, children included) of the
API, the pipeline worker and the agents every ``SAMPLE_SECONDS`` while the devart runs are in flight. Memory per
in-flight run is (peak − idle before) ÷ N.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from bench import report
from bench.pipeline import BaselineWorkflow, noop
from bench.stack import BenchStack
from devart.core.contracts import RunResult, RunStatus
from devart.core.database import db

#: Longest a single benchmarked run may take before it counts as an error.
RUN_DEADLINE_SECONDS = 300.0
#: How often the memory sampler reads the processes' RSS.
SAMPLE_SECONDS = 0.2
MIB = 1024 * 1024


def baseline_worker(client: Client, task_queue: str) -> Worker:
    """The baseline's worker, with the settings of ``workers.pipeline_worker.build_worker``."""
    return Worker(client, task_queue=task_queue, workflows=[BaselineWorkflow], activities=[noop],
                  max_concurrent_activities=200)


@dataclass
class Sample:
    """What one closed-loop measurement saw: per-run latencies (s), wall time, errors and the run ids."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def add(self, other: Sample) -> None:
        self.latencies += other.latencies
        self.seconds += other.seconds
        self.errors += other.errors
        self.error_messages += other.error_messages[: max(0, 5 - len(self.error_messages))]
        self.ids += other.ids


One = Callable[[], Awaitable[str]]


async def closed_loop(one: One, total: int, concurrency: int, deadline: float = RUN_DEADLINE_SECONDS) -> Sample:
    """Run ``one`` ``total`` times, ``concurrency`` at a time; a run failing or taking over ``deadline`` seconds
    counts as an error."""
    sample = Sample()
    left = iter(range(total))

    async def loop() -> None:
        for _ in left:
            began = time.perf_counter()
            try:
                sample.ids.append(await asyncio.wait_for(one(), deadline))
                sample.latencies.append(time.perf_counter() - began)
            except Exception as exc:
                sample.errors += 1
                if len(sample.error_messages) < 5:
                    sample.error_messages.append(f"{type(exc).__name__}: {exc}"[:300])

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(min(total, concurrency))))
    sample.seconds = time.perf_counter() - began
    return sample


def baseline_run(client: Client, task_queue: str) -> One:
    async def one() -> str:
        workflow_id = f"bench-baseline-{uuid.uuid4().hex[:12]}"
        result = await client.execute_workflow(BaselineWorkflow.run, workflow_id, id=workflow_id,
                                               task_queue=task_queue)
        if result != workflow_id:
            raise RuntimeError(f"baseline returned {result!r} for {workflow_id!r}")
        return workflow_id

    return one


async def publish(api: httpx.AsyncClient, definition: dict[str, Any]) -> None:
    response = await api.post("/v1/pipelines", json=definition)
    if response.status_code != 201:
        raise RuntimeError(f"publishing {definition['name']} failed: {response.status_code} {response.text}")


async def start_run(api: httpx.AsyncClient, pipeline: str, repo: str) -> str:
    """``POST /v1/runs``; returns the run id."""
    response = await api.post("/v1/runs", json={"pipeline": pipeline, "repo": repo, "trigger": "bench"})
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/runs: {response.status_code} {response.text[:200]}")
    return str(response.json()["run_id"])


def devart_run(api: httpx.AsyncClient, client: Client, pipeline: str, repo: str) -> One:
    async def one() -> str:
        run_id = await start_run(api, pipeline, repo)
        result = await client.get_workflow_handle(run_id, result_type=RunResult).result()
        if result.status != RunStatus.SUCCEEDED:
            raise RuntimeError(f"run {run_id} {result.status.value}: {result.error}")
        return run_id

    return one


async def breakdown(client: Client, run_ids: list[str]) -> dict[str, float]:
    """Median milliseconds a run spends in each step, from the runs' Temporal histories (and, for devart runs,
    their ``task_attempts`` rows).

    For every activity type: ``<type> queued`` (scheduled → a worker started it) and ``<type> running``
    (started → completed). Workflow tasks likewise (``queued`` is matching, ``running`` the worker's turn and the
    completion RPC). ``run_agent_task running`` splits into ``attempt recorded`` (activity started → the attempt
    row's created_at, just before the publish), ``published → claimed`` and ``claimed → reported`` (the skill,
    and the API's completion through Temporal). ``workflow`` is start → close.
    """
    per_step: dict[str, list[float]] = {}
    attempts = await _attempt_times(run_ids)
    for run_id in run_ids:
        history = await client.get_workflow_handle(run_id).fetch_history()
        scheduled: dict[int, tuple[str, float]] = {}
        started: dict[int, float] = {}
        task_scheduled = task_started = 0.0
        steps: defaultdict[str, float] = defaultdict(float)
        times = [event.event_time.ToNanoseconds() / 1e6 for event in history.events]
        for event, at in zip(history.events, times, strict=True):
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[event.event_id] = (event.activity_task_scheduled_event_attributes.activity_type.name, at)
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                sid = event.activity_task_started_event_attributes.scheduled_event_id
                name, when = scheduled[sid]
                steps[f"{name} queued"] += at - when
                started[sid] = at
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                sid = event.activity_task_completed_event_attributes.scheduled_event_id
                name, _ = scheduled[sid]
                steps[f"{name} running"] += at - started[sid]
                if name == "run_agent_task":
                    for created, claimed, finished in attempts.get(run_id, []):
                        if started[sid] <= created <= at:
                            steps["  attempt recorded"] += created - started[sid]
                            steps["  published → claimed"] += claimed - created
                            steps["  claimed → reported"] += finished - claimed
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                task_scheduled = at
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                task_started = at
                steps["workflow tasks queued"] += at - task_scheduled
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                steps["workflow tasks running"] += at - task_started
        steps["workflow"] = times[-1] - times[0]
        for step, ms in steps.items():
            per_step.setdefault(step, []).append(ms)
    return {step: round(sorted(v)[len(v) // 2], 2) for step, v in per_step.items()}


async def _attempt_times(run_ids: list[str]) -> dict[str, list[tuple[float, float, float]]]:
    """created_at, claimed_at and finished_at (epoch ms) of the runs' finished task attempts."""
    query = text("SELECT run_id, EXTRACT(EPOCH FROM created_at) * 1000 AS c, EXTRACT(EPOCH FROM claimed_at) * 1000 "
                 "AS cl, EXTRACT(EPOCH FROM finished_at) * 1000 AS f FROM task_attempts WHERE run_id = ANY(:ids) "
                 "AND claimed_at IS NOT NULL AND finished_at IS NOT NULL")
    out: dict[str, list[tuple[float, float, float]]] = {}
    async with db.session() as s:
        for r in (await s.execute(query, {"ids": run_ids})).all():
            out.setdefault(r.run_id, []).append((float(r.c), float(r.cl), float(r.f)))
    return out


def rss(pids: list[int]) -> int:
    """Resident bytes of these processes and all their children (gone processes count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
    return total


def cpu_seconds(pids: list[int], children: bool = True) -> float:
    """User + system CPU seconds of these processes and (unless told not to) of their live and reaped children."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            total += t.user + t.system
            if not children:
                continue
            total += t.children_user + t.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
    return total


@dataclass
class CpuMeter:
    """CPU seconds each process spent between ``start`` and ``stop``, added up over several measurements.

    ``own_only`` roles count without their children: the benchmark's own process is the parent of the stack.
    """

    pids: dict[str, list[int]]
    own_only: set[str] = field(default_factory=set)
    spent: dict[str, float] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        return {role: cpu_seconds(p, role not in self.own_only) for role, p in self.pids.items()}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        for role, seconds in self._read().items():
            self.spent[role] = self.spent.get(role, 0.0) + seconds - self._start[role]

    def per_run_ms(self, runs: int) -> dict[str, float]:
        out = {role: round(s * 1e3 / runs, 1) for role, s in self.spent.items() if runs}
        out["total"] = round(sum(out.values()), 1)
        return out


@dataclass
class MemorySampler:
    """Peak RSS per role while running, beside the idle figure read when it started."""

    pids: dict[str, list[int]]
    idle: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MemorySampler:
        self.idle = {role: rss(p) for role, p in self.pids.items()}
        self.peak = dict(self.idle)
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            for role, pids in self.pids.items():
                self.peak[role] = max(self.peak[role], await asyncio.to_thread(rss, pids))

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def figures(self, in_flight: int) -> dict[str, dict[str, float]]:
        after = {role: rss(p) for role, p in self.pids.items()}
        out = {}
        for role in [*self.pids, "total"]:
            idle = sum(self.idle.values()) if role == "total" else self.idle[role]
            peak = sum(self.peak.values()) if role == "total" else self.peak[role]
            end = sum(after.values()) if role == "total" else after[role]
            out[role] = {"idle_mib": round(idle / MIB, 1), "peak_mib": round(peak / MIB, 1),
                         "after_mib": round(end / MIB, 1),
                         "per_run_kib": round(max(0, peak - idle) / 1024 / in_flight, 1)}
        return out


async def dispatch_delays(run_ids: list[str]) -> dict[str, float]:
    """Queued → claimed of the runs' first attempts, from ``task_attempts`` (created_at is set just before the
    publish; claimed_at after the agent's claim went through the API, Temporal's heartbeat and the commit)."""
    if not run_ids:
        return {}
    query = text("SELECT EXTRACT(EPOCH FROM (claimed_at - created_at)) AS s FROM task_attempts "
                 "WHERE run_id = ANY(:ids) AND attempt = 1 AND claimed_at IS NOT NULL")
    async with db.session() as s:
        seconds = [float(r.s) for r in (await s.execute(query, {"ids": run_ids})).all()]
    return report.latency(seconds)


async def level(stack: BenchStack, api: httpx.AsyncClient, client: Client, *, pipeline: str, repo: str,
                baseline_queue: str, in_flight: int, minimum: int, deadline: float) -> dict[str, Any]:
    """One point of the sweep: baseline, then devart with the memory sampler running."""
    total = max(in_flight, minimum)
    base = await closed_loop(baseline_run(client, baseline_queue), total, in_flight, deadline)
    async with MemorySampler(stack.pids()) as sampler:
        devart = await closed_loop(devart_run(api, client, pipeline, repo), total, in_flight, deadline)
    await asyncio.sleep(1.0)  # let the processes settle before reading "after"
    stack.check_alive()
    return {"in_flight": in_flight, "runs": total, "baseline": report.stats(base), "devart": report.stats(devart),
            "memory": sampler.figures(in_flight), "dispatch_ms": await dispatch_delays(devart.ids),
            "devart_run_ids": devart.ids[:20], "baseline_run_ids": base.ids[:20]}


async def sweep(stack: BenchStack, api: httpx.AsyncClient, client: Client, *, pipeline: str, repo: str,
                baseline_queue: str, levels: list[int], minimum: int, deadline: float) -> list[dict[str, Any]]:
    points = []
    for n in levels:
        point = await level(stack, api, client, pipeline=pipeline, repo=repo, baseline_queue=baseline_queue,
                            in_flight=n, minimum=minimum, deadline=deadline)
        report.progress(f"sweep {n:>5} in flight: baseline {point['baseline']['per_s']}/s, devart "
                        f"{point['devart']['per_s']}/s, {point['devart']['errors']} errors")
        points.append(point)
    return points
