"""Dead letters: list, inspect, redrive (back to the lane and priority band they came from) and purge."""

from __future__ import annotations

import aio_pika
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core import settings
from devart.core.database.models import DeadLetter, utcnow
from devart.core.errors import NotFound, ServiceUnavailable
from devart.core.messaging.broker_users import amqp_user
from devart.core.messaging.topology import Topology, band_key, parse_band_key
from devart.core.orgs import DEFAULT_ORG
from devart.domain.events import add_event


class DeadLetterNotFound(NotFound):
    """No dead letter with that id."""


async def list_letters(session: AsyncSession, include_redriven: bool = False) -> list[DeadLetter]:
    query = select(DeadLetter)
    if not include_redriven:
        query = query.where(col(DeadLetter.redriven_at).is_(None))
    return list((await session.exec(query.order_by(col(DeadLetter.id)))).all())


async def get(session: AsyncSession, letter_id: int) -> DeadLetter:
    letter = await session.get(DeadLetter, letter_id)
    if letter is None:
        raise DeadLetterNotFound(f"dead letter {letter_id} not found")
    return letter


async def redrive(session: AsyncSession, letter_id: int) -> DeadLetter:
    """Publish the message again on its lane's band; a task whose stage still waits for it then resumes.

    A dead letter's ``lane`` is the band key it was routed with (the collector reads it from the routing key or
    the queue name), so a priority-5 task goes back to the priority-5 queue, not behind the default band.
    """
    letter = await get(session, letter_id)
    if not letter.lane:
        raise DeadLetterNotFound(f"dead letter {letter_id} has no lane to go back to")
    lane, priority = parse_band_key(letter.lane)
    topology = Topology.from_settings().for_org(letter.org_id or DEFAULT_ORG)  # back to its organisation's lane
    try:
        amqp_url = settings.amqp().amqp_url
        connection = await aio_pika.connect(amqp_url)
    except Exception as exc:  # any connection failure is the broker being unavailable
        raise ServiceUnavailable(f"RabbitMQ is not reachable: {exc}") from exc
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare_lane(channel, lane, priority)
        exchange = await channel.get_exchange(topology.tasks_exchange)
        await exchange.publish(
            # user_id as the dispatcher sets it: should the task die again, the collector files it by its lane
            aio_pika.Message(body=letter.body.encode(), message_id=letter.message_id, content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=priority, type="agent.task",
                             user_id=amqp_user(amqp_url)),
            routing_key=band_key(lane, priority),
        )
    letter.redriven_at = utcnow()
    session.add(letter)
    add_event(session, "task.redriven", f"dead letter {letter_id} sent back to lane {letter.lane}", lane=letter.lane)
    await session.commit()
    return letter


async def purge(session: AsyncSession) -> int:
    result = await session.exec(delete(DeadLetter))  # type: ignore[call-overload]
    add_event(session, "dlq.purged", f"{result.rowcount} dead letters purged")
    await session.commit()
    return int(result.rowcount)
