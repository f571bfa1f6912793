"""RabbitMQ itself keeps organisations apart: an agent's own broker user reaches its organisation's queues only.

The suite's stack runs with broker administration on (``DEVART_AMQP_ADMIN_URL``), so every agent registered
through the API gets a RabbitMQ user whose password derives from its key. These tests connect as such agents
directly (aio-pika, no agent process) and try what a hostile agent host could: each refusal must come from
RabbitMQ (``ACCESS_REFUSED``, 403), not from devart's code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import quote

import aio_pika
import aiormq
import httpx
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from devart.core import settings
from devart.core.messaging.broker_users import agent_amqp_url, broker_password
from devart.core.messaging.topology import Topology, band_key
from devart.core.orgs import DEFAULT_ORG
from tests.api.test_organisations import bearer, organisation
from tests.helpers import poll, unique
from tests.stack import Stack

#: One AMQP method on a fresh channel of the agent's connection.
Attempt = Callable[[aiormq.abc.AbstractChannel], Awaitable[object]]


async def registered(client: httpx.AsyncClient, capability: str) -> tuple[str, str]:
    """An agent registered through the API in the client's organisation: its name and key."""
    name = unique("broker-agent")
    created = await client.post("/v1/agents", json={"name": name, "capabilities": [capability]})
    assert created.status_code == 201, created.text
    return name, created.json()["key"]


async def broker_url(stack: Stack, key: str) -> tuple[str, str]:
    """What an agent does at its start: ask the API for its broker user, and build its AMQP URL from its key."""
    async with httpx.AsyncClient(base_url=stack.api_url, headers=bearer(key), timeout=30.0) as agent_api:
        access = (await agent_api.post("/v1/agent/broker")).json()
    assert access["enforced"] is True and access["user"], access
    return access["user"], agent_amqp_url(stack.env["AMQP_URL"], access["user"], broker_password(key))


def management(stack: Stack) -> httpx.AsyncClient:
    url = httpx.URL(stack.env["DEVART_AMQP_ADMIN_URL"])
    return httpx.AsyncClient(base_url=str(url.copy_with(username=None, password=None)),
                             auth=(url.username, url.password), timeout=10.0)


