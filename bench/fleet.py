"""Fleet speed: routing decision time, and dispatch latency (publish → agent receives) against raw RabbitMQ.

Run ``python -m bench.fleet [--quick]`` with RabbitMQ at ``AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1/``).

* Routing: 1,000 agents with random capability sets and 200 lanes; every agent works out the lanes it serves
  with ``core.topology.can_serve``, as ``workers.agent.Agent`` does for each lane it hears of. Timed per decision
  (one ``can_serve`` call), per agent (its 200 decisions) and in total.
* Dispatch: 100 concurrent runs, each publishing one task at a time and waiting for an agent to receive it before
  the next (a run waits for its stage). The devart path is what ``activities.dispatch`` and the agent do: a lane
  declared with ``Topology.declare_lane`` (durable quorum queue, DLX, delivery limit), one publisher-confirm
  channel shared by all runs, persistent messages, consumers on that lane with a prefetch. The baseline is
  plain aio-pika in the same run: a classic non-durable queue, default exchange, transient messages, no confirms,
  the same consumers and prefetch. Latency = receive time − publish start, from a timestamp in the message.
  Rounds alternate baseline and devart so both see the same machine load.

Writes ``bench/results/fleet.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from bench.stats import percentile
from devart.core.messaging.topology import Topology, can_serve, lane_name

RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: The issue's goal for dispatch latency (publish → agent receives) at 100 concurrent runs.
GOAL_P99_MS = 25.0
AGENTS, LANES, CAPABILITIES = 1000, 200, 16
CONCURRENT_RUNS = 100
#: Agents consuming the benchmark lane, and each one's prefetch: enough credit for every run's task at once,
#: so the figure is dispatch latency and not time spent waiting for a free agent.
CONSUMERS, PREFETCH = 4, 32
#: Tasks each run publishes before measuring starts (connections, queue leaders and caches warm up).
WARMUP = 2
#: Mean time a run spends on a stage between two dispatches in the paced scenario. Real stages take seconds to
#: minutes; 100 ms keeps 100 runs near 1,000 dispatches a second, well above what such a fleet produces.
PACED_STAGE_S = 0.1


def summary(seconds: list[float], unit: float, digits: int) -> dict[str, float]:
    """p50 / p99 / mean of ``seconds`` scaled by ``unit`` (1e3 for ms, 1e6 for µs)."""
    return {"p50": round(percentile(seconds, 50) * unit, digits), "p99": round(percentile(seconds, 99) * unit, digits),
            "mean": round(statistics.fmean(seconds) * unit, digits), "n": len(seconds)}


def routing(seed: int) -> dict[str, Any]:
    """Time every agent deciding which of the lanes it serves."""
    rng = random.Random(seed)
    universe = [f"cap{i:02d}" for i in range(CAPABILITIES)]
    every_lane = [lane_name(list(c)) for size in (1, 2, 3) for c in combinations(universe, size)]
    lanes = rng.sample(every_lane, LANES)
    agents = [set(rng.sample(universe, rng.randint(2, 8))) for _ in range(AGENTS)]
    clock = time.perf_counter_ns
    decisions: list[float] = []
    for capabilities in agents:
        for lane in lanes:
            start = clock()
            can_serve(capabilities, lane)
            decisions.append((clock() - start) / 1e9)
    per_agent: list[float] = []
    served = 0
    total_start = clock()
    for capabilities in agents:
        start = clock()
        served += len([lane for lane in lanes if can_serve(capabilities, lane)])
        per_agent.append((clock() - start) / 1e9)
    total = (clock() - total_start) / 1e9
    timer = [-(clock() - clock()) / 1e9 for _ in range(10_000)]
    return {"agents": AGENTS, "lanes": LANES, "capabilities": CAPABILITIES,
            "served_pairs": served, "decision_us": summary(decisions, 1e6, 3),
            "timer_overhead_us_p50": round(percentile(timer, 50) * 1e6, 3),
            "per_agent_us": summary(per_agent, 1e6, 1), "total_ms": round(total * 1e3, 2),
            "mean_decision_us_untimed": round(total / (AGENTS * LANES) * 1e6, 3)}


class Receiver:
    """Consumers that timestamp each task on arrival and wake the run waiting for it."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.waiting: dict[str, asyncio.Future[None]] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        received = time.perf_counter()
        body = json.loads(message.body)
        if body["measure"]:
            self.latencies.append(received - body["sent"])
        await message.ack()
        future = self.waiting.pop(body["id"], None)
        if future is not None and not future.done():
            future.set_result(None)


