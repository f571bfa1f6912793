"""Helpers the built-in skills share: running commands in the sandbox, reading files back, checking inputs."""

from __future__ import annotations

import base64
import json
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from devart.core.contracts import Usage
from devart.core.errors import SandboxError, SkillError
from devart.core.telemetry import tracing as telemetry
from devart.sandboxes.base import ExecResult, OutputCallback
from devart.workers.skills.base import SkillContext

#: Characters of combined command output kept in a task's ``log_tail``.
LOG_TAIL_CHARS = 4000
#: Output cap for commands whose output is data (a JUnit file, a file listing), not a log.
DATA_OUTPUT_CAP = 20_000_000


def tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    """The last ``limit`` characters of ``text``."""
    return text[-limit:]


def invalid_input(message: str) -> SkillError:
    """A task input that no retry can fix."""
    return SkillError(message, error_type="InvalidInput", non_retryable=True)


def input_bool(ctx: SkillContext, name: str, default: bool = False) -> bool:
    """A boolean input; pipeline templates substitute parameters as strings, so "true"/"false" are accepted."""
    value = ctx.task.inputs.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "false", "0", "no", ""}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise invalid_input(f"input '{name}' must be true or false, got {value!r}")


def input_float(ctx: SkillContext, name: str, default: float) -> float:
    """A non-negative number input (strings such as "600" are accepted)."""
    value = ctx.task.inputs.get(name, default)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise invalid_input(f"input '{name}' must be a number, got {value!r}") from None
    if number < 0:
        raise invalid_input(f"input '{name}' must not be negative, got {value!r}")
    return number


def input_subdir(ctx: SkillContext, name: str = "path") -> str:
    """A relative directory inside the workspace ("." when not given); absolute paths and ``..`` are refused."""
    value = ctx.task.inputs.get(name) or "."
    if not isinstance(value, str):
        raise invalid_input(f"input '{name}' must be a string, got {value!r}")
    normal = posixpath.normpath(value)
    if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise invalid_input(f"input '{name}' must be a directory inside the repository, got {value!r}")
    return normal


