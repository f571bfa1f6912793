"""What each built-in remedy changes, and which failures it refuses to answer (no stack needed): a remedy that
acts on a diagnosis applies only when the previous attempt's output holds it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from devart.core.contracts import AgentTaskInput, SandboxHandle, SandboxSpec, Source
from devart.domain import remedies
from devart.domain.remedies import Failure


def task(**inputs: Any) -> AgentTaskInput:
    handle = SandboxHandle(backend="local", id="s", workspace="/w", spec=SandboxSpec(timeout=timedelta(seconds=2)))
    return AgentTaskInput(run_id="r", pipeline="p", stage="s", skill="test", requires=[], inputs=inputs,
                          sandbox=handle, source=Source(repo="/repo"))


def report(*tests: tuple[str, str], failed: int | None = None) -> dict[str, Any]:
    return {"passed": 3, "failed": len(tests) if failed is None else failed, "errors": 0,
            "failures": [{"test": t, "outcome": o, "message": "boom"} for t, o in tests]}


def test_a_remedy_answers_only_its_kinds() -> None:
    assert remedies.apply("longer_timeout", task(), {}, failure=Failure("OutOfMemory")) is None
    change = remedies.apply("longer_timeout", task(), {}, failure=Failure("CommandTimeout"))
    assert change is not None and change.change == "command time limit 2 -> 4 s"
    assert remedies.answering("TestsFailed") == ["rerun_failed_tests"]


def test_rerun_needs_every_failed_tests_node_id() -> None:
    failure = Failure("TestsFailed", "tests failed", report(("t.py::a", "failed"), ("t.py::b", "error")))
    change = remedies.apply("rerun_failed_tests", task(pytest_args="-x"), {"runs": 3}, failure=failure)
    assert change is not None and change.change == "re-run only the 2 failed tests, up to 3 times"
    assert change.task.inputs == {"pytest_args": "-x", "rerun_tests": ["t.py::a", "t.py::b"], "rerun_times": 3,
                                  "rerun_of": {"passed": 3, "failed": 2, "errors": 0}}  # the suite's counts
    # A re-run's own failure is final: it is not re-run again
    assert remedies.apply("rerun_failed_tests", change.task, {}, failure=failure) is None
    # Runs are bounded
    bounded = remedies.apply("rerun_failed_tests", task(), {"runs": 99}, failure=failure)
    assert bounded is not None and bounded.task.inputs["rerun_times"] == remedies.MAX_RERUNS


def test_no_blind_rerun_without_the_whole_list() -> None:
    assert remedies.failed_test_ids(report(("t.py::a", "failed"), failed=60)) is None  # the list was cut short
    assert remedies.failed_test_ids(report(("t.py", "collection error"))) is None
    assert remedies.failed_test_ids({"failed": 1}) is None
    assert remedies.apply("rerun_failed_tests", task(), {}, failure=Failure("TestsFailed")) is None


def test_a_fix_works_when_the_attempt_succeeds_a_diagnosis_when_delivered() -> None:
    assert remedies.effective("more_memory", True, {})
    assert not remedies.effective("more_memory", False, {"anything": 1})
    assert remedies.effective("rerun_failed_tests", False, {"rerun": {"tests": ["t::a"]}, "broken": ["t::a"]})
    assert not remedies.effective("rerun_failed_tests", False, {})
    assert remedies.effective("ruff_fix", False, {"proposed_patch": {"diff": "--- a/x.py", "applied": False}})
    assert not remedies.effective("ruff_fix", False, {"proposed_patch": {"diff": ""}})
