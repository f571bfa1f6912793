"""The ``noop`` skill: does nothing, on purpose, in ways tests and benchmarks can steer.

Fault injection is not a product feature: this is a plugin (an ``AgentApp``), loaded only by the agents the test
suite and the benchmarks start (``DEVART_AGENT_MODULES=tests.plugins.noop``), never by ``devart up``'s agents.
It asks for no capability of its own, so loading it changes no agent's lanes.

Inputs (all optional): ``sleep`` (seconds to wait, cancellable at once), ``sandbox_command`` (run by
``/bin/sh -c`` in the sandbox; non-zero exit fails with ``CommandFailed``), ``slow_attempts`` (sleep only on
attempts up to this number; default: every attempt), ``report_tokens`` (model -> tokens to report as usage,
so cost and budget paths can be exercised with exact figures), ``fail_attempts`` (attempts up to
this number fail with a retryable ``Transient`` error), ``fail_type`` and ``non_retryable`` (the error type
raised instead, and whether it may be retried).
"""

from __future__ import annotations

import asyncio
import time

from devart.core.contracts import StageResult, Usage
from devart.core.errors import SkillError
from devart.workers.skills.common import Commands, input_bool, input_float, invalid_input
from devart_sdk import AgentApp, SkillContext

app = AgentApp()

#: Longest single wait while sleeping, so progress stays fresh during long sleeps.
SLEEP_STEP = 0.2


@app.skill("noop", capabilities=[])
async def run(ctx: SkillContext) -> StageResult:
    sleep = input_float(ctx, "sleep", 0.0)
    raw_attempts = ctx.task.inputs.get("fail_attempts") or 0
    try:
        fail_attempts = int(raw_attempts)
    except (TypeError, ValueError):
        raise invalid_input(f"input 'fail_attempts' must be an integer, got {raw_attempts!r}") from None
    fail_type = str(ctx.task.inputs.get("fail_type") or "Transient")
    non_retryable = input_bool(ctx, "non_retryable")
    command = ctx.task.inputs.get("sandbox_command")
    cmd = Commands(ctx)

    slow_attempts = ctx.task.inputs.get("slow_attempts")
    if slow_attempts not in (None, "") and ctx.task.attempt > int(slow_attempts):
        sleep = 0.0
    deadline = time.monotonic() + sleep
    while (left := deadline - time.monotonic()) > 0:
        ctx.progress(f"sleeping, {left:.1f}s left")
        await asyncio.sleep(min(SLEEP_STEP, left))

    output: dict[str, object] = {"attempt": ctx.task.attempt, "slept": sleep}
    if command:
        result = await cmd.run("sandbox_command", ["/bin/sh", "-c", str(command)],
                               timeout=input_float(ctx, "timeout", 600.0))
        output.update(exit_code=result.exit_code, command_output=result.output[-2000:])
        if result.exit_code != 0 or result.timed_out:
            raise SkillError(f"sandbox command exited with code {result.exit_code}", error_type="CommandFailed",
                             output=output, log_tail=cmd.log_tail)

    if ctx.task.attempt <= fail_attempts:
        raise SkillError(f"{'failure' if non_retryable else 'transient failure'} injected on attempt "
                         f"{ctx.task.attempt}", error_type=fail_type, non_retryable=non_retryable, output=output)
    return StageResult(status="succeeded", summary=f"noop succeeded on attempt {ctx.task.attempt}", output=output,
                       log_tail=cmd.log_tail, usage=_usage(ctx, cmd))


def _usage(ctx: SkillContext, cmd: Commands) -> Usage:
    usage = cmd.usage()
    tokens = ctx.task.inputs.get("report_tokens") or {}
    if not isinstance(tokens, dict) or not all(isinstance(v, int) and v >= 0 for v in tokens.values()):
        raise invalid_input(f"input 'report_tokens' must map model names to token counts, got {tokens!r}")
    usage.model_tokens.update({str(k): int(v) for k, v in tokens.items()})
    return usage
