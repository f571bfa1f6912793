"""RabbitMQ topology: the task exchange, durable quorum queues per capability lane, dead letters, control.

A task's requirements, sorted and joined with '+', name its lane (``python+test``). Publishers and consumers
declare what they use with identical arguments, so whichever side comes first creates it and the other agrees.

Priorities: quorum queues have no message priorities on RabbitMQ 3.10 (4.x has two levels, not strict), so a lane
has one queue per priority *band* in use. Band 3, the default, is the lane's original queue and routing key
(``<prefix>.lane.python+test``, key ``python+test``), so deployments that never use priorities see no change;
another band's key appends ``,p<N>`` (``python+test,p5``). Bands are declared when first used.

Organisations: each has its own task exchange, control exchange and lane queues (``for_org``), so an agent, which
declares and consumes only its organisation's, never receives another's task, even for the same capabilities. The
default organisation keeps the names above, unchanged. Dead letters share one queue; each names its run. With broker
administration configured, each agent connects as a RabbitMQ user of its own whose permissions
(``agent_permissions``) cover its organisation's names only, so RabbitMQ itself refuses it any other's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

from devart.core import settings
from devart.core.orgs import DEFAULT_ORG

#: Run priorities, lowest to highest.
PRIORITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: The priority of a run that names none; its band is the lane's original queue.
DEFAULT_PRIORITY = 3
#: Separates a lane from its band in a band key. A comma, because agents get their capabilities as a
#: comma-separated list (``devart agent --capabilities``), so a lane an agent serves never contains one; and the
#: AMQP client allows only ``[A-Za-z0-9-_.:@#,/+ ]`` in queue names. Capabilities may not contain one
#: (``core.contracts.CAPABILITY``, checked wherever a pipeline or an agent is read), so no lane reads as a band.
BAND_MARK = ",p"
_BAND_DIGITS = frozenset(str(p) for p in PRIORITIES if p != DEFAULT_PRIORITY)


def lane_name(requires: list[str]) -> str:
    """The lane of a requirement set; a task with no requirements goes to the ``any`` lane."""
    return "+".join(sorted({r.strip() for r in requires if r.strip()})) or "any"


def lane_requirements(lane: str) -> set[str]:
    return set() if lane == "any" else set(lane.split("+"))


def band_key(lane: str, priority: int = DEFAULT_PRIORITY) -> str:
    """The routing key of a lane's band, and the tail of its queue name; also how agents are told of a band."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    return lane if priority == DEFAULT_PRIORITY else f"{lane}{BAND_MARK}{priority}"


def parse_band_key(key: str) -> tuple[str, int]:
    """The lane and priority a band key names; a plain lane name is its default band."""
    lane, mark, digit = key.rpartition(BAND_MARK)
    if mark and lane and digit in _BAND_DIGITS:
        return lane, int(digit)
    return key, DEFAULT_PRIORITY


def can_serve(capabilities: set[str] | list[str], lane: str) -> bool:
    """An agent serves a lane when the lane's requirements are a subset of its capabilities."""
    return lane_requirements(lane) <= set(capabilities)


