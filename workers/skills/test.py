"""The ``test`` skill: run the repository's pytest suite and report it from its JUnit XML.

Inputs: ``pytest_args`` (a string split like a shell would, may be empty) and ``timeout`` (seconds, default 600).
"""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from typing import Any

from core.contracts import StageResult
from core.errors import SkillError
from workers.skills.base import SkillContext
from workers.skills.common import Commands, input_float, invalid_input

#: Where the JUnit report is written, relative to the workspace.
JUNIT_PATH = ".devart/junit.xml"
#: pytest's exit codes (``pytest.ExitCode``) the skill tells apart.
EXIT_OK, EXIT_TESTS_FAILED, EXIT_NO_TESTS = 0, 1, 5
#: Failures listed in the output; the counts always cover all of them.
MAX_FAILURES_LISTED = 50


async def run(ctx: SkillContext) -> StageResult:
    raw_args = ctx.task.inputs.get("pytest_args") or ""
    if not isinstance(raw_args, str):
        raise invalid_input(f"input 'pytest_args' must be a string, got {raw_args!r}")
    try:
        extra = shlex.split(raw_args)
    except ValueError as exc:
        raise invalid_input(f"input 'pytest_args' is not valid shell syntax: {exc}") from None
    timeout = input_float(ctx, "timeout", 600.0)
    workspace = ctx.workspace
    cmd = Commands(ctx)

    # xunit1 keeps each test's file, so failures can be named by their pytest node id.
    argv = [ctx.python, "-m", "pytest", "-q", "-rA", f"--junitxml={workspace}/{JUNIT_PATH}",
            "-o", "junit_family=xunit1", "-p", "no:cacheprovider", *extra]
    result = await cmd.run("pytest", argv, env={"PYTHONPATH": f"{workspace}/src:{workspace}"}, timeout=timeout)

    if result.timed_out or result.exit_code not in (EXIT_OK, EXIT_TESTS_FAILED, EXIT_NO_TESTS):
        why = f"timed out after {timeout:g}s" if result.timed_out else f"pytest exited with code {result.exit_code}"
        raise SkillError(f"test run error: {why}", error_type="TestRunError", non_retryable=False,
                         output={"exit_code": result.exit_code, "timed_out": result.timed_out},
                         log_tail=cmd.log_tail)

    report = parse_junit(await cmd.read_text(JUNIT_PATH) or "") if result.exit_code != EXIT_NO_TESTS else None
    if report is None:
        report = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0, "total": 0,
                  "duration": round(result.duration, 3), "failures": []}
    report["exit_code"] = result.exit_code
    summary = summarize(report)
    if result.exit_code == EXIT_NO_TESTS:
        summary = "no tests were collected"
    elif result.exit_code == EXIT_TESTS_FAILED:
        raise SkillError(f"tests failed: {summary}", error_type="TestsFailed", non_retryable=True,
                         output=report, log_tail=cmd.log_tail)
    return StageResult(status="succeeded", summary=summary, output=report, log_tail=cmd.log_tail,
                       usage=cmd.usage())


def parse_junit(text: str) -> dict[str, Any] | None:
    """Counts, duration and failures from a pytest JUnit XML report; None when ``text`` is not one."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0}
    failures: list[dict[str, str]] = []
    duration = 0.0
    for suite in suites:
        duration += float(suite.get("time") or 0.0)
        for case in suite.iter("testcase"):
            outcome, detail = _outcome(case)
            counts[outcome] += 1
            if detail is not None and len(failures) < MAX_FAILURES_LISTED:
                message = (detail.get("message") or detail.text or "").strip()
                failures.append({"test": _node_id(case), "outcome": outcome,
                                 "message": message.splitlines()[0] if message else ""})
    return {**counts, "total": sum(counts.values()), "duration": round(duration, 3), "failures": failures}


def summarize(report: dict[str, Any]) -> str:
    """pytest-style one-liner: "18 passed, 1 failed, 1 skipped in 0.4s"."""
    parts = [f"{report[key]} {label}" for key, label in (("passed", "passed"), ("failed", "failed"),
                                                         ("errors", "errors"), ("skipped", "skipped"),
                                                         ("xfailed", "xfailed")) if report[key]]
    return f"{', '.join(parts) or 'no tests ran'} in {report['duration']:.2f}s"


def _outcome(case: ET.Element) -> tuple[str, ET.Element | None]:
    failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
    if failure is not None:
        return "failed", failure
    if error is not None:
        return "errors", error
    if skipped is not None:
        return ("xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"), None
    return "passed", None


def _node_id(case: ET.Element) -> str:
    """``tests/test_x.py::TestY::test_z`` from a testcase's file, classname and name."""
    classname, name, file = case.get("classname", ""), case.get("name", ""), case.get("file")
    if not file:
        return f"{classname}::{name}" if classname else name
    module = file.removesuffix(".py").replace("/", ".")
    classes = classname.removeprefix(module).strip(".")
    return "::".join(part for part in (file, *classes.split("."), name) if part)
