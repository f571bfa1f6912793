"""Which remedy a retry gets from its hints: a trusted one of the failure's own kind, never one of another kind,
never one whose record fell below the threshold (a guard against harmful memories), else the kind's own remedy."""

from __future__ import annotations

from devart.activities.selfheal import _choose
from devart.domain.knowledge.hints import Hint, Record
from devart.domain.remedies import SelfHealSettings

CAPS = SelfHealSettings(min_success_rate=0.3)


def hint(entry_id: int, remedy: str, error_type: str, applied: int, succeeded: int, **parameters: object) -> Hint:
    record = Record(suggested=applied, applied=applied, succeeded=succeeded)
    return Hint(entry_id=entry_id, remedy=remedy, parameters=dict(parameters), similarity=0.9, exact=False,
                score=0.9 * record.rate, record=record, source="learned", skill="test", error_type=error_type,
                message="m")


def test_a_trusted_hint_of_the_failures_kind_comes_first_with_its_parameters() -> None:
    chosen = _choose([hint(7, "more_memory", "OutOfMemory", 4, 4, factor=4)], "OutOfMemory", CAPS)
    assert chosen == [("more_memory", {"factor": 4}, 7)]


def test_a_remedy_whose_record_fell_below_the_threshold_is_neither_applied_nor_explored() -> None:
    bad = hint(7, "more_memory", "OutOfMemory", 8, 0)  # rate 0.1
    assert _choose([bad], "OutOfMemory", CAPS) == []
    # ...while a diagnosis still comes, whatever its record (a retry without it would be a blind re-run)
    rerun = hint(8, "rerun_failed_tests", "TestsFailed", 8, 0)
    assert [name for name, _, _ in _choose([rerun], "TestsFailed", CAPS)] == ["rerun_failed_tests"]


def test_another_kinds_remedy_never_applies_however_close_its_text() -> None:
    other = hint(9, "more_memory", "OutOfMemory", 5, 5)
    assert _choose([other], "PidsLimit", CAPS) == [("more_processes", {}, None)]
    # and another kind's poor record does not stop this kind's own remedy from being explored
    assert _choose([hint(9, "more_memory", "Killed", 8, 0)], "OutOfMemory", CAPS) == [("more_memory", {}, None)]


def test_with_no_hint_the_kinds_own_remedy_is_explored() -> None:
    assert _choose([], "OutOfMemory", CAPS) == [("more_memory", {}, None)]
    assert _choose([], "Transient", CAPS) == []
