"""The load driver and the scale sweep (the meters they read are in ``bench.meters``).

``closed_loop`` runs K workflows at concurrency C: each of C loops starts one, waits for its result and starts the
next. A baseline run is ``execute_workflow`` start → result; a devart run is ``POST /v1/runs`` sent → the run
workflow's result through its Temporal handle (``result()`` is one long poll: waiting costs the API nothing).

Starts are gated: at most ``STARTS_IN_FLIGHT`` starts (``POST /v1/runs``, or the baseline's start RPC) are on
their way at once, the others wait their turn inside their run's time, so at 5,000 runs in flight the benchmark's
own HTTP and Temporal clients queue work rather than time out; and a result's long poll that the server refuses
for load is asked again within the run's deadline. Neither changes what a run costs the stack.

The sweep puts N runs in flight at once (1, 10, 100, 1,000, 5,000), baseline and devart; at each level both run
``max(N, minimum)`` workflows, and a sampler reads the resident memory (psutil RSS, children included) of the
API, the pipeline worker and the agents every ``meters.SAMPLE_SECONDS`` while the devart runs are in flight.
Memory per in-flight run is (peak − idle before) ÷ N.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from bench import report
from bench.meters import MemorySampler
from bench.pipeline import BaselineWorkflow, noop
from bench.stack import BenchStack
from bench.timeline import dispatch_delays
from devart.core.contracts import RunResult, RunStatus
from devart.core.temporal import workflow_runner

#: Longest a single benchmarked run may take before it counts as an error.
RUN_DEADLINE_SECONDS = 300.0
#: Starts on their way at once, per measurement: enough to keep the API's and the server's queues fed (the
#: API's pool and the worker take far fewer at a time), few enough that no start waits on the client's side.
STARTS_IN_FLIGHT = 64
#: What a loaded server answers a result's long poll with that is worth asking again (within the run's deadline):
#: under 5,000 runs in flight it refuses some for load and cancels others (CANCELLED, "operation was canceled");
#: the run goes on either way, and its outcome is what counts.
RETRYABLE = {RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED,
             RPCStatusCode.CANCELLED}
#: Pause before asking again after such an answer.
RETRY_PAUSE_SECONDS = 0.5


def baseline_worker(client: Client, task_queue: str) -> Worker:
    """The baseline's worker, with the settings of ``workers.pipeline_worker.build_worker``."""
    return Worker(client, task_queue=task_queue, workflows=[BaselineWorkflow], activities=[noop],
                  max_concurrent_activities=200, workflow_runner=workflow_runner())


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


async def outcome(handle: WorkflowHandle[Any, Any]) -> Any:
    """The workflow's result, asking again when the server refused the long poll for load (the SDK's own retries
    give up after ten seconds; the caller's deadline is the bound here)."""
    while True:
        try:
            return await handle.result()
        except RPCError as exc:
            if exc.status not in RETRYABLE:
                raise
        await asyncio.sleep(RETRY_PAUSE_SECONDS)


def baseline_run(client: Client, task_queue: str) -> One:
    gate = asyncio.Semaphore(STARTS_IN_FLIGHT)

    async def one() -> str:
        workflow_id = f"bench-baseline-{uuid.uuid4().hex[:12]}"
        async with gate:
            handle = await client.start_workflow(BaselineWorkflow.run, workflow_id, id=workflow_id,
                                                 task_queue=task_queue)
        result = await outcome(handle)
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
    gate = asyncio.Semaphore(STARTS_IN_FLIGHT)

    async def one() -> str:
        async with gate:
            run_id = await start_run(api, pipeline, repo)
        result = await outcome(client.get_workflow_handle(run_id, result_type=RunResult))
        if result.status != RunStatus.SUCCEEDED:
            raise RuntimeError(f"run {run_id} {result.status.value}: {result.error}")
        return run_id

    return one


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
                baseline_queue: str, levels: list[int], minimum: int, deadline: float,
                points: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every level in turn; each point is appended to ``points`` as soon as it is measured, so a run stopped at
    the top level (a 5,000-run level takes many minutes) still leaves the lower ones in its partial results."""
    points = [] if points is None else points
    for n in levels:
        point = await level(stack, api, client, pipeline=pipeline, repo=repo, baseline_queue=baseline_queue,
                            in_flight=n, minimum=minimum, deadline=deadline)
        first = (point["devart"]["error_messages"] or point["baseline"]["error_messages"] or [""])[0]
        report.progress(f"sweep {n:>5} in flight: baseline {point['baseline']['per_s']}/s, devart "
                        f"{point['devart']['per_s']}/s, {point['baseline']['errors']} / {point['devart']['errors']} "
                        f"errors" + (f" (first: {first[:200]})" if first else ""))
        points.append(point)
    return points
