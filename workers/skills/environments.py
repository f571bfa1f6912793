"""Project environments for the build and test skills: ``uv`` builds, virtualenvs and installs in the sandbox.

Every build and every test run gets environments of its own, made the way the project's authors make them:
PEP 517 build isolation with the backend and plugins the project declares, and a fresh virtualenv for the
tests. Packages come from the package index through the sandbox's ``network: packages`` mode (the agent's
index proxy, see ``sandboxes/package_index.py``); with ``network: none`` uv runs offline and says what was
missing. uv is an order of magnitude faster than ``venv`` + ``pip`` (a virtualenv with ensurepip costs seconds).

Failures are told apart by what uv printed: an unreachable index is worth a retry, an unresolvable requirement
or a failing build backend is not.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import date
from functools import lru_cache

from devart.core.errors import SkillError
from devart.sandboxes.base import ExecResult
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import Commands, invalid_input

#: Messages of uv's that mean the index could not be reached (worth a retry), not that the request is wrong.
_NETWORK = re.compile(r"error sending request|Failed to fetch|dns error|tcp connect error|Connection refused|"
                      r"connection reset|timed out|Could not connect|failed to lookup address", re.IGNORECASE)
_RESOLUTION = re.compile(r"No solution found|unsatisfiable", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: The reason line is kept to one readable line.
REASON_CHARS = 400


@lru_cache(maxsize=1)
def uv_binary() -> str:
    """The ``uv`` executable shipped with the agent (the PyPI package ``uv``); the sandbox sees the agent's venv."""
    from uv import find_uv_bin

    return str(find_uv_bin())


def base_python() -> str:
    """The agent's base interpreter, which project virtualenvs are made from."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def uv_env(ctx: SkillContext) -> dict[str, str]:
    """uv's settings for one command: never download interpreters, plain output, the task's index cut-off."""
    env = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "NO_COLOR": "1", "UV_LINK_MODE": "copy",
           "UV_NATIVE_TLS": "1"}  # the machine's trust store, as every other client on it
    if ctx.task.sandbox.spec.network == "none":
        env["UV_OFFLINE"] = "1"
    if cutoff := exclude_newer(ctx):
        env["UV_EXCLUDE_NEWER"] = cutoff
    return env


def exclude_newer(ctx: SkillContext) -> str | None:
    """The ``exclude_newer`` input: resolve as the index was on that date (YYYY-MM-DD), for repeatable runs."""
    value = ctx.task.inputs.get("exclude_newer") or None
    if value is None:
        return None
    try:
        return date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise invalid_input(f"input 'exclude_newer' must be a date (YYYY-MM-DD), got {value!r}") from None


def explain(output: str) -> str:
    """One line from uv's output: its ``error:`` line and the innermost ``cause:``."""
    lines = [_ANSI.sub("", line).strip() for line in output.splitlines()]
    heads = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    causes = [line.removeprefix("cause:").strip() for line in lines if line.startswith("cause:")]
    hints = [line for line in lines if line.startswith("hint: Packages were unavailable")]
    parts = [*heads[-1:], *causes[-1:], *hints[:1]]
    if not parts:
        parts = [line for line in lines if line][-1:]
    return "; ".join(parts)[:REASON_CHARS]


def failure(step: str, result: ExecResult, ctx: SkillContext, cmd: Commands, *, error_type: str,
            output: dict | None = None) -> SkillError:
    """The error for a failed uv step: retryable when the index was unreachable, final otherwise."""
    if result.timed_out:
        return SkillError(f"{step} timed out", error_type=error_type, non_retryable=False,
                          output={"failed_step": step, **(output or {})}, log_tail=cmd.log_tail)
    why = explain(result.output) or f"exited with code {result.exit_code}"
    network = ctx.task.sandbox.spec.network
    if network == "none" and ("network was disabled" in result.output or _NETWORK.search(result.output)):
        return SkillError(f"{step} needs the package index, but the stage has no network: set the stage's "
                          f"`sandbox: {{network: packages}}` ({why})", error_type=error_type, non_retryable=True,
                          output={"failed_step": step, "offline": True, **(output or {})}, log_tail=cmd.log_tail)
    unreachable = bool(_NETWORK.search(result.output)) and not _RESOLUTION.search(why)
    return SkillError(f"{step} failed: {why}", error_type="PackageIndexUnreachable" if unreachable else error_type,
                      non_retryable=not unreachable, output={"failed_step": step, **(output or {})},
                      log_tail=cmd.log_tail)


async def create_venv(ctx: SkillContext, cmd: Commands, venv: str, *, timeout: float, error_type: str) -> str:
    """A fresh virtualenv at ``venv`` (workspace-relative); returns its interpreter's path."""
    result = await cmd.run("venv", [uv_binary(), "venv", "--quiet", "--clear", "--python", base_python(), venv],
                           env=uv_env(ctx), timeout=timeout)
    if result.exit_code != 0 or result.timed_out:
        raise failure("venv", result, ctx, cmd, error_type=error_type)
    return f"{venv}/bin/python"


async def install(ctx: SkillContext, cmd: Commands, python: str, requirements: Sequence[str], *,
                  timeout: float, error_type: str, step: str = "install") -> ExecResult:
    """``uv pip install`` into the environment of ``python``; ``requirements`` are uv arguments (``-r f`` too)."""
    result = await cmd.run(step, [uv_binary(), "pip", "install", "--python", python, *requirements],
                           env=uv_env(ctx), timeout=timeout)
    if result.exit_code != 0 or result.timed_out:
        raise failure(step, result, ctx, cmd, error_type=error_type)
    return result


async def freeze(ctx: SkillContext, cmd: Commands, python: str) -> list[str]:
    """What is installed in the environment, as ``name==version`` lines (the run's record of its dependencies)."""
    result = await cmd.run("freeze", [uv_binary(), "pip", "freeze", "--python", python], env=uv_env(ctx),
                           timeout=60, logged=False)
    return [line for line in result.output.splitlines() if "==" in line or " @ " in line][:500]
