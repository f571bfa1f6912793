"""How far the live feed may hand events out, from the ids it reads and the snapshot it read them in.

Snapshots are written as PostgreSQL prints them: ``xmin:xmax:in-progress transactions``.
"""

from __future__ import annotations

import pytest

from devart.api.feed import listener
from devart.api.feed.order import Barrier, Horizon, in_progress


def test_a_snapshot_lists_its_transactions_in_progress() -> None:
    assert in_progress("100:110:101,104") == {101, 104}
    assert in_progress("100:100:") == frozenset()


def test_a_hole_waits_for_its_transaction_and_is_filled_in_place() -> None:
    horizon = Horizon()
    assert horizon.safe(10, [11, 13], "100:110:104") == 11
    # Still open, however long: nothing past the hole
    assert horizon.safe(11, [13, 14], "100:115:104,112") == 11
    # Committed: the late id is handed out in its place
    assert horizon.safe(11, [12, 13, 14], "112:115:112") == 14
    assert horizon.barrier is None


def test_a_hole_whose_transaction_ended_is_passed() -> None:
    horizon = Horizon()
    assert horizon.safe(10, [11, 13], "100:110:104") == 11
    assert horizon.safe(11, [13], "110:110:") == 13


def test_a_hole_seen_while_no_transaction_is_open_is_passed_at_once() -> None:
    assert Horizon().safe(10, [11, 13, 16], "110:110:") == 16


def test_a_transaction_begun_after_the_hole_was_seen_does_not_hold_it() -> None:
    horizon = Horizon()
    assert horizon.safe(10, [11, 13], "100:110:104") == 11
    assert horizon.safe(11, [13], "112:120:112") == 13


def test_a_later_hole_waits_on_the_transactions_open_when_it_was_seen() -> None:
    horizon = Horizon()
    assert horizon.safe(10, [11, 13], "100:200:104") == 11
    # A second hole (14) appears while the first one's transaction is still open
    assert horizon.safe(11, [13, 15], "100:200:104,120") == 11
    # The first one's transaction ends: its hole is passed, the second waits on what was open when it was seen
    assert horizon.safe(11, [13, 15], "120:200:120") == 13
    assert horizon.safe(13, [15], "200:200:") == 15


def test_holes_past_the_rows_read_wait_on_the_same_transactions() -> None:
    horizon = Horizon()
    # The first batch ends at 13 while the table already holds 20
    assert horizon.safe(10, [11, 13], "100:200:104", newest=20) == 11
    # 104 ends and 150 begins: the holes up to 20 were drawn before 150 had an id, so it holds none of them
    assert horizon.safe(11, [13, 15, 20], "150:200:150", newest=20) == 20


def test_a_long_hold_is_logged_once_naming_its_transactions(caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "STALL_WARNING", -1.0)  # any hold counts as long
    feed = listener.Listener("postgresql://unused")
    feed.horizon.wait(Barrier(frozenset({104}), 13), "100:200:104")
    for _ in range(3):
        feed._note_hold()
    (record,) = caplog.records
    assert "wait for transactions [104] to end" in record.getMessage()
