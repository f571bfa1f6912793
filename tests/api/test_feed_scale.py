"""The live feed at scale: hundreds of streams share one PostgreSQL connection, past the caps a stream is refused
with a 429, a client that stops reading stalls nobody, and neither a lost listener connection nor a listener that
starts while an event is held back loses an event.

Each test talks to an API of its own, started with small feed limits and a PostgreSQL application name, so the
connections it holds can be counted in ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.engine import make_url

from devart.api.feed import listener
from devart.core.devstack.services import free_port
from devart.domain.events import add_event, reserve_id
from tests.api.feed_streams import HOLD, bearer, open_streams, publish_events, transaction
from tests.helpers import poll
from tests.stack import Stack, sql

STREAMS = 200
#: The API's engine pool (core/database/db.py: pool_size 10, max_overflow 10) and the feed's one listener.
POOL_MAX = 20
BOUND = POOL_MAX + 1


@dataclass
class FeedApi:
    url: str
    app_name: str

    def connections(self) -> int:
        rows = sql("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = :a", a=self.app_name)
        return int(rows[0]["n"])

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient(base_url=self.url) as client:
            text = (await client.get("/metrics")).text
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    async def wait_streams(self, count: int) -> None:
        """Poll until the API counts ``count`` open streams."""

        async def reached() -> bool:
            return await self.metric("devart_feed_streams") == count

        await poll(reached, deadline=30, what=f"{count} open streams")


@pytest.fixture
def feed_api(stack: Stack) -> Iterator[FeedApi]:
    """An API admitting 210 streams, 200 per client, queueing 50 events per stream, giving up on a stalled write
    after 3 seconds."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app_name = f"devart-feed-{uuid.uuid4().hex[:8]}"
    database = make_url(stack.env["DATABASE_URL"]).update_query_dict({"application_name": app_name})
    env = {"DEVART_API_URL": url, "DATABASE_URL": database.render_as_string(hide_password=False),
           "DEVART_FEED_MAX_STREAMS": "210", "DEVART_FEED_STREAMS_PER_CLIENT": str(STREAMS),
           "DEVART_FEED_QUEUE_SIZE": "50", "DEVART_FEED_SEND_TIMEOUT": "3"}
    child = stack.supervisor.spawn(f"api-{app_name}", "api", "--host", "127.0.0.1", "--port", str(port), env=env)
    try:
        stack.supervisor.wait_healthy(url, child)
        yield FeedApi(url, app_name)
    finally:
        stack.supervisor.stop(child, grace=5)


async def refused(url: str, source: str) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=30, headers=bearer()) as client:
        async with client.stream("GET", "/v1/events/stream") as response:
            await response.aread()
            return response


async def test_two_hundred_streams_share_one_listener(feed_api: FeedApi) -> None:
    kind = f"test.scale-{uuid.uuid4().hex[:6]}"
    async with AsyncExitStack() as streams:
        # Given 200 streams of one client opened after an event, so that each first reads it from the table
        (earlier,) = publish_events(kind)
        readers = await open_streams(streams, feed_api.url, STREAMS, kind)
        await asyncio.gather(*(r.wait_for(earlier, deadline=30) for r in readers))
        # Then the API holds one listener and at most its pool in PostgreSQL, not a connection per stream
        held = feed_api.connections()
        assert 1 <= held <= BOUND, f"{held} connections for {STREAMS} streams"
        # When an event is published, Then every stream receives it
        (event,) = publish_events(kind)
        await asyncio.gather(*(r.wait_for(event, deadline=30) for r in readers))
        assert all(r.ids == [earlier, event] for r in readers)
        # And a 201st stream of the same client is refused, naming the per-client limit
        answer = await refused(feed_api.url, "127.0.0.1")
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
        assert f"DEVART_FEED_STREAMS_PER_CLIENT={STREAMS}" in answer.json()["detail"]
        # And once the process serves 210, any client's next stream is refused, naming the total limit
        await open_streams(streams, feed_api.url, 10, kind, source="127.0.0.2")
        answer = await refused(feed_api.url, "127.0.0.3")
        assert answer.status_code == 429 and "DEVART_FEED_MAX_STREAMS=210" in answer.json()["detail"]
        assert feed_api.connections() <= BOUND
        assert await feed_api.metric("devart_feed_streams") == STREAMS + 10
    # When the clients hang up, Then their places are given back
    await feed_api.wait_streams(0)
    async with AsyncExitStack() as streams:
        await open_streams(streams, feed_api.url, 1, kind, source="127.0.0.3")