class Commands:
    """Runs one skill's commands in its sandbox and keeps what the report needs: log, CPU time, step durations."""

    def __init__(self, ctx: SkillContext) -> None:
        self.ctx = ctx
        self.cpu_seconds = 0.0
        self.steps: dict[str, float] = {}
        self._log: list[str] = []

    async def run(self, step: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                  timeout: float = 600.0, logged: bool = True, output_cap: int | None = None) -> ExecResult:
        """Run ``argv`` in the workspace as ``step``; ``logged=False`` keeps data output out of the log tail."""
        self.ctx.progress(f"{step}: {shlex.join(argv)}"[:500])
        extra: dict[str, Any] = {} if output_cap is None else {"output_cap": output_cap}
        try:
            with telemetry.tracer().start_as_current_span(
                f"sandbox exec {step}", attributes={"devart.command": shlex.join(argv)[:500]}
            ) as span:
                result = await self.ctx.sandbox.exec(self.ctx.task.sandbox, list(argv), env=env, timeout=timeout,
                                                     on_output=self._reporter(step) if logged else None, **extra)
                span.set_attribute("devart.exit_code", result.exit_code)
        except SandboxError as exc:  # e.g. a secret missing from this agent's environment: say so, as the sandbox does
            raise SkillError(f"{step}: {exc}", error_type=exc.reason, non_retryable=not exc.retryable,
                             log_tail=self.log_tail) from exc
        self.cpu_seconds += result.cpu_seconds
        self.steps[step] = round(self.steps.get(step, 0.0) + result.duration, 3)
        if logged:
            self._log.append(f"$ {shlex.join(argv)}\n{result.output}")
            if result.timed_out:
                self._log.append(f"[timed out after {timeout:g}s]\n")
            elif result.exit_code != 0:
                self._log.append(f"[exit code {result.exit_code}]\n")
        self._check_limits(step, result, timeout)
        return result

    def _check_limits(self, step: str, result: ExecResult, timeout: float) -> None:
        """Fail the task with the sandbox limit a command hit, not as a generic failure.

        Memory and process limits count only when the command failed: a build may survive a killed helper. The
        disk limit always counts, since the post-command check is its only enforcement. A command stopped by the
        sandbox's command time limit (``spec.timeout``, when it is the shorter of it and the step's own
        ``timeout``) is a ``CommandTimeout``; a step's own limit is the skill's to report.
        """
        spec = self.ctx.task.sandbox.spec
        failed = result.exit_code != 0 or result.timed_out
        limit = spec.timeout.total_seconds()
        if result.oom_killed and failed:
            error_type, message = "OutOfMemory", f"{step} was killed: out of memory (limit {spec.memory_mb} MiB)"
        elif result.pids_limited and failed:
            error_type, message = "PidsLimit", f"{step} was stopped: too many processes (limit {spec.pids})"
        elif result.disk_exceeded:
            error_type, message = "DiskLimit", f"{step} filled the sandbox: over its disk limit ({spec.disk_mb} MiB)"
        elif result.timed_out and limit <= timeout:
            error_type, message = "CommandTimeout", f"{step} outlived the sandbox's command time limit ({limit:g}s)"
        else:
            return
        self._log.append(f"[{message}]\n")
        # A retry with the same limits fails alike; a self-healing stage's retry gets a remedy (more memory,
        # processes or time, within the operator's caps: ``domain/remedies.py``), so only it is worth one.
        healable = error_type != "DiskLimit" and self.ctx.task.self_heal == "apply"
        raise SkillError(message, error_type=error_type, non_retryable=not healable, log_tail=self.log_tail)

    async def read_text(self, path: str) -> str | None:
        """The content of a file in the workspace, read through the sandbox (so any backend works); None if absent."""
        result = await self.run(f"read {path}", ["cat", "--", path], logged=False, output_cap=DATA_OUTPUT_CAP)
        return result.output if result.exit_code == 0 and not result.truncated else None

    async def read_bytes(self, path: str) -> bytes | None:
        """A binary file of the workspace, read through the sandbox as base64 (any backend); None if unreadable.

        Read as the sandbox's user, so a symbolic link planted in the workspace reaches nothing that user
        could not already read.
        """
        result = await self.run(f"read {path}", ["base64", "-w0", "--", path], logged=False,
                                output_cap=DATA_OUTPUT_CAP)
        if result.exit_code != 0 or result.truncated:
            return None
        try:
            return base64.b64decode(result.output.strip(), validate=True)
        except ValueError:
            return None

    async def python_json(self, step: str, script: str, *args: str) -> Any:
        """Run a small stdlib-only script with the agent's interpreter in the sandbox; it prints one JSON value."""
        result = await self.run(step, [self.ctx.python, "-c", script, *args], logged=False,
                                output_cap=DATA_OUTPUT_CAP)
        if result.exit_code != 0 or result.truncated:
            self._log.append(f"$ {step}\n{tail(result.output)}\n[exit code {result.exit_code}]\n")
            raise SkillError(f"{step} failed with exit code {result.exit_code}", error_type="SkillFailed",
                             log_tail=self.log_tail)
        return json.loads(result.output.strip().splitlines()[-1])

    def note(self, text: str) -> None:
        """Add a line of the skill's own to the log."""
        self._log.append(text if text.endswith("\n") else text + "\n")

    @property
    def log_tail(self) -> str:
        return tail("".join(self._log))

    def usage(self) -> Usage:
        return Usage(sandbox_cpu_seconds=round(self.cpu_seconds, 3))

    def _reporter(self, step: str) -> OutputCallback:
        def report(chunk: str) -> None:
            lines = [line for line in chunk.splitlines() if line.strip()]
            if lines:
                self.ctx.progress(f"{step}: {lines[-1]}"[:500])

        return report
