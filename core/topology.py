"""RabbitMQ topology: the task exchange, one durable quorum queue per capability lane, dead letters, control.

A task's requirements, sorted and joined with '+', name its lane (``python+test``). Publishers and consumers
declare what they use with identical arguments, so whichever side comes first creates it and the other agrees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

from core import settings


def lane_name(requires: list[str]) -> str:
    """The lane of a requirement set; a task with no requirements goes to the ``any`` lane."""
    return "+".join(sorted({r.strip() for r in requires if r.strip()})) or "any"


def lane_requirements(lane: str) -> set[str]:
    return set() if lane == "any" else set(lane.split("+"))


def can_serve(capabilities: set[str] | list[str], lane: str) -> bool:
    """An agent serves a lane when the lane's requirements are a subset of its capabilities."""
    return lane_requirements(lane) <= set(capabilities)


@dataclass(frozen=True)
class Topology:
    """Names of everything devart declares, derived from one prefix so deployments can share a broker."""

    prefix: str
    delivery_limit: int

    @classmethod
    def from_settings(cls) -> Topology:
        cfg = settings.amqp()
        return cls(prefix=cfg.amqp_prefix, delivery_limit=cfg.amqp_delivery_limit)

    @property
    def tasks_exchange(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letters"

    @property
    def control_exchange(self) -> str:
        return f"{self.prefix}.control"

    def lane_queue(self, lane: str) -> str:
        return f"{self.prefix}.lane.{lane}"

    def lane_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-delivery-limit": self.delivery_limit,
        }

    async def declare_exchanges(self, channel: AbstractChannel) -> AbstractExchange:
        """Declare the shared exchanges and the dead-letter queue; returns the task exchange."""
        dlx = await channel.declare_exchange(self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        dlq = await channel.declare_queue(self.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"})
        await dlq.bind(dlx)
        await channel.declare_exchange(self.control_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        return await channel.declare_exchange(self.tasks_exchange, aio_pika.ExchangeType.DIRECT, durable=True)

    async def declare_lane(self, channel: AbstractChannel, lane: str) -> AbstractQueue:
        """Declare a lane's queue and bind it to the task exchange with the lane as routing key."""
        exchange = await self.declare_exchanges(channel)
        queue = await channel.declare_queue(self.lane_queue(lane), durable=True, arguments=self.lane_arguments())
        await queue.bind(exchange, routing_key=lane)
        return queue

    async def delete(self, connection: AbstractConnection, lanes: Iterable[str]) -> list[str]:
        """Delete the given lanes' queues, the dead-letter queue and the exchanges; returns what is left.

        For a prefix that is done with (a test session, a benchmark): durable quorum queues outlive their users,
        and a broker that collects hundreds of them slows down for everyone. Each deletion gets a channel of its
        own (a failed one closes its channel), and a queue is looked up again afterwards, because under load
        RabbitMQ 3.10 has been seen to confirm a quorum queue's deletion and keep the queue.
        """
        left: list[str] = []
        for queue in [*(self.lane_queue(lane) for lane in sorted(set(lanes))), self.dead_letter_queue]:
            for _ in range(3):
                with contextlib.suppress(Exception):
                    await (await connection.channel()).queue_delete(queue)
                try:
                    await (await connection.channel()).declare_queue(queue, passive=True)
                except Exception:
                    break  # gone
            else:
                left.append(queue)
        for exchange in (self.tasks_exchange, self.control_exchange, self.dead_letter_exchange):
            try:
                await (await connection.channel()).exchange_delete(exchange)
            except Exception as exc:
                left.append(f"{exchange} ({exc})")
        return left
