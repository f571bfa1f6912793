"""The floor ladder: what each piece devart adds to a bare workflow costs, measured step by step in one run.

(a) a bare workflow with one in-process no-op activity (``bench.pipeline.BaselineWorkflow``);
(b) + a confirmed quorum-queue hop: the activity publishes its task token (publisher confirms, persistent, to a
    quorum queue under the stack's throwaway AMQP prefix) and returns with ``raise_complete_async``; another OS
    process (``bench.floor_consumer``) consumes it and completes the activity by its token with the Temporal client;
(c) the same + the claim: the consumer heartbeats the activity by token first, as devart's claim does;
(d) devart's one-stage noop pipeline (``bench.scale.devart_run``).

Each step runs in alternated rounds (a, b, c, d, a, b, c, d, …) of the same number of runs at the same concurrency,
and is judged against (a) of its own round (``bench.rounds``); the CPU each process spends per run is counted
per step, the consumer included. The gap between (c) and (d) is what devart's own code costs (API, database,
worker bookkeeping); the gap between (a) and (c) is the price of any design that hands a task to another process
through RabbitMQ and Temporal's task tokens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from bench import report, rounds
from bench.floor_workflows import HOP_ACTIVITY, FloorHopWorkflow
from bench.meters import CpuMeter
from bench.scale import One, Sample, closed_loop
from bench.stack import BenchStack
from devart.core.errors import ServiceUnavailable
from devart.core.temporal import workflow_runner

#: Seconds the consumer may take to import, connect and start consuming.
CONSUMER_READY_SECONDS = 60.0
#: The folder ``python -m bench.floor_consumer`` runs from (the repository root), so ``bench`` imports.
ROOT = Path(__file__).resolve().parent.parent


class FloorHop:
    """The hop's activity: publish the task token with confirms and leave completion to the consumer."""

    def __init__(self, channel: AbstractChannel, queue: str) -> None:
        self.channel, self.queue = channel, queue

    @activity.defn(name=HOP_ACTIVITY)
    async def hop(self, token: str, claim: bool) -> str:
        body = {"token": base64.b64encode(activity.info().task_token).decode(), "claim": claim, "result": token,
                "queued_at": time.time()}
        await self.channel.default_exchange.publish(
            aio_pika.Message(body=json.dumps(body).encode(), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=self.queue)
        activity.raise_complete_async()


@dataclass
class Consumer:
    """The consumer process, its log, and a check that it is still there."""

    proc: asyncio.subprocess.Process
    log: Path

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise ServiceUnavailable(f"the floor consumer exited ({self.proc.returncode}):\n"
                                     f"{self.log.read_text()[-2000:]}")


@contextlib.asynccontextmanager
async def consumer(stack: BenchStack, queue: str) -> AsyncIterator[Consumer]:
    """Start ``bench.floor_consumer`` on ``queue`` and wait (bounded) for its ``ready``; stop it afterwards."""
    log = stack.state / "logs" / "floor-consumer.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.floor_consumer", "--amqp-url", stack.env["AMQP_URL"], "--queue", queue,
            "--temporal", stack.temporal_address, cwd=ROOT, env=dict(os.environ), stdout=asyncio.subprocess.PIPE,
            stderr=err)
    found = Consumer(proc, log)
    try:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), CONSUMER_READY_SECONDS)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            found.check_alive()
            raise ServiceUnavailable(f"the floor consumer did not start within {CONSUMER_READY_SECONDS:.0f}s")
        yield found
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class Floor:
    """What the ladder's steps (b) and (c) need while they run: the worker's task queue and the consumer."""

    client: Client
    task_queue: str
    consumer: Consumer
    #: Queued → claimed (ms) of every claimed hop, by workflow id: from the activity's start to the answer of the
    #: consumer's heartbeat, which is where devart's claim stands (``bench.timeline.dispatch_delays``).
    claimed_ms: dict[str, float] = field(default_factory=dict)

    def run(self, claim: bool) -> One:
        """One hop run: start → result, through the queue and the consumer (and the claim, when asked)."""
        async def one() -> str:
            workflow_id = f"bench-floor-{'claim' if claim else 'hop'}-{uuid.uuid4().hex[:12]}"
            result = await self.client.execute_workflow(FloorHopWorkflow.run, args=[workflow_id, claim],
                                                        id=workflow_id, task_queue=self.task_queue)
            returned, _, claimed = result.partition(" ")
            if returned != workflow_id or bool(claimed) != claim:
                raise RuntimeError(f"floor hop returned {result!r} for {workflow_id!r}")
            if claim:
                self.claimed_ms[workflow_id] = float(claimed)
            return workflow_id

        return one


