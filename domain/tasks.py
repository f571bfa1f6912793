"""The agent side of a task: claim, heartbeat, complete, fail, report cancellation.

Each call first passes the claim fence (``api.services.claims``: the caller holds the claim of the *current*
attempt), forwards the call to Temporal through the activity's task token, and commits only once Temporal
accepted it. A result is measured as Temporal encodes it before anything is stored (``core.reports``): one
Temporal would refuse is a 413, the task stays claimed, and the agent reports a smaller result or the stage's
failure.

A result or failure that Temporal applied but the API never recorded (it stopped before its commit, so the agent
got no reply and sends it again) is answered as the first time and recorded then, once: Temporal's NOT_FOUND is
checked against the run's history (``api.services.applied``) before the attempt is called superseded. A report
sent again after it was recorded is a late report, refused and counted like any other.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import AsyncActivityCancelledError, Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from devart.api.schemas import CompleteRequest, FailRequest, HeartbeatReply
from devart.core import reports, settings
from devart.core.bounds import MAX_FAILURE_MESSAGE_CHARS, MAX_HEARTBEAT_BYTES, size
from devart.core.contracts import AgentTaskInput, AppliedRemedy, StageResult, TaskDetail
from devart.core.database.models import Agent, TaskAttempt, utcnow
from devart.core.errors import TooLarge
from devart.core.messaging.topology import can_serve
from devart.core.telemetry import metrics
from devart.domain import agents, applied
from devart.domain.attempt_states import AttemptState, move

# TaskNotFound and TaskRefused stay importable from here, where api.errors maps them to HTTP answers.
from devart.domain.claims import TaskForbidden, TaskRefused, check_claim, check_report, gone, locked
from devart.domain.costs import prices, to_money
from devart.domain.events import add_event, reserve_id


class ReportTooLarge(TooLarge):
    """A report past a size limit; nothing was stored and the task is still claimed."""


async def claim(session: AsyncSession, client: Client, task_id: str, agent: Agent) -> TaskDetail:
    row = await locked(session, task_id)
    if not can_serve(agent.capabilities, row.lane):
        raise TaskForbidden(f"agent {agent.name} lacks capabilities for lane {row.lane}")
    if row.status != AttemptState.QUEUED:
        holder = f" by {row.claimed_by}" if row.claimed_by else ""
        raise TaskRefused(f"task {task_id} is already {row.status}{holder}")
    handle = client.get_async_activity_handle(task_token=row.task_token)
    try:
        await handle.heartbeat({"claimed_by": agent.name})  # the agent's heartbeat clock starts now
    except AsyncActivityCancelledError:
        await handle.report_cancellation()
        move(row, AttemptState.CANCELLED)
        await session.commit()
        raise TaskRefused(f"task {task_id} was cancelled") from None
    except RPCError as exc:
        raise await gone(session, row, agent, exc) from None
    move(row, AttemptState.CLAIMED)
    row.claimed_by, row.claim_id = agent.name, uuid.uuid4().hex
    row.claimed_at = row.heartbeat_at = utcnow()
    row.waiting_reason = None
    agent.status, agent.current_task = "busy", row.id
    session.add(agent)
    add_event(
        session,
        "stage.attempt.started",
        f"attempt {row.attempt} claimed by {agent.name}",
        run_id=row.run_id,
        stage=row.stage,
        agent=agent.name,
        attempt=row.attempt,
    )
    await session.commit()
    return TaskDetail(
        **AgentTaskInput.model_validate(row.input).model_dump(),
        task_id=row.id,
        attempt=row.attempt,
        claim_id=row.claim_id,
        heartbeat_interval=settings.agent().heartbeat_interval,
    )


async def heartbeat(
    session: AsyncSession, client: Client, task_id: str, agent: Agent, claim_id: str, details: dict[str, Any]
) -> HeartbeatReply:
    row = await check_claim(session, task_id, agent, claim_id)
    if (found := reports.encoded_size(details)) > MAX_HEARTBEAT_BYTES:
        await session.rollback()
        raise ReportTooLarge(f"heartbeat details of {found} bytes exceed the limit of {MAX_HEARTBEAT_BYTES} bytes "
                             f"({size(MAX_HEARTBEAT_BYTES)}): Temporal keeps them with the activity")
    try:
        await client.get_async_activity_handle(task_token=row.task_token).heartbeat(details)
    except AsyncActivityCancelledError:
        return HeartbeatReply(cancel_requested=True)
    except RPCError as exc:
        raise await gone(session, row, agent, exc) from None
    row.heartbeat_at = utcnow()
    await session.commit()
    return HeartbeatReply(cancel_requested=False)


def _stamped(row: TaskAttempt, agent: Agent, report: StageResult, **update: Any) -> StageResult:
    """The report as the API forwards and records it: with its attempt, agent, cost and the remedies its task had
    (so they stand in the run's record and in the workflow's history)."""
    remedies = [AppliedRemedy.model_validate(r) for r in (row.input or {}).get("remedies") or []]
    return report.model_copy(update={"attempt": row.attempt, "agent": agent.name,
                                     "cost": to_money(prices().cost_micros(report.usage)), "remedies": remedies,
                                     **update})


async def complete(session: AsyncSession, client: Client, task_id: str, agent: Agent, req: CompleteRequest) -> None:
    """Complete the attempt with the agent's result; a repeat of the recorded result is answered as done."""
    def recorded(row: TaskAttempt) -> bool:
        return row.status == AttemptState.SUCCEEDED and row.result == _stamped(row, agent, req.result).model_dump(
            mode="json")

    row = await check_report(session, task_id, agent, req.claim_id, recorded)
    if row is None:
        return
    result = _stamped(row, agent, req.result)
    await _check_size(session, row, result)
    event_id = await reserve_id(session)
    handle = client.get_async_activity_handle(task_token=row.task_token)
    await _tell_temporal(session, row, agent, lambda: handle.complete(result),
                         lambda: applied.completed(client, row, result))
    await _finish(session, row, agent, "succeeded", result, None, event_id)
    await session.commit()


