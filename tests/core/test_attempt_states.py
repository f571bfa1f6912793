"""The attempt state machine: every legal move is allowed, every other one raises, ended attempts never move."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import product

import pytest

from devart.core.errors import Conflict
from devart.domain.attempt_states import ENDED, OPEN, AttemptState, IllegalTransition, can_move, movable_from, move

S = AttemptState
LEGAL = {
    (S.QUEUED, S.CLAIMED), (S.QUEUED, S.FAILED), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.SUPERSEDED),
    (S.CLAIMED, S.SUCCEEDED), (S.CLAIMED, S.FAILED), (S.CLAIMED, S.CANCELLED), (S.CLAIMED, S.SUPERSEDED),
    (S.CLAIMED, S.QUEUED),  # handed back by its agent, within the same Temporal attempt
    (S.CLAIMED, S.REPORTING),  # the report recorded, on its way to Temporal
    (S.REPORTING, S.SUCCEEDED), (S.REPORTING, S.FAILED), (S.REPORTING, S.CANCELLED), (S.REPORTING, S.SUPERSEDED),
}


@dataclass
class Row:
    id: str
    status: str
    finished_at: datetime | None = None


@pytest.mark.parametrize(("current", "wanted"), list(product(S, S)))
def test_only_the_designed_moves_are_allowed(current: AttemptState, wanted: AttemptState) -> None:
    row = Row("t-1", current.value)
    if (current, wanted) in LEGAL:
        move(row, wanted)
        assert row.status == wanted.value
        assert (row.finished_at is not None) == (wanted in ENDED)
    else:
        with pytest.raises(IllegalTransition, match=f"t-1 is {current.value}; it cannot become {wanted.value}"):
            move(row, wanted)
        assert row.status == current.value and row.finished_at is None


def test_an_illegal_move_is_a_conflict_and_an_unknown_state_moves_nowhere() -> None:
    assert issubclass(IllegalTransition, Conflict)
    assert not any(can_move("lost", s) for s in S)


def test_open_and_ended_states_and_bulk_sources() -> None:
    assert OPEN == {S.QUEUED, S.CLAIMED, S.REPORTING}
    assert ENDED == {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.SUPERSEDED}
    assert movable_from(S.SUPERSEDED) == ["claimed", "queued", "reporting"]
    assert movable_from(S.QUEUED) == ["claimed"]
    assert movable_from(S.SUCCEEDED) == ["claimed", "reporting"]
    assert movable_from(S.FAILED) == ["claimed", "queued", "reporting"]
    assert movable_from(S.REPORTING) == ["claimed"]
