"""The built-in remedies a retry can apply: each a named, bounded change to the failed task, for the failure kinds
it answers. The knowledge base says which one worked for a similar failure; this module says what each does.

A remedy changes only the task the next attempt receives (its sandbox limits, its command time limit, the skill
inputs that make it diagnose or propose), never the stage's definition, and never past the caps the operator sets
(``DEVART_SELFHEAL_*``): a failure that more memory cannot fix costs at most the cap once. A remedy that would change
nothing (the limit is at its cap, the failure is not one it can answer) is not applied. Each remedy reads the
previous attempt's failure (``Failure``): some answer any failure of their kind, others only the diagnosis the
skill wrote into its output (the failed tests' node ids, a build backend missing offline, fixable lint findings).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings

from devart.core.contracts import AgentTaskInput
from devart.core.settings_base import env_config


class SelfHealSettings(BaseSettings):
    """Caps on what a remedy may give a retry, and when a remedy is trusted enough to apply unasked."""

    model_config = env_config("DEVART_SELFHEAL_")
    max_memory_mb: int = Field(default=8192, ge=32, description="The most memory a remedy gives a sandbox (MiB).")
    max_pids: int = Field(default=4096, ge=8, description="The most processes a remedy allows a sandbox.")
    max_command_seconds: float = Field(default=3600.0, gt=0,
                                       description="The longest command time limit a remedy sets.")
    min_success_rate: float = Field(
        default=0.3, ge=0.0, le=1.0,
        description="A remedy whose record (Laplace-smoothed success rate) falls below this is only suggested, never "
        "applied unasked: a guard against harmful memories.")


@dataclass(frozen=True)
class Failure:
    """The previous attempt's failure, as its row holds it: what a remedy answers."""

    error_type: str
    message: str = ""
    #: The skill's structured output of the failed attempt (its diagnosis: test node ids, the failed step...).
    output: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """A remedy's effect on a task: the new task and what changed, in words."""

    task: AgentTaskInput
    change: str


def _factor(parameters: Mapping[str, Any]) -> float:
    try:
        factor = float(parameters.get("factor", 2.0))
    except (TypeError, ValueError):
        return 2.0
    return min(max(factor, 1.1), 8.0)


def _scaled(task: AgentTaskInput, parameters: Mapping[str, Any], field: str, cap: float, words: str,
            unit: str = "") -> Change | None:
    """The sandbox's ``field`` (a count, or a duration) × the ``factor`` parameter, up to ``cap``; None when that
    changes nothing (it is at its cap already)."""
    spec = task.sandbox.spec
    now = getattr(spec, field)
    current = now.total_seconds() if isinstance(now, timedelta) else float(now)
    wanted = min(current * _factor(parameters), cap)
    if isinstance(now, int):
        wanted = float(int(wanted))
    if wanted <= current:
        return None
    value = timedelta(seconds=wanted) if isinstance(now, timedelta) else int(wanted)
    healed = task.sandbox.model_copy(update={"spec": spec.model_copy(update={field: value})})
    return Change(task.model_copy(update={"sandbox": healed}), f"{words} {current:g} -> {wanted:g}{unit}")


def more_memory(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
                failure: Failure) -> Change | None:
    return _scaled(task, parameters, "memory_mb", caps.max_memory_mb, "memory", " MiB")


def more_processes(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
                   failure: Failure) -> Change | None:
    return _scaled(task, parameters, "pids", caps.max_pids, "processes")


def longer_timeout(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
                   failure: Failure) -> Change | None:
    """A longer limit per command. The stage's own timeout (Temporal's start-to-close) still bounds the attempt."""
    return _scaled(task, parameters, "timeout", caps.max_command_seconds, "command time limit", " s")


#: The most times a retry re-runs the failed tests, and the most failed tests it re-runs: past that many the
#: suite is broken, not flaky, and a re-run would cost a whole suite's time.
MAX_RERUNS, MAX_RERUN_TESTS = 5, 50


def failed_test_ids(output: Mapping[str, Any]) -> list[str] | None:
    """The node ids of every test a ``TestsFailed`` report names, or None when they cannot be re-run alone: the
    report lists fewer failures than it counts (cut short), a collection error, or more than ``MAX_RERUN_TESTS``.

    The test skill asks this before it lets a self-healing stage retry, and the remedy reads the same ids: the
    retry re-runs exactly those tests, never the whole suite blindly.
    """
    failures = output.get("failures")
    if not isinstance(failures, list) or not failures:
        return None
    ids: list[str] = []
    for failure in failures:
        if not isinstance(failure, dict) or failure.get("outcome") not in ("failed", "error"):
            return None
        test = str(failure.get("test") or "")
        if not test or test == "<session>":
            return None
        if test not in ids:
            ids.append(test)
    try:
        counted = int(output.get("failed") or 0) + int(output.get("errors") or 0)
    except (TypeError, ValueError):
        return None
    return ids if len(failures) == counted and len(ids) <= MAX_RERUN_TESTS else None


#: The test report's counts of a whole run of the suite.
SUITE_COUNTS = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed", "total")


