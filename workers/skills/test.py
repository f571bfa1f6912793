"""The ``test`` skill: install what was built and what its tests need, run pytest, report pytest's own counts.

The tests run in a fresh virtualenv holding the wheel the build stage handed on (or, without one, the project
built from the checkout, with PEP 517 isolation; a checkout with no packaging metadata is tested in place), plus
the test dependencies the project declares (``workers/skills/project_deps.py`` says where they are looked for).
pytest runs with the project's own configuration from the project folder, against the installed package:
nothing of the checkout is put on ``sys.path`` beyond what pytest's own rules and the project's configuration
put there. Counts come from pytest's statistics (``workers/skills/pytest_report.py``), so they equal pytest's
closing line.

A failing test fails the stage; so does a collection error (naming the missing module when that is the cause),
and neither is retried blindly: a rerun of everything would fail the same way, or pass and hide a flaky test. A
self-healing stage (``self_heal: apply``) may retry failed tests whose node ids the report holds: the retry gets
the ``rerun_failed_tests`` remedy and re-runs only those (``workers/skills/reruns.py``), naming each flaky or
broken. An unreachable package index and a timed-out run are retried.

Inputs: ``pytest_args`` (a string split like a shell would, may be empty), ``path`` (the project folder inside
the repository), ``timeout`` (seconds, default 600), ``exclude_newer`` (a date: resolve as the index was then),
``rerun_tests`` (node ids: run only these, up to ``rerun_times`` times, default 2, and tell flaky from broken;
set by the remedy, kept beside ``pytest_args``), ``allow_no_tests`` (false by default: a run that collects no
test fails the stage, as pytest's exit code 5 fails a CI job; a green verdict on nothing tested would mislead).
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
from typing import Any

from devart.core.contracts import StageResult
from devart.core.errors import SkillError
from devart.domain.remedies import failed_test_ids
from devart.sandboxes import artifacts
from devart.sandboxes.base import ExecResult
from devart.workers.skills import project_deps, pytest_report, reruns
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import Commands, input_bool, input_float, input_subdir, invalid_input
from devart.workers.skills.environments import create_venv, freeze, install

#: The tests' virtualenv and pytest's report, relative to the workspace.
VENV = ".devart/test-venv"
REPORT_PATH = ".devart/pytest-report.json"
#: pytest's exit codes (``pytest.ExitCode``) the skill tells apart.
EXIT_OK, EXIT_TESTS_FAILED, EXIT_INTERRUPTED, EXIT_NO_TESTS = 0, 1, 2, 5
#: Why a run of pytest that collected nothing fails its stage, as pytest's exit code 5 fails a CI job.
NO_TESTS = ("no tests were collected: pytest found no test to run in the project (its exit code 5), and a test stage "
            "passes only on tests that ran; to accept a project without tests, give the stage the input "
            "allow_no_tests: true (with the built-in pipelines: -p allow_no_tests=true)")
#: Failures listed in the output; the counts always cover all of them.
MAX_FAILURES_LISTED = pytest_report.MAX_LISTED
COUNTS = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed")
_PROJECT_DEPS = project_deps.script()
_PYTEST_REPORT = inspect.getsource(pytest_report)
_MISSING_MODULE = re.compile(r"No module named '([^']+)'")

async def run(ctx: SkillContext) -> StageResult:
    raw_args = ctx.task.inputs.get("pytest_args") or ""
    if not isinstance(raw_args, str):
        raise invalid_input(f"input 'pytest_args' must be a string, got {raw_args!r}")
    try:
        extra = shlex.split(raw_args)
    except ValueError as exc:
        raise invalid_input(f"input 'pytest_args' is not valid shell syntax: {exc}") from None
    project = input_subdir(ctx)
    timeout = input_float(ctx, "timeout", 600.0)
    allow_no_tests = input_bool(ctx, "allow_no_tests")  # read first: a bad value is refused whatever pytest finds
    workspace = ctx.workspace
    cmd = Commands(ctx)

    deps = await cmd.python_json("find test dependencies", _PROJECT_DEPS, project, ".", artifacts.IN_WORKSPACE)
    wheels = deps["wheels"]
    own = project_deps.normalize(deps.get("name") or "")
    wheel = next((w for w in wheels if w["name"] == own), wheels[0] if len(wheels) == 1 and not own else None)
    extras = f"[{','.join(deps['extras'])}]" if deps["extras"] else ""
    if wheel is not None:
        target = f"{wheel['name']}{extras} @ file://{workspace}/{artifacts.IN_WORKSPACE}/{wheel['file']}"
        tested = f"wheel {wheel['file']} from the build stage"
    elif deps["installable"]:
        path = workspace if project == "." else f"{workspace}/{project}"
        target = f"{own}{extras} @ file://{path}" if own else path
        tested = "the project built from the checkout"
    else:  # tests beside plain modules, no packaging: pytest finds them in the checkout, as it would locally
        target, tested = None, "the checkout (no project metadata to install)"
    ctx.progress(f"testing {tested}; test dependencies from {', '.join(deps['sources']) or 'nowhere declared'}")
    python = await create_venv(ctx, cmd, VENV, timeout=timeout, error_type="TestEnvironmentFailed")
    await install(ctx, cmd, python, [*([target] if target else []), "-r", deps["requirements_file"], "pytest"],
                  timeout=timeout, error_type="TestDependenciesFailed")
    environment = {"tested": tested, "sources": deps["sources"], "extras": deps["extras"],
                   "installed": await freeze(ctx, cmd, python)}

    argv = pytest_argv(python, workspace, project, extra)
    if rerun := reruns.requested(ctx):
        return await reruns.rerun(ctx, cmd, argv, rerun, timeout=timeout, environment=environment)
    result = await cmd.run("pytest", argv, timeout=timeout)
    report = load_report(await cmd.read_text(REPORT_PATH)) if not result.timed_out else None
    if report is None:
        raise no_session(result, timeout, environment, cmd)
    report.update(duration=round(result.duration, 3), exit_code=result.exit_code, environment=environment)
    summary = summarize(report)
    code = result.exit_code
    if code == EXIT_TESTS_FAILED:
        # Worth a retry only where the remedy can re-run exactly these tests (a self-healing stage).
        rerunnable = ctx.task.self_heal == "apply" and failed_test_ids(report) is not None
        raise SkillError(f"tests failed: {summary}", error_type="TestsFailed", non_retryable=not rerunnable,
                         output=report, log_tail=cmd.log_tail)
    if code not in (EXIT_OK, EXIT_NO_TESTS) or report["errors"]:
        raise _run_error(code, report, summary, cmd)
    if code == EXIT_NO_TESTS:
        if not allow_no_tests:
            raise SkillError(NO_TESTS, error_type="NoTestsCollected", non_retryable=True, output=report,
                             log_tail=cmd.log_tail)
        summary = "no tests were collected"
    return StageResult(status="succeeded", summary=summary, output=report, log_tail=cmd.log_tail,
                       usage=cmd.usage())


def pytest_argv(python: str, workspace: str, project: str, extra: list[str]) -> list[str]:
    """pytest through the report plugin, in the project's environment, with the task's own arguments."""
    return [python, "-P", "-c", _PYTEST_REPORT, f"{workspace}/{REPORT_PATH}", project, "-q", "-rfE",
            "-p", "no:cacheprovider", *extra]


def no_session(result: ExecResult, timeout: float, environment: dict[str, Any], cmd: Commands) -> SkillError:
    """The error for a pytest run that wrote no report: timed out (worth a retry), or refused to start: a usage
    error or a conftest that does not import (deterministic, so not)."""
    deterministic = not result.timed_out and result.exit_code in (EXIT_INTERRUPTED, 3, 4)
    why = (f"timed out after {timeout:g}s" if result.timed_out
           else f"pytest exited with code {result.exit_code}: {_startup_error(result.output)}")
    return SkillError(f"test run error: {why}"[:600], error_type="TestRunError", non_retryable=deterministic,
                      output={"exit_code": result.exit_code, "timed_out": result.timed_out,
                              "environment": environment}, log_tail=cmd.log_tail)


def _run_error(code: int, report: dict[str, Any], summary: str, cmd: Commands) -> SkillError:
    """A run pytest could not complete: a collection error or a usage error; deterministic, so not retried."""
    errors = report["failures"]
    collection = [f for f in errors if f["outcome"] == "collection error"]
    first = (collection or errors or [{"test": "", "message": ""}])[0]
    missing = _MISSING_MODULE.search(first["message"])
    if missing:
        why = (f"collection failed: {first['test']}: No module named '{missing.group(1)}' (a test dependency the "
               "project does not declare, or a module the build left out)")
    elif collection:
        why = f"collection failed: {first['test']}: {first['message']}"
    elif errors:
        why = f"tests errored: {summary}"
    else:
        why = f"pytest could not run (exit code {code}): see the log"
    error_type = "TestCollectionFailed" if collection else ("TestsFailed" if errors else "TestRunError")
    return SkillError(why[:600], error_type=error_type, non_retryable=True, output=report, log_tail=cmd.log_tail)


def _startup_error(output: str) -> str:
    """Why pytest did not start: its ``error:`` line, the missing module of a conftest, or its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    missing = _MISSING_MODULE.search(output)
    if missing:
        return f"No module named '{missing.group(1)}'"
    errors = [line for line in lines if re.search(r"\berror: |^E\s+\w+Error|^ERROR: (?!usage)", line)]
    return (errors or lines or ["no output"])[-1][:300]


def load_report(text: str | None) -> dict[str, Any] | None:
    """The plugin's JSON report, or None when pytest never got to write it."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and all(isinstance(data.get(k), int) for k in COUNTS) else None


def summarize(report: dict[str, Any]) -> str:
    """pytest-style one-liner: "18 passed, 1 failed, 1 skipped in 0.4s"."""
    parts = [f"{report[key]} {key}" for key in COUNTS if report.get(key)]
    return f"{', '.join(parts) or 'no tests ran'} in {report['duration']:.2f}s"
