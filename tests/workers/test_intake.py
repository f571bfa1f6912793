"""The agent's intake against the real RabbitMQ: one consumer per band, however its calls interleave.

A band is added when it is announced (``serve``) and every band is consumed again on each keepalive (``open``).
Both add a consumer with a ``basic.consume`` round trip; when they interleaved, both found the band without one and
the agent held two of its messages with one slot, leaving one fewer waiting on the broker for other agents.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from devart.core.messaging.topology import Topology
from devart.workers.intake import Intake, Settle

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
async def channel() -> AsyncIterator[tuple[AbstractChannel, Topology]]:
    topology = Topology(prefix=f"devart-test-intake-{uuid.uuid4().hex[:8]}", delivery_limit=0)
    async with await aio_pika.connect(AMQP_URL) as connection:
        chan = await connection.channel()
        await chan.set_qos(prefetch_count=1)
        yield chan, topology
        assert await topology.delete(connection, ["lane"]) == []


async def consumers(chan: AbstractChannel, topology: Topology, priority: int) -> int:
    queue = await chan.declare_queue(topology.lane_queue("lane", priority), passive=True)
    return int(queue.declaration_result.consumer_count or 0)


async def hold(message: AbstractIncomingMessage) -> Settle:
    await asyncio.Event().wait()  # a slot kept busy until the test ends
    return Settle.ACK


async def test_a_band_served_while_the_intake_reopens_gets_one_consumer(
    channel: tuple[AbstractChannel, Topology],
) -> None:
    chan, topology = channel
    intake = Intake(1, hold)
    await intake.serve("lane", 3, await topology.declare_lane(chan, "lane", 3))
    await intake.open()
    # When bands are announced while keepalives reopen the intake, in every interleaving
    for priority in (1, 5):
        queue = await topology.declare_lane(chan, "lane", priority)
        await asyncio.gather(intake.serve("lane", priority, queue), intake.open(), intake.open())
    # Then each band has exactly one consumer
    assert [await consumers(chan, topology, p) for p in (1, 3, 5)] == [1, 1, 1]
    # And a close racing an open leaves none
    await asyncio.gather(intake.close(), intake.open())
    await intake.close()
    assert [await consumers(chan, topology, p) for p in (1, 3, 5)] == [0, 0, 0]