def rerun_failed_tests(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
                       failure: Failure) -> Change | None:
    """Re-run only the tests the previous attempt saw fail, up to ``runs`` times (default 2), to tell a flaky test
    (it passes on a re-run: the stage succeeds, naming it flaky) from a broken one (it fails every time: the stage
    fails, naming it broken). A re-run's own failure is final: its verdict is the diagnosis."""
    tests = failed_test_ids(failure.output)
    if tests is None or task.inputs.get("rerun_tests"):
        return None
    try:
        runs = min(max(int(parameters.get("runs", 2)), 1), MAX_RERUNS)
    except (TypeError, ValueError):
        runs = 2
    # The whole suite's counts ride along, so the retry reports the suite (with its flaky tests now passed), not
    # only the few tests it re-ran: a verdict's figures are the project's, whatever attempt gave them.
    counts = {key: failure.output[key] for key in SUITE_COUNTS if isinstance(failure.output.get(key), int)}
    inputs = {**task.inputs, "rerun_tests": tests, "rerun_times": runs, "rerun_of": counts}
    noun = "test" if len(tests) == 1 else "tests"
    return Change(task.model_copy(update={"inputs": inputs}),
                  f"re-run only the {len(tests)} failed {noun}, up to {runs} times")


#: The build skill's diagnosis (its output's ``cause``) of a build whose declared backend cannot be fetched: the
#: stage has no network, and PEP 517 isolation wants the backend from the package index.
BUILD_BACKEND_OFFLINE = "build_backend_offline"


def build_without_isolation(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
                            failure: Failure) -> Change | None:
    """Build without PEP 517 isolation, with the backend the project declares taken from the agent's own
    environment, when the isolated build failed only because that backend could not be fetched offline. The stage's
    network stays as its template set it: the remedy never opens a way out of the sandbox."""
    if failure.output.get("cause") != BUILD_BACKEND_OFFLINE or task.inputs.get("build_isolation") in (False, "false"):
        return None
    inputs = {**task.inputs, "build_isolation": False}
    return Change(task.model_copy(update={"inputs": inputs}),
                  "build without isolation, with the declared backend from the agent's environment")


def ruff_fix(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
             failure: Failure) -> Change | None:
    """Propose ``ruff check --fix``'s changes as a patch in the retry's output, when the lint findings include
    fixable ones. The patch is made on a copy and never applied or pushed, and the verdict stays the repository's:
    the retry still fails while findings remain there."""
    try:
        fixable = int(failure.output.get("fixable") or 0)
    except (TypeError, ValueError):
        return None
    if fixable < 1 or task.inputs.get("propose_fix") in (True, "true"):
        return None
    return Change(task.model_copy(update={"inputs": {**task.inputs, "propose_fix": True}}),
                  f"propose ruff --fix for {fixable} fixable findings as a patch (not applied)")


Remedy = Callable[[AgentTaskInput, Mapping[str, Any], SelfHealSettings, Failure], Change | None]

#: Each built-in remedy, and the error types it answers (what the knowledge base explores first for them).
REMEDIES: dict[str, tuple[Remedy, frozenset[str]]] = {
    "more_memory": (more_memory, frozenset({"OutOfMemory"})),
    "more_processes": (more_processes, frozenset({"PidsLimit"})),
    "longer_timeout": (longer_timeout, frozenset({"CommandTimeout", "Timeout"})),
    "rerun_failed_tests": (rerun_failed_tests, frozenset({"TestsFailed"})),
    "build_without_isolation": (build_without_isolation, frozenset({"BuildFailed"})),
    "ruff_fix": (ruff_fix, frozenset({"LintFailed"})),
}
#: Remedies that only diagnose or propose, never change what the stage judges: a poor record (their attempts fail
#: when the failure is real) does not stop them, since skipping them would leave a blind re-run or none.
DIAGNOSTIC: frozenset[str] = frozenset({"rerun_failed_tests", "ruff_fix"})


def effective(name: str, succeeded: bool, output: Mapping[str, Any]) -> bool:
    """Whether a remedy did what it is for, on the attempt it was applied to. A fix works when that attempt
    succeeded. A diagnosis (``DIAGNOSTIC``) works when the skill delivered it, even as the stage rightly still fails:
    a flaky-or-broken verdict on the re-run tests, a patch of ruff's fixes. Either way the pair (this failure, this
    remedy) is worth knowing for the next such failure."""
    if succeeded:
        return True
    if name == "rerun_failed_tests":
        return isinstance(output.get("rerun"), dict)
    if name == "ruff_fix":
        patch = output.get("proposed_patch")
        return isinstance(patch, dict) and bool(patch.get("diff"))
    return False


def answering(error_type: str) -> list[str]:
    """The built-in remedies for an error type, in the order they are tried when no entry knows better."""
    return [name for name, (_, kinds) in REMEDIES.items() if error_type in kinds]


def apply(name: str, task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings | None = None,
          failure: Failure | None = None) -> Change | None:
    """``name``'s change to ``task`` after ``failure``; None for an unknown remedy, a failure of a kind it does not
    answer, or one it would change nothing for."""
    found = REMEDIES.get(name)
    if found is None:
        return None
    function, kinds = found
    if failure is not None and failure.error_type not in kinds:
        return None
    return function(task, parameters, caps or SelfHealSettings(), failure or Failure(error_type=""))