@contextlib.asynccontextmanager
async def floor(stack: BenchStack, client: Client) -> AsyncIterator[Floor]:
    """The quorum queue under the stack's prefix, the consumer process and an in-process worker for the hop
    workflow (with the baseline worker's settings); all removed again afterwards."""
    queue = f"{stack.env['AMQP_PREFIX']}.bench-floor"
    task_queue = f"bench-floor-{uuid.uuid4().hex[:6]}"
    connection: AbstractConnection = await aio_pika.connect(stack.env["AMQP_URL"])
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            async with consumer(stack, queue) as process:
                worker = Worker(client, task_queue=task_queue, workflows=[FloorHopWorkflow],
                                activities=[FloorHop(channel, queue).hop], max_concurrent_activities=200,
                                workflow_runner=workflow_runner())
                async with worker:
                    yield Floor(client, task_queue, process)
        finally:
            await channel.queue_delete(queue)
    finally:
        await connection.close()


@dataclass
class Step:
    """One step of a ladder: its key, what it is, how to run it once, and what it measured round by round."""

    key: str
    label: str
    run: One
    rounds: list[Sample] = field(default_factory=list)


async def alternate(steps: list[Step], *, rounds_: int, per_round: int, concurrency: int, deadline: float,
                    pids: dict[str, list[int]], own_only: set[str], alive: list[Any] | None = None,
                    name: str = "ladder") -> dict[str, Any]:
    """Run the steps in alternated rounds (each round every step in order, the same runs at the same
    concurrency), then judge each step against the first, round by round (``bench.rounds``).

    ``alive``: objects with a ``check_alive()`` (the stack, the consumer), checked after every round so a dead
    process fails the benchmark with its log rather than as a round of timeouts.
    """
    cpu = {s.key: CpuMeter(pids, own_only=own_only) for s in steps}
    for i in range(rounds_):
        for s in steps:
            cpu[s.key].start()
            s.rounds.append(await closed_loop(s.run, per_round, concurrency, deadline))
            cpu[s.key].stop()
        for process in alive or []:
            process.check_alive()
        report.progress(f"{name} round {i + 1}/{rounds_}: "
                        + ", ".join(f"({s.key}) {report.stats(s.rounds[-1])['per_s']}/s" for s in steps))
    reference = [report.stats(r) for r in steps[0].rounds]
    out = []
    for s in steps:
        pooled = Sample()
        for r in s.rounds:
            pooled.add(r)
        per = [report.stats(r) for r in s.rounds]
        out.append({
            "key": s.key, "label": s.label, **report.stats(pooled),
            "rounds": [{k: p[k] for k in ("per_s", "p50_ms", "p99_ms", "n", "errors")} for p in per],
            "throughput_ratio": rounds.spread(rounds.per_round([p["per_s"] for p in per],
                                                              [p["per_s"] for p in reference])),
            "p50_ratio": rounds.spread(rounds.per_round([p["p50_ms"] for p in per],
                                                        [p["p50_ms"] for p in reference])),
            "cpu_ms_per_run": cpu[s.key].per_run_ms(len(pooled.latencies))})
    return {"concurrency": concurrency, "rounds": rounds_, "runs_per_round": per_round, "steps": out}