@dataclass(frozen=True)
class Topology:
    """Names of everything devart declares, derived from one prefix so deployments can share a broker."""

    prefix: str
    delivery_limit: int
    org: str = DEFAULT_ORG

    def for_org(self, org: str) -> Topology:
        """The same broker names, for one organisation's tasks."""
        return replace(self, org=org)

    @property
    def _space(self) -> str:
        """Where the organisation's exchanges and queues live: ``<prefix>.org.<id>``, or the prefix for the default
        organisation."""
        return self.prefix if self.org == DEFAULT_ORG else f"{self.prefix}.org.{self.org}"

    @classmethod
    def from_settings(cls) -> Topology:
        cfg = settings.amqp()
        return cls(prefix=cfg.amqp_prefix, delivery_limit=cfg.amqp_delivery_limit)

    @property
    def tasks_exchange(self) -> str:
        return f"{self._space}.tasks"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letters"

    @property
    def control_exchange(self) -> str:
        return f"{self._space}.control"

    def control_queue(self, agent: str, instance: str) -> str:
        """An agent's exclusive queue of control broadcasts, named in its organisation's space (not server-named),
        so that its broker user's permissions need cover nothing outside it; ``instance`` tells apart two processes
        started with the same agent's key."""
        return f"{self.control_exchange}.{agent}.{instance}"

    def lane_queue(self, lane: str, priority: int = DEFAULT_PRIORITY) -> str:
        return f"{self._space}.lane.{band_key(lane, priority)}"

    def org_of_lane_queue(self, queue: str) -> str | None:
        """The organisation whose lane ``queue`` is (``lane_queue`` read backwards), or None for any other queue.

        The dead-letter collector reads it from the queue RabbitMQ names in a dead letter's ``x-death``: the lane
        a task died in says whose task it was, whatever its body claims. An organisation's id has no dot, and
        ``lane.`` is looked for first, so a capability that looks like a name (``org.x.lane.y``) is still read
        as the default organisation's lane.
        """
        rest = queue.removeprefix(f"{self.prefix}.")
        if rest == queue:
            return None
        if rest.startswith("lane."):
            return DEFAULT_ORG
        org, _, tail = rest.removeprefix("org.").partition(".")
        return org if rest.startswith("org.") and org and tail.startswith("lane.") else None

    def lane_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-delivery-limit": self.delivery_limit,
        }

    def agent_permissions(self) -> dict[str, str]:
        """The RabbitMQ permissions (Erlang ``re`` regexes) of an agent of this organisation, by operation.

        What an agent does, and what RabbitMQ checks for it: declaring its organisation's task and control exchanges
        and its lanes (configure); declaring a lane with its dead-letter argument (read on the lane, write on the
        dead-letter exchange); binding a lane or its control queue (write on the queue, read on the exchange);
        consuming and fetching (read); republishing a poison message to the dead-letter exchange (write). Its
        control queue (``control_queue``) is exclusive: no other connection may use it. It may not publish to a task
        or control exchange, nor touch the shared dead-letter queue, which holds every organisation's dead letters.
        The default organisation's names are ``<prefix>.tasks|control|lane…``, so a name under ``<prefix>.org.``
        never matches its patterns; an organisation's id has no dot (``domain.identity.SLUG``), so neither does a
        name of another organisation whose id starts like its own.
        """
        space = re.escape(self._space)
        own = rf"^{space}\.(tasks|control(\..+)?|lane\..+)$"
        bindable = rf"^({space}\.(control|lane)\..+|{re.escape(self.dead_letter_exchange)})$"
        return {"configure": own, "write": bindable, "read": own}

    async def declare_exchanges(self, channel: AbstractChannel, *, dead_letters: bool = True) -> AbstractExchange:
        """Declare the organisation's exchanges and, unless ``dead_letters`` is false, the shared dead-letter exchange
        and queue; returns the task exchange.

        An agent with a broker user of its own passes false: it may not configure the shared ones (devart's
        services declare them); a lane's dead-letter argument may name an exchange declared later.
        """
        if dead_letters:
            dlx = await channel.declare_exchange(self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
            dlq = await channel.declare_queue(self.dead_letter_queue, durable=True,
                                              arguments={"x-queue-type": "quorum"})
            await dlq.bind(dlx)
        await channel.declare_exchange(self.control_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        return await channel.declare_exchange(self.tasks_exchange, aio_pika.ExchangeType.DIRECT, durable=True)

    async def declare_lane(
        self, channel: AbstractChannel, lane: str, priority: int = DEFAULT_PRIORITY, *, dead_letters: bool = True
    ) -> AbstractQueue:
        """Declare the queue of a lane's priority band and bind it to the task exchange with the band's key."""
        exchange = await self.declare_exchanges(channel, dead_letters=dead_letters)
        name = self.lane_queue(lane, priority)
        queue = await channel.declare_queue(name, durable=True, arguments=self.lane_arguments())
        await queue.bind(exchange, routing_key=band_key(lane, priority))
        return queue

    async def delete(self, connection: AbstractConnection, lanes: Iterable[str]) -> list[str]:
        """Delete the given lanes' queues (every band), the dead-letter queue and the exchanges; returns what is left.

        For a prefix that is done with (a test session, a benchmark): durable quorum queues outlive their users,
        and a broker that collects hundreds of them slows down for everyone. Bands are declared lazily, so each
        one is looked up first and most cost a single failed lookup. Each call gets a channel of its own (a
        failed one closes its channel), and a queue is looked up again after its deletion, because under load
        RabbitMQ 3.10 has been seen to confirm a quorum queue's deletion and keep the queue.
        """
        left: list[str] = []
        queues = [self.lane_queue(lane, p) for lane in sorted(set(lanes)) for p in PRIORITIES]
        for queue in [*queues, self.dead_letter_queue]:
            for _ in range(3):
                if not await _exists(connection, queue):
                    break
                with contextlib.suppress(Exception):
                    async with await connection.channel() as channel:
                        await channel.queue_delete(queue)
            else:
                if await _exists(connection, queue):
                    left.append(queue)
        for exchange in (self.tasks_exchange, self.control_exchange, self.dead_letter_exchange):
            try:
                await (await connection.channel()).exchange_delete(exchange)
            except Exception as exc:
                left.append(f"{exchange} ({exc})")
        return left


async def _exists(connection: AbstractConnection, queue: str) -> bool:
    """Look a queue up passively; any failure (RabbitMQ closes the channel on a missing queue) counts as absent."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, passive=True)
    except Exception:
        return False
    with contextlib.suppress(Exception):
        await channel.close()
    return True