@asynccontextmanager
async def lanes(topologies: list[Topology], lane: str) -> AsyncIterator[AbstractChannel]:
    """Each organisation's lane declared by devart's side (AMQP_URL's administrator), one task in each; deleted
    afterwards with the organisations' exchanges, since the session's clean-up knows only the default's."""
    connection = await aio_pika.connect(settings.amqp().amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for topology in topologies:
            await topology.declare_lane(channel, lane)
            exchange = await channel.get_exchange(topology.tasks_exchange)
            await exchange.publish(aio_pika.Message(body=topology.org.encode()), routing_key=band_key(lane))
        yield channel
    finally:
        channel = await connection.channel()
        for topology in topologies:
            await channel.queue_delete(topology.lane_queue(lane))
            if topology.org != DEFAULT_ORG:
                await channel.exchange_delete(topology.tasks_exchange)
                await channel.exchange_delete(topology.control_exchange)
        await connection.close()


def hostile_attempts(mine: Topology, theirs: Topology, lane: str) -> dict[str, Attempt]:
    """What an agent must not do to another organisation's names (and to the shared dead-letter queue), as AMQP
    methods on a raw channel: what a hostile agent host could send."""
    queue, arguments = theirs.lane_queue(lane), theirs.lane_arguments()

    async def bind_control(ch: aiormq.abc.AbstractChannel) -> object:
        control = mine.control_queue("hostile", "0")
        await ch.queue_declare(control, exclusive=True, auto_delete=True)  # its own control queue: allowed
        return await ch.queue_bind(control, theirs.control_exchange)

    return {
        "declare their lane": lambda ch: ch.queue_declare(queue, durable=True, arguments=arguments),
        "declare their task exchange": lambda ch: ch.exchange_declare(theirs.tasks_exchange, exchange_type="direct",
                                                                            durable=True),
        "bind their lane": lambda ch: ch.queue_bind(queue, theirs.tasks_exchange, routing_key="stolen"),
        "bind to their control exchange": bind_control,
        "consume their lane": lambda ch: ch.basic_consume(queue, lambda message: None),
        "get from their lane": lambda ch: ch.basic_get(queue),
        "purge their lane": lambda ch: ch.queue_purge(queue),
        "delete their lane": lambda ch: ch.queue_delete(queue),
        "delete their task exchange": lambda ch: ch.exchange_delete(theirs.tasks_exchange),
        "publish to their task exchange": lambda ch: ch.basic_publish(b"forged", exchange=theirs.tasks_exchange,
                                                                      routing_key=band_key(lane)),
        "purge the shared dead letters": lambda ch: ch.queue_purge(theirs.dead_letter_queue),
        "consume the shared dead letters": lambda ch: ch.basic_get(theirs.dead_letter_queue),
    }


async def refused(connection: AbstractRobustConnection, attempts: dict[str, Attempt]) -> dict[str, str]:
    """Run each attempt on a channel of its own (RabbitMQ closes a channel on a refusal); what was not refused with
    ACCESS_REFUSED, and how it ended."""
    allowed: dict[str, str] = {}
    for what, attempt in attempts.items():
        channel = await (await connection.channel(publisher_confirms=True)).get_underlay_channel()
        try:
            await attempt(channel)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            assert "ACCESS_REFUSED" in str(exc)
            continue
        except Exception as exc:
            allowed[what] = f"{type(exc).__name__}: {exc}"
            continue
        allowed[what] = "done"
    return allowed


async def own_lane_works(connection: AbstractRobustConnection, mine: Topology, lane: str) -> None:
    """An agent declares its organisation's exchanges and lane as ``workers.agent`` does, and takes its task."""
    channel = await connection.channel()
    await mine.declare_exchanges(channel, dead_letters=False)
    control = await channel.declare_queue(mine.control_queue("agent", "0"), exclusive=True, auto_delete=True)
    await control.bind(mine.control_exchange)
    queue = await mine.declare_lane(channel, lane, dead_letters=False)
    message = await poll(lambda: queue.get(fail=False), deadline=10, what=f"the task on {queue.name}")
    assert message.body == mine.org.encode()
    await message.ack()


async def test_an_agent_reaches_its_own_organisations_queues_only(api: httpx.AsyncClient, stack: Stack) -> None:
    # Given: an agent in a new organisation and one in the default organisation, with the same capability, and a
    # task waiting in each organisation's lane
    capability = unique("broker-cap")
    lane = capability
    other = await organisation(api)
    async with other:
        org = (await other.get("/v1/me")).json()["org"]
        _, other_key = await registered(other, capability)
        _, default_key = await registered(api, capability)
        base = Topology.from_settings()
        theirs, ours = base.for_org(org), base.for_org(DEFAULT_ORG)
        async with lanes([theirs, ours], lane):
            for mine, foreign, key in ((theirs, ours, other_key), (ours, theirs, default_key)):
                # When: the agent connects with its own broker user
                _, url = await broker_url(stack, key)
                connection = await aio_pika.connect_robust(url)
                try:
                    # Then: its own lane serves it, and RabbitMQ refuses it everything of the other organisation
                    await own_lane_works(connection, mine, lane)
                    assert await refused(connection, hostile_attempts(mine, foreign, lane)) == {}, mine.org
                    mine_refused = {"publish to its own task exchange": hostile_attempts(mine, mine, lane)[
                        "publish to their task exchange"]}
                    assert await refused(connection, mine_refused) == {}, "an agent may not forge tasks"
                finally:
                    await connection.close()
    # And no log of the stack holds a derived broker password
    for log in (stack.state / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert broker_password(other_key) not in text and broker_password(default_key) not in text, log


async def test_rotating_or_deleting_an_agent_ends_its_broker_access(api: httpx.AsyncClient, stack: Stack) -> None:
    # Given: an agent of another organisation, connected with its own broker user
    other = await organisation(api)
    async with other, management(stack) as admin:
        name, key = await registered(other, unique("broker-cap"))
        user, url = await broker_url(stack, key)
        assert (await admin.get(f"/api/users/{quote(user, safe='')}")).status_code == 200
        connection = await aio_pika.connect(url)

        # When: its key is rotated
        rotated = await other.post(f"/v1/agents/{name}/rotate-key")
        assert rotated.status_code == 200, rotated.text

        # Then: the connection opened with the old key is closed, the old password is refused, the new one works
        await poll(lambda: _closed(connection), deadline=10, what="the old key's connection to close")
        with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(url)
        _, new_url = await broker_url(stack, rotated.json()["key"])
        connection = await aio_pika.connect(new_url)

        # When: the agent is deleted
        assert (await other.delete(f"/v1/agents/{name}")).status_code == 204

        # Then: its broker user is gone, and with it its connection
        assert (await admin.get(f"/api/users/{quote(user, safe='')}")).status_code == 404
        await poll(lambda: _closed(connection), deadline=10, what="the deleted agent's connection to close")
        with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(new_url)


async def _closed(connection: aio_pika.abc.AbstractConnection) -> bool:
    """Whether RabbitMQ closed the connection: opening a channel on it fails (its flag may lag behind)."""
    try:
        await (await connection.channel()).close()
    except Exception:
        return True
    return False