Publish = Callable[[bytes], Awaitable[Any]]


async def drive(publish: Publish, receiver: Receiver, per_run: int, stage_s: float) -> float:
    """Run ``CONCURRENT_RUNS`` runs that each send ``WARMUP + per_run`` tasks, one after the other.

    A run publishes a task, waits until a consumer has it, then spends a random stage time averaging ``stage_s``.

    Returns:
        The offered load over the measured tasks, in tasks a second.
    """
    loop = asyncio.get_running_loop()
    measuring: list[float] = []

    async def run(index: int) -> None:
        rng = random.Random(index)
        for seq in range(WARMUP + per_run):
            if seq == WARMUP:
                began = time.perf_counter()
            task_id = f"{index}-{seq}-{uuid.uuid4().hex[:6]}"
            arrived = receiver.waiting[task_id] = loop.create_future()
            sent = time.perf_counter()
            await publish(json.dumps({"id": task_id, "sent": sent, "measure": seq >= WARMUP}).encode())
            await asyncio.wait_for(arrived, timeout=30)
            if stage_s:
                await asyncio.sleep(rng.uniform(0, 2 * stage_s))
        measuring.append(time.perf_counter() - began)

    await asyncio.gather(*(run(i) for i in range(CONCURRENT_RUNS)))
    return CONCURRENT_RUNS * per_run / statistics.fmean(measuring)


async def consumers(declare: Callable[[AbstractChannel], Awaitable[AbstractQueue]],
                    receiver: Receiver) -> list[AbstractConnection]:
    connections: list[AbstractConnection] = []
    for _ in range(CONSUMERS):
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await declare(channel)
        await queue.consume(receiver.on_message)
        connections.append(connection)
    return connections


async def devart_round(per_run: int, stage_s: float) -> tuple[list[float], float]:
    """The lane as devart declares and uses it; returns the latencies and the tasks a second."""
    topology = Topology(prefix=f"devart-bench-{uuid.uuid4().hex[:8]}", delivery_limit=5)
    lane, receiver = "python+test", Receiver()
    publisher = await aio_pika.connect(AMQP_URL)
    agents: list[AbstractConnection] = []
    try:
        channel = await publisher.channel(publisher_confirms=True)
        exchange = await topology.declare_exchanges(channel)
        await topology.declare_lane(channel, lane)
        agents = await consumers(lambda ch: topology.declare_lane(ch, lane), receiver)

        async def publish(body: bytes) -> None:
            await exchange.publish(aio_pika.Message(body=body, content_type="application/json",
                                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                                    type="agent.task"), routing_key=lane)

        rate = await drive(publish, receiver, per_run, stage_s)
        return receiver.latencies, rate
    finally:
        for connection in agents:
            await connection.close()
        cleanup = await publisher.channel()
        await cleanup.queue_delete(topology.lane_queue(lane))
        await cleanup.queue_delete(topology.dead_letter_queue)
        for name in (topology.tasks_exchange, topology.control_exchange, topology.dead_letter_exchange):
            await cleanup.exchange_delete(name)
        await publisher.close()


async def raw_round(per_run: int, stage_s: float) -> tuple[list[float], float]:
    """The baseline: plain aio-pika on a classic transient queue; returns the latencies and the tasks a second."""
    name, receiver = f"devart-bench-raw-{uuid.uuid4().hex[:8]}", Receiver()
    publisher = await aio_pika.connect(AMQP_URL)
    agents: list[AbstractConnection] = []
    try:
        channel = await publisher.channel(publisher_confirms=False)
        await channel.declare_queue(name, durable=False)
        agents = await consumers(lambda ch: ch.declare_queue(name, durable=False), receiver)

        async def publish(body: bytes) -> None:
            await channel.default_exchange.publish(aio_pika.Message(body=body), routing_key=name)

        rate = await drive(publish, receiver, per_run, stage_s)
        return receiver.latencies, rate
    finally:
        for connection in agents:
            await connection.close()
        await (await publisher.channel()).queue_delete(name)
        await publisher.close()