async def test_a_stream_that_never_reads_stalls_no_one(feed_api: FeedApi) -> None:
    kind = f"test.stall-{uuid.uuid4().hex[:6]}"
    host, port = feed_api.url.removeprefix("http://").split(":")
    # Given a client that asks for a stream and then reads nothing, with the smallest receive window
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, int(port)))
    authorization = bearer()["Authorization"]
    stalled.sendall(f"GET /v1/events/stream?kind={kind} HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: {authorization}\r\n\r\n".encode())
    try:
        async with AsyncExitStack() as streams:
            readers = await open_streams(streams, feed_api.url, 3, kind)
            await feed_api.wait_streams(4)
            # When 8 MB of events arrive at once: far past the stalled socket's buffers and every stream's queue
            ids = publish_events(kind, count=4000, message_bytes=2000)
            # Then every reading stream gets all of them, in order, none twice (caught up from the table)
            await asyncio.gather(*(r.wait_for(ids[-1], deadline=60) for r in readers))
            assert all(r.ids == ids for r in readers)
            assert await feed_api.metric("devart_feed_resyncs_total") >= 3
            # And the stalled stream is closed once a write has waited past the send timeout
            await feed_api.wait_streams(3)
            (later,) = publish_events(kind)
            await asyncio.gather(*(r.wait_for(later, deadline=30) for r in readers))
    finally:
        stalled.close()


async def test_no_event_is_lost_while_the_listener_reconnects(feed_api: FeedApi) -> None:
    kind = f"test.reconnect-{uuid.uuid4().hex[:6]}"
    async with AsyncExitStack() as streams:
        readers = await open_streams(streams, feed_api.url, 5, kind)
        connects = await feed_api.metric("devart_feed_listener_connects_total")
        # When PostgreSQL drops the listener's connection, and events are committed before it is back
        killed = sql("SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity WHERE application_name = :a "
                     "AND position(:mark in query) > 0", a=feed_api.app_name, mark=listener.MARK)
        assert [r["done"] for r in killed] == [True]
        ids = publish_events(kind, count=3)
        # Then the listener reconnects, and every stream receives every event
        await asyncio.gather(*(r.wait_for(ids[-1], deadline=30) for r in readers))
        assert all(r.ids == ids for r in readers)
        assert await feed_api.metric("devart_feed_listener_connects_total") == connects + 1
        assert feed_api.connections() <= BOUND


async def test_a_listener_starting_while_an_event_is_held_back_waits_for_it(feed_api: FeedApi) -> None:
    kind = f"test.cold-{uuid.uuid4().hex[:6]}"
    async with transaction() as late, AsyncExitStack() as streams:
        # Given a transaction that took an event id and stays open while a later event commits
        late_id = await reserve_id(late)
        (after,) = publish_events(kind)
        # When the API's first stream starts its listener
        (reader,) = await open_streams(streams, feed_api.url, 1, kind)
        await asyncio.sleep(HOLD)  # the scenario itself: the transaction is held open, nothing is awaited
        assert reader.ids == []
        add_event(late, kind, "committed late", event_id=late_id)
        await late.commit()
        # Then the stream receives the late event in its place
        await reader.wait_for(after, deadline=30)
        assert reader.ids == [late_id, after]