async def fail(session: AsyncSession, client: Client, task_id: str, agent: Agent, req: FailRequest) -> None:
    """Fail the attempt with the agent's error; a repeat of the recorded failure is answered as done."""
    report = req.result or StageResult(status="failed", summary=req.message)

    def recorded(row: TaskAttempt) -> bool:
        return (row.status == AttemptState.FAILED and row.error == f"{req.error_type}: {req.message}"
                and row.result == _stamped(row, agent, report, status="failed").model_dump(mode="json"))

    row = await check_report(session, task_id, agent, req.claim_id, recorded)
    if row is None:
        return
    result = _stamped(row, agent, report, status="failed")
    # A failure without a result is always taken (its message is bounded): the agent can always end the stage.
    await _check_size(session, row, result, req.message, whole_run=req.result is not None)
    error = ApplicationError(req.message, result, type=req.error_type, non_retryable=req.non_retryable)
    event_id = await reserve_id(session)
    handle = client.get_async_activity_handle(task_token=row.task_token)
    await _tell_temporal(session, row, agent, lambda: handle.fail(error), lambda: applied.failed(client, row, error))
    await _finish(session, row, agent, "failed", result, f"{req.error_type}: {req.message}", event_id)
    await session.commit()


async def _tell_temporal(session: AsyncSession, row: TaskAttempt, agent: Agent, report: Callable[[], Awaitable[None]],
                         was_applied: Callable[[], Awaitable[bool]]) -> None:
    """Complete or fail the activity by its token. Temporal answering NOT_FOUND means the attempt is over, unless
    its history shows this very report was applied (the answer to an earlier try was lost): then it stands."""
    try:
        await report()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND or not await was_applied():
            raise await gone(session, row, agent, exc) from None


async def _check_size(session: AsyncSession, row: TaskAttempt, result: StageResult, message: str = "", *,
                      whole_run: bool = True) -> None:
    """Refuse (413, nothing written, the row's lock released) a report Temporal or the run's record cannot carry;
    ``whole_run`` also holds it to the share of the run's record its other stages left."""
    problem = None
    if len(message) > MAX_FAILURE_MESSAGE_CHARS:
        problem = (f"a failure message of {len(message)} characters exceeds the limit of {MAX_FAILURE_MESSAGE_CHARS}"
                   ": it becomes the stage's and the run's error; put the details in the result's log_tail")
    found = reports.report_size(result, message)
    problem = problem or reports.result_problem(found)
    if problem is None and whole_run:
        others = (await session.execute(text(
            "SELECT coalesce(sum(size), 0) FROM (SELECT DISTINCT ON (stage) octet_length(coalesce(result::text, '')) "
            "+ octet_length(coalesce(error, '')) AS size FROM task_attempts WHERE run_id = :run AND stage <> :stage "
            "AND status IN ('succeeded', 'failed') ORDER BY stage, attempt DESC) latest"),
            {"run": row.run_id, "stage": row.stage})).scalar_one()
        problem = reports.run_problem(found, int(others), row.run_id)
    if problem is not None:
        await session.rollback()
        raise ReportTooLarge(problem)