async def dispatch(per_run: int, rounds: int, stage_s: float) -> dict[str, Any]:
    """Alternate baseline and devart rounds; latencies, throughput and the devart / raw ratios."""
    latencies: dict[str, list[float]] = {"devart": [], "raw": []}
    rates: dict[str, list[float]] = {"devart": [], "raw": []}
    for _ in range(rounds):
        for path, measure in (("raw", raw_round), ("devart", devart_round)):
            samples, rate = await measure(per_run, stage_s)
            latencies[path] += samples
            rates[path].append(rate)
    result: dict[str, Any] = {"stage_ms_mean": round(stage_s * 1e3), "tasks_per_run": per_run * rounds,
                              "rounds": rounds}
    for path in ("devart", "raw"):
        result[f"{path}_ms"] = summary(latencies[path], 1e3, 2)
        result[f"{path}_tasks_per_s"] = round(statistics.fmean(rates[path]))
    result["ratio_p50"] = round(result["devart_ms"]["p50"] / result["raw_ms"]["p50"], 2)
    result["ratio_p99"] = round(result["devart_ms"]["p99"] / result["raw_ms"]["p99"], 2)
    return result


async def broker_version() -> str:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        properties = connection.transport.connection.server_properties if connection.transport else {}
        version = properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)


async def dispatch_all(quick: bool) -> dict[str, Any]:
    per_run, rounds = (5, 2) if quick else (20, 3)
    started = time.perf_counter()
    paced = await dispatch(per_run, rounds, PACED_STAGE_S)
    saturated = await dispatch(per_run, 1 if quick else rounds, 0.0)
    return {"concurrent_runs": CONCURRENT_RUNS, "consumers": CONSUMERS, "prefetch": PREFETCH,
            "rabbitmq": await broker_version(), "goal_p99_ms": GOAL_P99_MS,
            "meets_goal": paced["devart_ms"]["p99"] <= GOAL_P99_MS,
            "paced": paced, "saturated": saturated, "seconds": round(time.perf_counter() - started, 1)}


def table(routed: dict[str, Any], dispatched: dict[str, Any]) -> str:
    d, a = routed["decision_us"], routed["per_agent_us"]
    rows = [
        "| measure | p50 | p99 | mean | n |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| routing decision (one `can_serve`), µs | {d['p50']} | {d['p99']} | {d['mean']} | {d['n']} |",
        f"| routing, one agent × {routed['lanes']} lanes, µs | {a['p50']} | {a['p99']} | {a['mean']} | {a['n']} |",
        f"| routing, {routed['agents']} agents × {routed['lanes']} lanes, total ms | {routed['total_ms']} | | | 1 |",
    ]
    for scenario in ("paced", "saturated"):
        s = dispatched[scenario]
        label = f"stage {s['stage_ms_mean']} ms" if s["stage_ms_mean"] else "back-to-back"
        for path, what in (("devart", "devart lane"), ("raw", "raw aio-pika")):
            m = s[f"{path}_ms"]
            rows.append(f"| dispatch {what}, {label} ({s[f'{path}_tasks_per_s']} tasks/s), ms | {m['p50']} "
                        f"| {m['p99']} | {m['mean']} | {m['n']} |")
        rows.append(f"| devart / raw, {label} | {s['ratio_p50']}× | {s['ratio_p99']}× | | |")
    verdict = "meets" if dispatched["meets_goal"] else "MISSES"
    rows += ["", f"Per-decision timings include ~{routed['timer_overhead_us_p50']} µs of timer; untimed mean "
             f"{routed['mean_decision_us_untimed']} µs. Dispatch: {dispatched['concurrent_runs']} concurrent runs, "
             f"{dispatched['consumers']} consumers × prefetch {dispatched['prefetch']}, RabbitMQ "
             f"{dispatched['rabbitmq']}. devart lane = quorum queue + DLX + delivery limit, persistent, publisher "
             f"confirms; raw = classic transient queue, no confirms. Paced devart p99 {verdict} the "
             f"{GOAL_P99_MS:g} ms goal."]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks (a smoke test, noisier figures)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    routed = routing(args.seed)
    dispatched = asyncio.run(dispatch_all(args.quick))
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick,
              "routing": routed, "dispatch": dispatched,
              "machine": {"python": sys.version.split()[0], "kernel": platform.release(), "cpus": os.cpu_count(),
                          "load_average": [round(x, 2) for x in os.getloadavg()]}}
    print(table(routed, dispatched))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
