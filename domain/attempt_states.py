"""The life of a task attempt, as a state machine: the one place that says which status may follow which.

An attempt is *queued* when dispatch publishes it, *claimed* when an agent holds it, *reporting* once its claim
holder's report is recorded and on its way to Temporal (``reported`` says how it will end), and ends *succeeded*,
*failed* (reported so, or no agent able to take it came in time), *cancelled* (its run was cancelled) or
*superseded* (Temporal gave up on it: timed out, retried or finished without it). A claimed attempt may go back
to *queued* when its agent hands it back (drain, deactivation with hand-back), which keeps it within the same
Temporal activity attempt. Ended attempts never move again: a late
report on one is refused, never applied.

Every write of an attempt's status goes through ``move`` (one row) or ``movable_from`` (the WHERE clause of a bulk
update), so an illegal transition raises instead of being written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from devart.core.errors import Conflict


class AttemptState(StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    REPORTING = "reporting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


#: Which states may follow each state; the ended states have none.
TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    # failed while queued: no agent able to take it came within its wait timeout
    AttemptState.QUEUED: frozenset({AttemptState.CLAIMED, AttemptState.FAILED, AttemptState.CANCELLED,
                                    AttemptState.SUPERSEDED}),
    AttemptState.CLAIMED: frozenset({AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.CANCELLED,
                                     AttemptState.SUPERSEDED, AttemptState.QUEUED, AttemptState.REPORTING}),
    # recorded before Temporal hears of it: settled once Temporal took it, superseded if Temporal refused it
    AttemptState.REPORTING: frozenset({AttemptState.SUCCEEDED, AttemptState.FAILED, AttemptState.CANCELLED,
                                       AttemptState.SUPERSEDED}),
    AttemptState.SUCCEEDED: frozenset(),
    AttemptState.FAILED: frozenset(),
    AttemptState.CANCELLED: frozenset(),
    AttemptState.SUPERSEDED: frozenset(),
}
#: The states an attempt is still open in (dispatch and the queue keeper look after these).
OPEN = frozenset(s for s, after in TRANSITIONS.items() if after)
ENDED = frozenset(AttemptState) - OPEN


class IllegalTransition(Conflict):
    """An attempt was asked to move to a state that cannot follow its current one."""

    def __init__(self, attempt: str, current: str, wanted: AttemptState) -> None:
        super().__init__(f"task {attempt} is {current}; it cannot become {wanted.value}")
        self.current, self.wanted = current, wanted


class AttemptRow(Protocol):
    """What ``move`` needs of a row: the ``task_attempts`` model has it."""

    id: str
    status: str
    finished_at: datetime | None


def can_move(current: str, wanted: AttemptState) -> bool:
    """Whether ``wanted`` may follow ``current`` (an unknown current state allows nothing)."""
    try:
        return wanted in TRANSITIONS[AttemptState(current)]
    except ValueError:
        return False


def move(row: AttemptRow, wanted: AttemptState, *, now: datetime | None = None) -> None:
    """Move one attempt to ``wanted``, stamping when it ended; ``IllegalTransition`` if it may not."""
    if not can_move(row.status, wanted):
        raise IllegalTransition(row.id, row.status, wanted)
    row.status = wanted.value
    if wanted in ENDED:
        row.finished_at = now or datetime.now(UTC)


def movable_from(wanted: AttemptState) -> list[str]:
    """The states a bulk update to ``wanted`` may touch: use as ``WHERE status IN (…)``."""
    return sorted(s.value for s, after in TRANSITIONS.items() if wanted in after)
