"""The test skill's re-run of failed tests: the ``rerun_failed_tests`` remedy's retry, telling flaky from broken.

A self-healing stage whose tests failed is retried with ``rerun_tests`` (the failed tests' node ids from the
previous attempt's report) and ``rerun_times``. The retry installs the same environment, then runs pytest on the
tests still failing, up to that many times: a test that passes on a re-run is **flaky** (it failed, then passed
with nothing changed), one that fails every time is **broken**. The tests that passed in the previous attempt are
not run again. Every broken test fails the stage, naming it, and the failure is final (the diagnosis is made); a
stage whose failed tests all turned out flaky succeeds, and its summary and output name them as flaky, so a pass
never hides that they failed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devart.core.contracts import StageResult
from devart.core.errors import SkillError
from devart.domain.remedies import MAX_RERUN_TESTS, MAX_RERUNS, SUITE_COUNTS
from devart.workers.skills import test as pytest_skill
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import Commands, invalid_input

#: Tests named in a summary line; the output lists all of them.
NAMED_IN_SUMMARY = 5


@dataclass(frozen=True)
class Rerun:
    """What a retry re-runs: the failed tests' node ids, how many times at most, and the whole suite's counts in
    the attempt that saw them fail (empty when not given)."""

    tests: list[str]
    times: int
    suite: dict[str, int] = field(default_factory=dict)


def requested(ctx: SkillContext) -> Rerun | None:
    """The ``rerun_tests`` and ``rerun_times`` inputs, checked; None when the task runs the whole suite."""
    tests, times = ctx.task.inputs.get("rerun_tests"), ctx.task.inputs.get("rerun_times", 2)
    if tests in (None, [], ""):
        return None
    if not isinstance(tests, list) or not all(isinstance(t, str) and t and not t.startswith("-") for t in tests) \
            or len(tests) > MAX_RERUN_TESTS:
        raise invalid_input(f"input 'rerun_tests' must list up to {MAX_RERUN_TESTS} pytest node ids, got {tests!r}")
    if isinstance(times, bool) or not isinstance(times, int | str) or not str(times).isdigit() \
            or not 1 <= int(times) <= MAX_RERUNS:
        raise invalid_input(f"input 'rerun_times' must be a whole number from 1 to {MAX_RERUNS}, got {times!r}")
    suite = ctx.task.inputs.get("rerun_of") or {}
    if not isinstance(suite, dict) or not all(key in SUITE_COUNTS and isinstance(n, int) and not isinstance(n, bool)
                                              and n >= 0 for key, n in suite.items()):
        raise invalid_input(f"input 'rerun_of' must map {', '.join(SUITE_COUNTS)} to counts, got {suite!r}")
    return Rerun(tests=list(dict.fromkeys(tests)), times=int(times), suite=dict(suite))


async def rerun(ctx: SkillContext, cmd: Commands, argv: list[str], wanted: Rerun, *, timeout: float,
                environment: dict[str, Any]) -> StageResult:
    """Run the still-failing tests up to ``wanted.times`` times; succeed when none is left (flaky), else fail
    with ``TestsFailed``, final, naming the broken ones."""
    remaining, flaky, runs = list(wanted.tests), [], []
    failures: dict[str, dict[str, Any]] = {}
    duration = 0.0
    for number in range(1, wanted.times + 1):
        ctx.progress(f"re-running {len(remaining)} failed tests ({number} of at most {wanted.times})")
        result = await cmd.run(f"rerun {number}", [*argv, *remaining], timeout=timeout)
        report = (pytest_skill.load_report(await cmd.read_text(pytest_skill.REPORT_PATH))
                  if not result.timed_out else None)
        if report is None:
            raise pytest_skill.no_session(result, timeout, environment, cmd)
        duration += result.duration
        failures = {f["test"]: f for f in report["failures"]}
        still = [test for test in remaining if test in failures]
        if report["passed"] + len(still) < len(remaining) or set(failures) - set(remaining):
            # A node id that no longer selects its test (renamed, deselected) would read as a pass: say so.
            raise SkillError(f"the re-run of {len(remaining)} failed tests ran other tests than those (passed "
                             f"{report['passed']}, failed {len(failures)}): see the log", error_type="TestRunError",
                             non_retryable=True, output={**report, "environment": environment},
                             log_tail=cmd.log_tail)
        flaky += [test for test in remaining if test not in failures]
        runs.append({"run": number, "tests": len(remaining), "failed": len(still)})
        remaining = still
        if not remaining:
            break
    broken = [{"test": test, "message": failures[test]["message"]} for test in remaining]
    counts = {"passed": len(flaky), "failed": len(broken), "errors": 0, "skipped": 0, "xfailed": 0, "xpassed": 0,
              "total": len(wanted.tests)}
    if wanted.suite:  # the whole suite as the failed attempt ran it, its flaky tests now counted as passed
        counts = {key: wanted.suite.get(key, 0) for key in counts}
        counts["passed"] += len(flaky)
        counts["failed"] = max(0, counts["failed"] - len(flaky))
    output = {**counts, "failures": [failures[test] for test in remaining],
              "duration": round(duration, 3), "exit_code": 1 if broken else 0, "environment": environment,
              "rerun": {"tests": wanted.tests, "times": wanted.times, "runs": runs},
              "flaky": flaky, "broken": broken}
    cmd.note(f"re-run of {len(wanted.tests)} failed tests: flaky {flaky or 'none'}; broken "
             f"{[b['test'] for b in broken] or 'none'}")
    if broken:
        raise SkillError(f"tests failed again when re-run: broken: {_names([b['test'] for b in broken])}"
                         + (f"; flaky: {_names(flaky)}" if flaky else ""), error_type="TestsFailed",
                         non_retryable=True, output=output, log_tail=cmd.log_tail)
    return StageResult(status="succeeded", output=output, log_tail=cmd.log_tail, usage=cmd.usage(),
                       summary=f"flaky: {_names(flaky)} failed, then passed when re-run "
                               f"({len(runs)} re-run{'s' if len(runs) > 1 else ''})")


def _names(tests: list[str]) -> str:
    shown = ", ".join(tests[:NAMED_IN_SUMMARY])
    return shown + (f" and {len(tests) - NAMED_IN_SUMMARY} more" if len(tests) > NAMED_IN_SUMMARY else "")
