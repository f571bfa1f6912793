"""A worker admits a dispatch only while fewer than its limit of tasks wait in their lanes (``activities.admission``),
counting them as its queue keeper sees them (``Leases``)."""

from __future__ import annotations

import asyncio

from devart.activities.admission import Admission
from devart.workers.queue_keeper import Leases


def test_leases_count_what_waits_as_of_the_last_tick_and_the_takes_since() -> None:
    leases = Leases()
    leases.take("a")
    leases.take("b")
    assert leases.waiting() == 2
    asked = set(leases.ids())
    leases.take("c")  # published while the tick read a and b
    leases.seen(asked, queued={"b"})  # a was claimed
    assert leases.waiting() == 2 and "a" in leases  # still kept (claimed), no longer waiting
    leases.seen({"a", "b", "c"}, queued={"a", "c"})  # a handed back, waits again; b claimed
    assert leases.waiting() == 2
    leases.drop("c")
    assert leases.waiting() == 1


def test_a_dispatch_beyond_the_limit_waits_until_a_waiting_task_is_claimed() -> None:
    async def scenario() -> None:
        leases = Leases()
        admission = Admission(2, leases.waiting)
        await asyncio.wait_for(admission.enter(), 1)  # room for two
        leases.take("a")
        admission.leave()
        await asyncio.wait_for(admission.enter(), 1)
        assert admission.full()  # one waiting, one being published: the limit is reached already
        third = asyncio.create_task(admission.enter())
        leases.take("b")
        admission.leave()
        done, _ = await asyncio.wait({third}, timeout=1.5)
        assert not done  # both wait in their lanes: the third dispatch holds
        leases.seen({"a", "b"}, queued={"b"})  # an agent claimed a
        await asyncio.wait_for(third, 5)
        assert admission.full()

    asyncio.run(scenario())
