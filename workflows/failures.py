"""How a stage's failures read: the template's retry policy, one-line reasons, and the agent's attached report.

Pure helpers of ``PipelineWorkflow``, kept apart so the workflow module holds only the run's ordering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from devart.core.contracts import StageResult, StageSpec
    from devart.core.contracts_pipeline import REMEDY_DIAGNOSED_ERROR_TYPES


def stage_retry_policy(stage: StageSpec, *, self_heal: bool = False) -> RetryPolicy:
    """The template's retry settings as a Temporal ``RetryPolicy``.

    With ``self_heal`` (engine 8 on) a ``self_heal: apply`` stage leaves the error types a remedy diagnoses
    (``REMEDY_DIAGNOSED_ERROR_TYPES``) to the agent's non-retryable flag: its skill marks such a failure
    retryable only when a remedy can answer it (the failed tests' node ids for a re-run of them alone), so the
    policy must not refuse it first. Every other such failure the skill still marks final.
    """
    r = stage.retry
    final = list(r.non_retryable_error_types)
    if self_heal and stage.self_heal == "apply":
        final = [kind for kind in final if kind not in REMEDY_DIAGNOSED_ERROR_TYPES]
    return RetryPolicy(
        initial_interval=r.initial_interval,
        backoff_coefficient=r.backoff_coefficient,
        maximum_interval=r.maximum_interval,
        maximum_attempts=r.maximum_attempts,
        non_retryable_error_types=final,
    )


def describe_failure(err: BaseException) -> str:
    """A one-line reason for a failed activity, from the innermost cause Temporal gives us."""
    cause = err.cause if isinstance(err, ActivityError) and err.cause else err
    if isinstance(cause, ActivityTimeoutError):
        return f"timed out ({cause.type.name.lower().replace('_', '-')})" if cause.type else "timed out"
    if isinstance(cause, ApplicationError):
        return f"{cause.type}: {cause.message}" if cause.type else cause.message
    if not isinstance(cause, ActivityError) and type(cause).__module__ == "builtins":
        return f"{type(cause).__name__}: {cause}"  # an unexpected error in the workflow's own code
    return str(cause)


def raise_escaped(done: Iterable[asyncio.Task[None]]) -> None:
    """Re-raise what escaped a finished stage's task: only a workflow bug may, and it must not go unnoticed."""
    for task in done:
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise exc


def failed_result(err: ActivityError) -> StageResult | None:
    """The agent's structured report attached to a failure (test counts, log tail), when it sent one."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.details:
        try:
            return StageResult.model_validate(cause.details[0])
        except Exception:  # details from an older agent version: keep the failure, drop the report
            return None
    return None
