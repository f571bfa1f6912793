"""The live feed never loses an event committed late: a transaction that took its event id and then stayed open
(a report holding its task's lock across a Temporal call) still reaches every live stream, once and in id order.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

from devart.domain.events import add_event, reserve_id
from tests.api.feed_streams import HOLD, open_streams, publish_events, transaction
from tests.stack import Stack


async def test_an_event_committed_late_reaches_every_stream_once_in_its_place(stack: Stack) -> None:
    kind = f"test.late-{uuid.uuid4().hex[:6]}"
    async with AsyncExitStack() as streams, transaction() as late:
        live = await open_streams(streams, stack.api_url, 2, kind)
        (before,) = publish_events(kind)
        await asyncio.gather(*(r.wait_for(before, deadline=30) for r in live))
        # Given a transaction that takes an event id, then stays open while a later event commits
        late_id = await reserve_id(late)
        (after,) = publish_events(kind)
        # And a client that resumes after the first event while it is open
        (resumed,) = await open_streams(streams, stack.api_url, 1, kind, after=before)
        await asyncio.sleep(HOLD)  # the scenario itself: the transaction is held open, nothing is awaited
        # Then nothing is handed out past the missing id while its transaction may still commit it
        assert [r.ids for r in live] == [[before]] * 2 and resumed.ids == []
        # When the transaction finally commits its event
        add_event(late, kind, "committed late", event_id=late_id)
        await late.commit()
        # Then every stream receives it in its place, before the later event
        await asyncio.gather(*(r.wait_for(after, deadline=30) for r in [*live, resumed]))
        assert [r.ids for r in live] == [[before, late_id, after]] * 2 and resumed.ids == [late_id, after]
        # And nothing is repeated afterwards
        (last,) = publish_events(kind)
        await asyncio.gather(*(r.wait_for(last, deadline=30) for r in [*live, resumed]))
        assert [r.ids for r in live] == [[before, late_id, after, last]] * 2
        assert resumed.ids == [late_id, after, last]


async def test_a_rolled_back_event_id_holds_the_feed_only_while_its_transaction_is_open(stack: Stack) -> None:
    kind = f"test.rollback-{uuid.uuid4().hex[:6]}"
    async with AsyncExitStack() as streams, transaction() as doomed:
        readers = await open_streams(streams, stack.api_url, 1, kind)
        # Given a transaction that takes an event id while a later event commits
        await reserve_id(doomed)
        (after,) = publish_events(kind)
        # When it rolls back
        await doomed.rollback()
        # Then the later event arrives at once, and the missing id is never waited for again
        await readers[0].wait_for(after, deadline=10)
        (last,) = publish_events(kind)
        await readers[0].wait_for(last, deadline=10)
        assert readers[0].ids == [after, last]