async def cancelled(session: AsyncSession, client: Client, task_id: str, agent: Agent, claim_id: str) -> None:
    row = await check_claim(session, task_id, agent, claim_id)
    event_id = await reserve_id(session)
    try:
        await client.get_async_activity_handle(task_token=row.task_token).report_cancellation()
    except RPCError as exc:
        raise await gone(session, row, agent, exc) from None
    await _finish(session, row, agent, "cancelled", None, "cancelled", event_id)
    await session.commit()


async def release(session: AsyncSession, client: Client, task_id: str, agent: Agent, claim_id: str,
                  reason: str) -> None:
    """The agent hands the task back (draining, deactivated): the attempt is queued again for another agent.

    Within the same activity attempt, so a hand-back never uses up one of the stage's retries (a stage with
    ``maximum_attempts: 1`` survives a drain). The claim is dropped, so the agent that let go can no longer report
    on the task: only the next claim's holder can. The activity is heartbeated, which restarts its heartbeat clock;
    from then on the queue keeper keeps the attempt alive while it waits, and the agent returns its message to the
    lane once this call succeeded.
    """
    row = await check_claim(session, task_id, agent, claim_id)
    event_id = await reserve_id(session)
    handle = client.get_async_activity_handle(task_token=row.task_token)
    try:
        await handle.heartbeat({"released_by": agent.name})
    except AsyncActivityCancelledError:  # the run was cancelled meanwhile: nothing to hand over
        await handle.report_cancellation()
        await _finish(session, row, agent, "cancelled", None, "cancelled", event_id)
        await session.commit()
        return
    except RPCError as exc:
        raise await gone(session, row, agent, exc) from None
    move(row, AttemptState.QUEUED)  # handed back: the same Temporal attempt, for another agent
    row.claimed_by, row.claim_id, row.claimed_at = None, None, None
    row.heartbeat_at, row.waiting_reason = utcnow(), None
    _free(session, row, agent)
    metrics.TASKS_REPORTED.labels(row.skill, "released").inc()
    add_event(session, "stage.attempt.released", f"handed back by agent {agent.name}: {reason}", run_id=row.run_id,
              stage=row.stage, agent=agent.name, event_id=event_id, attempt=row.attempt)
    await session.commit()


def _free(session: AsyncSession, row: TaskAttempt, agent: Agent) -> None:
    """The agent no longer works on the task."""
    if agent.current_task == row.id:
        agent.current_task = None
        agent.status = "idle" if agent.status == "busy" else agent.status
        session.add(agent)


async def _finish(
    session: AsyncSession, row: TaskAttempt, agent: Agent, status: str, result: StageResult | None, error: str | None,
    event_id: int,
) -> None:
    move(row, AttemptState(status))
    row.error = error
    row.result = result.model_dump(mode="json") if result else None
    row.cost_micros = prices().cost_micros(result.usage) if result else 0
    metrics.TASKS_REPORTED.labels(row.skill, status).inc()
    _free(session, row, agent)
    if status in ("succeeded", "failed") and row.claimed_at is not None and row.finished_at is not None:
        seconds = (row.finished_at - row.claimed_at).total_seconds()
        await agents.record_outcome(session, agent.name, row.skill, status == "succeeded", seconds,
                                    to_money(row.cost_micros))
    kind = {"succeeded": "stage.attempt.succeeded", "failed": "stage.attempt.failed"}.get(status, "stage.cancelled")
    add_event(session, kind, error or (result.summary if result else status), run_id=row.run_id, stage=row.stage,
              agent=row.claimed_by, event_id=event_id, attempt=row.attempt)
