"""Capability routing under load, against the real RabbitMQ: the agent fleet issue's routing "must show".

About twenty simulated agents with random capability sets serve 2,000 tasks spread over mixed requirement sets.
Each simulated agent is a real aio-pika consumer that serves lanes the way ``workers.agent.Agent`` does: it
listens on the control fanout exchange, declares and consumes every announced lane it ``can_serve``, and on
deactivation cancels its consumers. Tasks are published the way ``activities.dispatch`` does: the lane is
declared and announced on first use, then tasks go to the task exchange with publisher confirms, persistent,
routing key = lane. The test owns its AMQP prefix and deletes everything it declared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import combinations

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from core import services
from core.topology import Topology, can_serve, lane_name, lane_requirements
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
#: Generous: with instant acks RabbitMQ's round-robin keeps agents on one lane within a small factor.
MAX_SPREAD_RATIO = 4.0


@dataclass
class Ledger:
    """Everything the simulated fleet saw, shared by all agents."""

    deliveries: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    misroutes: list[str] = field(default_factory=list)
    redeliveries: int = 0
    acked: int = 0


@dataclass
class SimAgent:
    """A stand-in for ``workers.agent.Agent``'s AMQP side: same lane discovery, same consume and cancel calls."""

    name: str
    capabilities: set[str]
    prefetch: int
    topology: Topology
    ledger: Ledger
    received: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic time, task id, lane)
    lanes: dict[str, AbstractQueue] = field(default_factory=dict)
    consumers: dict[str, str] = field(default_factory=dict)
    active: bool = True
    connection: AbstractConnection | None = None
    channel: AbstractChannel | None = None

    async def start(self) -> None:
        self.connection = await aio_pika.connect(AMQP_URL)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=self.prefetch)
        await self.topology.declare_exchanges(self.channel)
        control = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await control.bind(self.topology.control_exchange)
        await control.consume(self._on_control, no_ack=True)

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        lane = message.body.decode()
        if message.type == "lane.declared" and can_serve(self.capabilities, lane):
            await self._serve_lane(lane)

    async def _serve_lane(self, lane: str) -> None:
        if lane in self.lanes or not can_serve(self.capabilities, lane) or self.channel is None:
            return
        self.lanes[lane] = await self.topology.declare_lane(self.channel, lane)
        if self.active:
            self.consumers[lane] = await self.lanes[lane].consume(self._on_task)

    async def deactivate(self) -> None:
        """``Agent._stop_consuming``: cancel every lane consumer; unacked deliveries stay with this channel."""
        self.active = False
        for lane, tag in list(self.consumers.items()):
            await self.lanes[lane].cancel(tag)
            del self.consumers[lane]

    async def _on_task(self, message: AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        self.received.append((time.monotonic(), body["id"], message.routing_key or ""))
        if message.redelivered:
            self.ledger.redeliveries += 1
        requires = set(body["requires"])
        if not requires <= self.capabilities or message.routing_key != lane_name(body["requires"]):
            self.ledger.misroutes.append(f"{body['id']} {sorted(requires)} via {message.routing_key} -> "
                                         f"{self.name} {sorted(self.capabilities)}")
        self.ledger.deliveries[body["id"]].append(self.name)
        await message.ack()
        self.ledger.acked += 1

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


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


@pytest.mark.timeout(90)
async def test_routing_under_load_with_a_deactivation_mid_stream() -> None:
    require(services.amqp_reachable(AMQP_URL), f"RabbitMQ is not reachable at {AMQP_URL} (rabbitmq-server -detached)")
    # Given: a fleet that knows no lane yet, so every lane reaches it through the control broadcast
    rng = random.Random(SEED)
    topology = Topology(prefix=f"devart-route-{uuid.uuid4().hex[:8]}", delivery_limit=5)
    capability_sets, _, tasks = fleet_plan(rng)
    ledger = Ledger()
    agents = [SimAgent(f"agent-{i:02d}", caps, rng.randint(1, 5), topology, ledger)
              for i, caps in enumerate(capability_sets)]
    declared: list[str] = []
    publisher = await aio_pika.connect(AMQP_URL)
    try:
        channel = await publisher.channel(publisher_confirms=True)
        exchange = await topology.declare_exchanges(channel)
        control = await channel.get_exchange(topology.control_exchange)
        await asyncio.gather(*(agent.start() for agent in agents))
        lane_of = {f"task-{i:04d}": lane_name(requires) for i, requires in enumerate(tasks)}
        published_at: dict[str, float] = {}

        async def publish(index: int) -> None:
            task_id, requires = f"task-{index:04d}", tasks[index]
            body = json.dumps({"id": task_id, "requires": requires}).encode()
            await exchange.publish(
                aio_pika.Message(body=body, content_type="application/json", message_id=task_id,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT, type="agent.task"),
                routing_key=lane_name(requires),
            )
            published_at[task_id] = time.monotonic()

        async def publish_range(start: int, stop: int) -> None:
            for chunk in range(start, stop, PUBLISH_WINDOW):
                window = range(chunk, min(stop, chunk + PUBLISH_WINDOW))
                for lane in dict.fromkeys(lane_name(tasks[i]) for i in window):  # the dispatcher's _ensure_lane
                    if lane not in declared:
                        await topology.declare_lane(channel, lane)
                        declared.append(lane)
                        await control.publish(aio_pika.Message(body=lane.encode(), type="lane.declared"),
                                              routing_key="")
                await asyncio.gather(*(publish(i) for i in window))

        # When: half the tasks go out, the busiest agent is deactivated, then the other half goes out
        await publish_range(0, TASKS // 2)
        await poll(acked(ledger, TASKS // 4), deadline=20, what="the fleet to start working", every=0.02)
        victim = max(agents, key=lambda a: len(a.received))
        await victim.deactivate()
        # A delivery the broker sent before cancel-ok is already a scheduled callback: one more round trip on the
        # victim's channel lets those in-flight callbacks record themselves before the cutoff is taken.
        assert victim.channel is not None
        await victim.channel.set_qos(prefetch_count=victim.prefetch)
        cutoff = time.monotonic()
        before_cutoff = len(victim.received)
        await publish_range(TASKS // 2, TASKS)
        await poll(acked(ledger, TASKS), deadline=30, what=f"all {TASKS} tasks to be acked", every=0.05)

        # Then: every agent learned exactly its lanes from the broadcast, no misroute, every task exactly once,
        # nothing left behind, load spread, and the deactivated agent went quiet
        assert set(declared) == set(lane_of.values())
        for agent in agents:
            assert set(agent.lanes) == {lane for lane in declared if can_serve(agent.capabilities, lane)}, agent.name
        assert ledger.misroutes == []
        assert ledger.redeliveries == 0
        assert set(ledger.deliveries) == set(lane_of)
        assert [t for t, seen in ledger.deliveries.items() if len(seen) != 1] == []
        assert ledger.acked == TASKS
        for lane in declared:
            queue = await channel.declare_queue(topology.lane_queue(lane), passive=True)
            assert queue.declaration_result.message_count == 0, lane
        dlq = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        assert dlq.declaration_result.message_count == 0

        late = [(t, task) for t, task, _ in victim.received if t > cutoff]
        assert late == [], f"{victim.name} received {len(late)} tasks after its consumers were cancelled"
        assert len(victim.received) == before_cutoff > 0
        served_after = [t for t in list(lane_of)[TASKS // 2:] if can_serve(victim.capabilities, lane_of[t])]
        assert served_after, "the deactivated agent could have served none of the second half: a vacuous check"
        assert all(published_at[t] > cutoff and ledger.deliveries[t] != [victim.name] for t in served_after)

        counts = {a.name: len(a.received) for a in agents}
        traffic = Counter(lane_of.values())
        idle = [a.name for a in agents if counts[a.name] == 0 and any(can_serve(a.capabilities, ln) for ln in traffic)]
        assert idle == [], f"eligible agents that got no task: {idle} (distribution {counts})"
        busiest, busiest_count = traffic.most_common(1)[0]
        per_agent = {a.name: sum(1 for _, _, lane in a.received if lane == busiest)
                     for a in agents if a is not victim and can_serve(a.capabilities, busiest)}
        ratio = max(per_agent.values()) / max(1, min(per_agent.values()))
        log.info("lanes=%d tasks per agent=%s victim=%s (%d before cutoff, %d of the second half rerouted)",
                 len(declared), counts, victim.name, before_cutoff, len(served_after))
        log.info("busiest lane %s (%d tasks) per eligible agent=%s max/min=%.2f", busiest, busiest_count,
                 per_agent, ratio)
        assert min(per_agent.values()) > 0 and ratio <= MAX_SPREAD_RATIO, per_agent
    finally:
        await asyncio.gather(*(agent.close() for agent in agents), return_exceptions=True)
        await publisher.close()
        await delete_topology(topology, declared)


def acked(ledger: Ledger, count: int) -> Callable[[], Awaitable[int | None]]:
    async def check() -> int | None:
        return ledger.acked if ledger.acked >= count else None

    return check
