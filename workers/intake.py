"""The agent's intake: deliveries from every band of every lane it serves, started highest priority first.

RabbitMQ 3.10's quorum queues have no message priorities, so each priority of a lane is its own queue (a band, see
``core.topology``) and the agent consumes each band it serves. Push consumption stays as before (one channel,
prefetch = concurrency per consumer), so an idle agent starts a task as soon as it is delivered and the broker
keeps spreading tasks over agents. What changes is the order: deliveries wait in a local heap ordered by
(-priority, arrival), and a task starts only when a slot is free, taking the heap's top.

The heap only orders what was already delivered. Before starting a message of band b from lane L, the intake
asks L's higher bands for one more message (``basic.get``, highest first); if it gets one, it runs that instead
and keeps the lower one. A higher band's message sits in the broker only when every consumer of that queue is out
of credit, so holding the lower one briefly starves nobody, and gets happen only when a slot is free. A finished
message is acknowledged only after the next one is chosen: while it is unacknowledged its band's consumer has no
credit to spare, so the broker cannot push that band's next message to us during our get (quorum queues answer
the get before that push reaches the client, which would let a lower band start first).

When the agent stops consuming (deactivated, draining, its key refused), every waiting message is handed back to
RabbitMQ (nack with requeue) so that other agents take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from devart.core.messaging.topology import band_key

log = logging.getLogger("devart.agent")


class Settle(Enum):
    """What to tell RabbitMQ about a message once the agent is done with it."""

    ACK = "ack"  # done with it (ran, or not ours to run)
    REQUEUE = "requeue"  # give it back for another agent
    SETTLED = "settled"  # already settled by the handler (dead-lettered)


#: Runs one message to its end and says how to settle it.
Handler = Callable[[AbstractIncomingMessage], Awaitable[Settle]]


@dataclass(order=True)
class Waiting:
    """A delivered message waiting for a slot; the heap's order is (-priority, arrival)."""

    rank: tuple[int, int]
    lane: str = field(compare=False)
    priority: int = field(compare=False)
    message: AbstractIncomingMessage = field(compare=False)


class Intake:
    """Consumes the agent's band queues and starts their messages in priority order, ``slots`` at a time."""

    def __init__(self, slots: int, handler: Handler) -> None:
        self._free = slots
        self._handler = handler
        self._heap: list[Waiting] = []
        self._arrivals = itertools.count()
        self._queues: dict[tuple[str, int], AbstractQueue] = {}
        self._consumers: dict[tuple[str, int], str] = {}
        self._open = False
        self._choosing = asyncio.Lock()
        #: Held while consumers are added or cancelled. ``serve`` (a band announced) and ``open`` (each keepalive)
        #: both add them, and a ``basic.consume`` is a round trip: without the lock both would find the band without
        #: a consumer and add one each, doubling what the agent holds of that band.
        self._consuming = asyncio.Lock()
        #: Messages being run (with their settlement); draining waits for these.
        self.running: set[asyncio.Task[None]] = set()

    @property
    def bands(self) -> list[str]:
        """The band keys served, for logs."""
        return sorted(band_key(lane, priority) for lane, priority in self._queues)

    def serves(self, lane: str, priority: int) -> bool:
        return (lane, priority) in self._queues

    async def serve(self, lane: str, priority: int, queue: AbstractQueue) -> None:
        """Add a band; it is consumed at once if the intake is open."""
        self._queues[(lane, priority)] = queue
        if self._open:
            await self._consume(lane, priority)

    async def open(self) -> None:
        """Consume every band served (again)."""
        self._open = True
        for lane, priority in list(self._queues):
            await self._consume(lane, priority)

    async def close(self) -> None:
        """Stop consuming and hand every waiting message back; running ones carry on."""
        self._open = False
        async with self._consuming:
            for band, tag in list(self._consumers.items()):
                with contextlib.suppress(Exception):
                    await self._queues[band].cancel(tag)
                del self._consumers[band]
        await self._requeue_waiting()

    async def _consume(self, lane: str, priority: int) -> None:
        async def deliver(message: AbstractIncomingMessage) -> None:
            await self._offer(message, lane, priority)

        async with self._consuming:
            if (lane, priority) in self._consumers or not self._open:
                return
            self._consumers[(lane, priority)] = await self._queues[(lane, priority)].consume(deliver)

    async def _offer(self, message: AbstractIncomingMessage, lane: str, priority: int) -> None:
        if not self._open:  # delivered before our consumer was cancelled: leave it to others
            await _requeue(message)
            return
        heapq.heappush(self._heap, Waiting((-priority, next(self._arrivals)), lane, priority, message))
        await self._fill()

    async def _fill(self) -> None:
        """Start waiting messages, best first, while slots are free."""
        async with self._choosing:
            while self._open and self._free > 0 and self._heap:
                chosen = await self._choose()
                if chosen is None:
                    continue
                if not self._open:
                    await _requeue(chosen.message)
                    break
                self._launch(chosen)
            if not self._open:
                await self._requeue_waiting()

    async def _choose(self) -> Waiting | None:
        """The heap's top, unless one of its lane's higher bands still holds a message in the broker."""
        top = heapq.heappop(self._heap)
        if top.message.channel.is_closed:
            return None  # delivered before a reconnect: RabbitMQ has requeued it already
        higher = sorted((p for lane, p in self._queues if lane == top.lane and p > top.priority), reverse=True)
        for priority in higher:
            try:
                got = await self._queues[(top.lane, priority)].get(no_ack=False, fail=False)
            except Exception as exc:  # the channel may be reconnecting: the top is the best we know of
                log.warning("could not look for a band-%d task of lane %s: %s", priority, top.lane, exc)
                break
            if got is not None:
                heapq.heappush(self._heap, top)
                return Waiting((-priority, next(self._arrivals)), top.lane, priority, got)
        return top

    def _launch(self, chosen: Waiting) -> None:
        self._free -= 1
        task = asyncio.create_task(self._run(chosen.message))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run(self, message: AbstractIncomingMessage) -> None:
        settle: Settle | None = None
        try:
            settle = await self._handler(message)
        except Exception:
            # E.g. the API stayed unreachable past the client's retries. Give the message back rather than hold it
            # unacknowledged until the channel closes: held, it would block a prefetch slot and its run would wait
            # forever. Each return counts towards the lane's delivery limit, so a message that keeps failing ends
            # in the dead-letter queue, where a person sees it.
            log.exception("handling task message %s failed; giving it back", message.message_id)
            settle = Settle.REQUEUE
        finally:
            self._free += 1
        # Choose the next message before settling this one: see the module docstring.
        await self._fill()
        with contextlib.suppress(Exception):  # a closed channel has given the message back already
            if settle is Settle.ACK:
                await message.ack()
            elif settle is Settle.REQUEUE:
                await message.nack(requeue=True)

    async def _requeue_waiting(self) -> None:
        waiting, self._heap = self._heap, []
        for entry in waiting:
            await _requeue(entry.message)


async def _requeue(message: AbstractIncomingMessage) -> None:
    with contextlib.suppress(Exception):  # a closed channel has given the message back already
        await message.nack(requeue=True)
