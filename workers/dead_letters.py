"""Dead letters: poison task messages leave their lane with the reason attached, and are collected in PostgreSQL.

RabbitMQ dead-letters on its own a message over its lane's delivery limit (``x-first-death-reason``). A message
an agent cannot read at all is republished by the agent to the dead-letter exchange with ``x-devart-reason``,
then acknowledged, so the agent keeps serving. The pipeline worker's collector moves every dead letter into the
``dead_letters`` table, where people list, inspect, redrive or purge them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.database import db, tenancy
from devart.core.database.models import DeadLetter, Run
from devart.core.database.tenancy import DEFAULT_ORG, system_in
from devart.core.messaging.topology import Topology
from devart.domain.events import add_event

log = logging.getLogger(__name__)


async def dead_letter(channel: AbstractChannel | None, topology: Topology, message: AbstractIncomingMessage,
                      reason: str) -> None:
    """Send ``message`` to the dead-letter exchange with ``reason``, then acknowledge it."""
    if channel is None:
        await message.reject(requeue=False)
        return
    headers = dict(message.headers or {})
    headers.update({"x-devart-reason": reason[:1000], "x-devart-lane": message.routing_key or ""})
    exchange = await channel.get_exchange(topology.dead_letter_exchange)
    await exchange.publish(
        aio_pika.Message(body=message.body, headers=headers, message_id=message.message_id,
                         content_type=message.content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=message.routing_key or "",
    )
    await message.ack()
    log.error("dead-lettered a message from %s: %s", message.routing_key, reason)


def describe(message: AbstractIncomingMessage) -> tuple[str, str | None]:
    """The reason and the lane of a dead letter, from our header or RabbitMQ's x-death bookkeeping."""
    headers: dict[str, Any] = dict(message.headers or {})
    lane = headers.get("x-devart-lane") or message.routing_key
    if "x-devart-reason" in headers:
        return str(headers["x-devart-reason"]), str(lane) if lane else None
    reason = headers.get("x-first-death-reason")
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths, list) and isinstance(deaths[0], dict):
        reason = reason or deaths[0].get("reason")
        queue = deaths[0].get("queue")
        lane = str(queue).rsplit(".lane.", 1)[-1] if queue else lane
    text = {"delivery_limit": "over the lane's delivery limit", "rejected": "rejected by an agent",
            "expired": "expired"}.get(str(reason), str(reason or "unknown"))
    return text, str(lane) if lane else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


async def _organisation(session: AsyncSession, message: AbstractIncomingMessage) -> str:
    """The organisation a dead letter belongs to: its run's, or the default one for a message naming no run."""
    try:
        run_id = json.loads(message.body).get("run_id")
    except (ValueError, AttributeError):
        run_id = None
    org = None
    if isinstance(run_id, str):
        org = (await session.exec(select(Run.org_id).where(Run.id == run_id))).first()
    return org or DEFAULT_ORG


async def collect(amqp_url: str, topology: Topology, stop: asyncio.Event) -> None:
    """Move dead letters into PostgreSQL (and the feed) until ``stop`` is set."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare_exchanges(channel)
        queue = await channel.get_queue(topology.dead_letter_queue)

        async def store(message: AbstractIncomingMessage) -> None:
            reason, lane = describe(message)
            async with db.session() as s:
                await tenancy.switch(s, system_in(await _organisation(s, message)))
                s.add(DeadLetter(lane=lane, reason=reason, message_id=message.message_id,
                                 headers=_jsonable(dict(message.headers or {})),
                                 body=message.body.decode(errors="replace")))
                add_event(s, "task.dead_lettered", f"dead letter from lane {lane}: {reason}", lane=lane)
            await message.ack()

        await queue.consume(store)
        await stop.wait()
