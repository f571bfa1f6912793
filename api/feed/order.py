"""The live feed's order: up to which event id the feed may hand events out, without ever skipping a late commit.

The feed's order is the event id: it is the client's resume cursor (``Last-Event-ID``), and an id may be reserved
before a slow step (``domain.events.reserve_id``) so that an event keeps its place. Ids are drawn from a sequence,
so they are not committed in order: a missing id (a hole) is either held by a transaction still open (for a moment,
or for seconds under load) or lost to a rollback. A timeout cannot tell the two apart; PostgreSQL snapshots can:

- an id is drawn only after its transaction has a transaction id (``devart_event_id()``, migration 0007), so while
  the transaction is open it is listed among the in-progress transactions of every snapshot (``pg_snapshot_xip``);
- every id missing below one that a snapshot shows committed was drawn before that snapshot, so its transaction is
  one of the snapshot's in-progress ones, or has ended (then the id is visible in it, or never will be);
- so a hole seen in a snapshot waits on that snapshot's in-progress transactions (a ``Barrier``); once none of them
  is in progress any more, every id still missing up to there never will be, and the feed moves past it.

Until then nothing past the hole is handed out, which keeps the order: an event committed late reaches the live
streams in its place, once. An unrelated writing transaction that was open when the hole was seen delays the feed
for as long as it stays open, and never costs it an event.
"""

from __future__ import annotations

from dataclasses import dataclass


def in_progress(snapshot: str) -> frozenset[int]:
    """The transactions a ``pg_snapshot`` in its text form (``xmin:xmax:xip,...``) lists as in progress."""
    listed = snapshot.split(":")[2]
    return frozenset(int(x) for x in listed.split(",")) if listed else frozenset()


def contiguous_until(after: int, ids: list[int], settled: int = 0) -> int:
    """The largest id up to which every id after ``after`` is in ``ids`` or missing for good (up to ``settled``)."""
    last = after
    for i in ids:
        if i != last + 1 and i - 1 > settled:
            break
        last = i
    return last


@dataclass(frozen=True)
class Barrier:
    """Holes up to ``upto`` were seen while ``waits_on`` were in progress: only those can still fill them."""

    waits_on: frozenset[int]
    upto: int

    def narrowed(self, snapshot: str) -> Barrier | None:
        """The barrier on the transactions still in progress in ``snapshot``; None once there is none."""
        still = self.waits_on & in_progress(snapshot)
        return Barrier(still, self.upto) if still else None


class Horizon:
    """What one reader of the feed knows of the holes past its cursor."""

    def __init__(self) -> None:
        #: The holes past the cursor, while a transaction that may fill them is in progress.
        self.barrier: Barrier | None = None
        #: An id up to this one that is still missing never will be: its transaction has ended.
        self.settled = 0

    def lift(self, snapshot: str) -> bool:
        """Narrow the barrier to the transactions in progress in ``snapshot``; True once it is gone."""
        if self.barrier is None:
            return True
        narrowed = self.barrier.narrowed(snapshot)
        if narrowed is None:
            self.settled = max(self.settled, self.barrier.upto)
        self.barrier = narrowed
        return narrowed is None

    def safe(self, cursor: int, ids: list[int], snapshot: str, newest: int | None = None) -> int:
        """How far past ``cursor`` the committed ``ids`` (ascending, read in ``snapshot``, whose largest visible id is
        ``newest``) may be handed out."""
        if not ids:
            return cursor
        if self.lift(snapshot):
            # Every hole below the newest id seen now was drawn before this snapshot: it waits on the snapshot's
            # in-progress transactions (and is settled at once when there is none).
            self.wait(Barrier(in_progress(snapshot), max(ids[-1], newest or 0)), snapshot)
        safe = contiguous_until(cursor, ids, self.settled)
        if safe == ids[-1] and (self.barrier is None or self.barrier.upto <= safe):
            self.barrier = None  # no hole left that it covers
        return safe

    def wait(self, barrier: Barrier, snapshot: str) -> None:
        """Hold the holes ``barrier`` covers until its transactions end (at once if none is in ``snapshot``)."""
        self.barrier = barrier
        self.lift(snapshot)
