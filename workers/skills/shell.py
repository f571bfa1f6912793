"""The ``shell`` skill: run one command in the sandbox.

Inputs: ``command`` (a string run by ``/bin/sh -c``) or ``argv`` (a list run as is); ``timeout`` (seconds,
default 600); ``retryable`` (default true): whether a non-zero exit may be retried.
"""

from __future__ import annotations

from devart.core.contracts import StageResult
from devart.core.errors import SkillError
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import Commands, input_bool, input_float, invalid_input


def command_argv(ctx: SkillContext, key: str = "command") -> list[str]:
    """The command a task asks for: ``inputs[key]`` through the shell, or ``inputs["argv"]`` as is."""
    command, argv = ctx.task.inputs.get(key), ctx.task.inputs.get("argv")
    if isinstance(command, str) and command.strip():
        return ["/bin/sh", "-c", command]
    if isinstance(argv, list) and argv and all(isinstance(arg, str) for arg in argv):
        return argv
    raise invalid_input(f"the shell skill needs input '{key}' (a string) or 'argv' (a non-empty list of strings)")


async def run(ctx: SkillContext) -> StageResult:
    argv = command_argv(ctx)
    timeout = input_float(ctx, "timeout", 600.0)
    retryable = input_bool(ctx, "retryable", default=True)
    cmd = Commands(ctx)
    result = await cmd.run("shell", argv, timeout=timeout)
    output = {"exit_code": result.exit_code, "duration": round(result.duration, 3), "timed_out": result.timed_out}
    if result.exit_code != 0 or result.timed_out:
        why = f"timed out after {timeout:g}s" if result.timed_out else f"exited with code {result.exit_code}"
        raise SkillError(f"command {why}", error_type="CommandFailed", non_retryable=not retryable, output=output,
                         log_tail=cmd.log_tail)
    return StageResult(status="succeeded", summary=f"command succeeded in {result.duration:.1f}s", output=output,
                       log_tail=cmd.log_tail, usage=cmd.usage())
