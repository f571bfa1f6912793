"""Dead letters: poison task messages leave their lane with the reason attached, and are collected in PostgreSQL.

RabbitMQ dead-letters on its own a message over its lane's delivery limit (``x-first-death-reason``). A message
an agent cannot read at all is republished by the agent to the dead-letter exchange with ``x-devart-reason``,
then acknowledged, so the agent keeps serving. The pipeline worker's collector moves every dead letter into the
``dead_letters`` table, where people list, inspect, redrive or purge them.

**Whose dead letter it is.** With broker users per agent (``DEVART_AMQP_ADMIN_URL``), every agent may publish to
the shared dead-letter exchange, so a message's body proves nothing: an agent could name another organisation's
run and plant a dead letter in its list. What RabbitMQ does prove is the ``user_id`` property: it refuses a
publish whose ``user_id`` is not the connection's user. devart's services (``AMQP_URL``'s user: the worker's
dispatcher, the API's redrive) set theirs on every task, and an agent sets its own when it republishes a poison
message, so the collector files a dead letter by its sender (``_organisation``):

- devart's services: a genuine task that RabbitMQ dead-lettered (it keeps its properties), filed under the
  organisation of the lane it died in (the broker's ``x-death``), which is its run's; a body naming a run of
  another organisation (a forged letter someone redrove into their own lane) does not move it there.
- an agent's user: under that agent's organisation, whatever run its body names (the body stays as it came, but
  no row links it to that run; redriving it sends it to the agent's own organisation's lane).
- no ``user_id``, or a user that is neither: under no organisation; logged without its body and dropped.

Without broker users every agent connects as ``AMQP_URL``'s user, so ``user_id`` tells nothing, and the
collector files a dead letter under the organisation of the run its body names, as it always did.

**Upgrading.** Messages published before ``user_id`` was set carry none. While broker users are on, such a message
that dies after the upgrade (a task an older dispatcher queued, a poison message an older agent republished) is
dropped with the warning, which names its message id, the task attempt's id, and its lane: its stage waits as for
a dead letter nobody redrives, until the stage's timeout retries it with a new message, which carries the
property. Filing it by its body instead would reopen the forgery this closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.database import db, tenancy
from devart.core.database.models import Agent, DeadLetter, Run
from devart.core.database.tenancy import DEFAULT_ORG, system_in
from devart.core.messaging import broker_users
from devart.core.messaging.broker_users import agent_of_user, amqp_user
from devart.core.messaging.topology import Topology
from devart.domain.events import add_event

log = logging.getLogger(__name__)


async def dead_letter(channel: AbstractChannel | None, topology: Topology, message: AbstractIncomingMessage,
                      reason: str, *, user_id: str) -> None:
    """Send ``message`` to the dead-letter exchange with ``reason``, then acknowledge it.

    ``user_id`` is the broker user ``channel`` is connected as (``broker_users.amqp_user``): RabbitMQ checks it, and
    the collector files what an agent sent under the agent's organisation, whatever run the body names.
    """
    if channel is None:
        await message.reject(requeue=False)
        return
    headers = dict(message.headers or {})
    headers.update({"x-devart-reason": reason[:1000], "x-devart-lane": message.routing_key or ""})
    exchange = await channel.get_exchange(topology.dead_letter_exchange)
    await exchange.publish(
        aio_pika.Message(body=message.body, headers=headers, message_id=message.message_id, user_id=user_id,
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


@dataclass(frozen=True)
class Senders:
    """Whom the collector believes about a dead letter's organisation (see the module's docstring)."""

    topology: Topology
    #: ``AMQP_URL``'s user: devart's services publish every task as it.
    services: str
    #: Agents connect as broker users of their own, so ``user_id`` tells an agent's letter from a task.
    enforced: bool


async def _run_org(session: AsyncSession, message: AbstractIncomingMessage) -> str | None:
    """The organisation of the run the message's body names, if it names one that exists."""
    try:
        run_id = json.loads(message.body).get("run_id")
    except (ValueError, AttributeError):
        return None
    if not isinstance(run_id, str):
        return None
    return (await session.exec(select(Run.org_id).where(Run.id == run_id))).first()


def _died_in(message: AbstractIncomingMessage, topology: Topology) -> str | None:
    """The organisation of the lane RabbitMQ last dead-lettered the message from (``x-death`` lists the latest
    death first), or None when the broker did not dead-letter it from a lane."""
    deaths = (message.headers or {}).get("x-death")
    if not deaths or not isinstance(deaths, list) or not isinstance(deaths[0], dict):
        return None
    queue = _jsonable(deaths[0].get("queue"))
    return topology.org_of_lane_queue(queue) if isinstance(queue, str) else None


async def _organisation(session: AsyncSession, message: AbstractIncomingMessage, senders: Senders) -> str | None:
    """The organisation a dead letter belongs to, by who published it; None: none may be told of it."""
    if not senders.enforced:  # every agent is AMQP_URL's user: the body's run, as before broker users
        return await _run_org(session, message) or DEFAULT_ORG
    if message.user_id == senders.services:
        # Only the broker's x-death in a message of ours is trustworthy: our services never send dead letters
        # themselves, so what reaches the queue with our user_id was dead-lettered by RabbitMQ from a lane.
        lane_org, run_org = _died_in(message, senders.topology), await _run_org(session, message)
        if lane_org is not None and run_org is not None and lane_org != run_org:
            log.warning("dead letter %r names a run of another organisation than its lane's: filed under the "
                        "lane's, %s", message.message_id, lane_org)
        return lane_org or run_org or DEFAULT_ORG
    agent = agent_of_user(senders.topology.prefix, message.user_id or "")
    if agent is None:
        return None
    return (await session.exec(select(Agent.org_id).where(Agent.name == agent))).first()


async def collect(amqp_url: str, topology: Topology, stop: asyncio.Event, *, enforced: bool | None = None) -> None:
    """Move dead letters into PostgreSQL (and the feed) until ``stop`` is set.

    ``enforced``: whether agents have broker users of their own (default: ``DEVART_AMQP_ADMIN_URL`` is set), which
    makes ``user_id`` decide whose dead letter it is.
    """
    senders = Senders(topology, amqp_user(amqp_url), broker_users.enforced() if enforced is None else enforced)
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare_exchanges(channel)
        queue = await channel.get_queue(topology.dead_letter_queue)

        async def store(message: AbstractIncomingMessage) -> None:
            reason, lane = describe(message)
            async with db.session() as s:
                org = await _organisation(s, message, senders)
                if org is None:
                    # Its body is not logged: it is whatever the sender wrote, and may name another's run.
                    log.warning("dropped a dead letter no organisation may see: message %r from lane %r (%s), "
                                "published by %s; with broker users per agent only devart's services and agents "
                                "file dead letters", message.message_id, lane, reason,
                                repr(message.user_id) if message.user_id else "no user_id")
                else:
                    await tenancy.switch(s, system_in(org))
                    s.add(DeadLetter(lane=lane, reason=reason, message_id=message.message_id,
                                     headers=_jsonable(dict(message.headers or {})),
                                     body=message.body.decode(errors="replace")))
                    add_event(s, "task.dead_lettered", f"dead letter from lane {lane}: {reason}", lane=lane)
            await message.ack()

        await queue.consume(store)
        await stop.wait()
