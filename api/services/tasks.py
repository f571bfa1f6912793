"""The agent side of a task: claim, heartbeat, complete, fail, report cancellation.

Each call locks the attempt's row, checks that the caller holds the claim of the *current* attempt, forwards
the call to Temporal through the activity's task token, and commits only once Temporal accepted it. A report
on an attempt that is no longer current is refused, counted on the attempt and written to the feed.

An agent writes only to tasks it claimed: a call on another agent's task (or one nobody claimed) is refused with
nothing written, not even the refusal, so no key can add late-report counts or feed events to a task not its own.
A result is measured as Temporal encodes it before anything is stored (``core.reports``): one Temporal would
refuse is a 413, the task stays claimed, and the agent reports a smaller result or the stage's failure.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import AsyncActivityCancelledError, Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.schemas import CompleteRequest, FailRequest, HeartbeatReply
from core import agents, db, github_reporter, metrics, reports, settings
from core.bounds import MAX_FAILURE_MESSAGE_CHARS, MAX_HEARTBEAT_BYTES, size
from core.contracts import AgentTaskInput, StageResult, TaskDetail
from core.costs import prices, to_money
from core.errors import DevartError
from core.events import add_event, reserve_id
from core.models import Agent, Run, TaskAttempt, utcnow
from core.topology import can_serve


class TaskRefused(DevartError):
    """The caller may not act on this task (not its claim, not the current attempt, already finished)."""

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


class TaskNotFound(DevartError):
    """No task with that id."""


class ReportTooLarge(TaskRefused):
    """A report past a size limit; nothing was stored and the task is still claimed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 413)


async def _locked(session: AsyncSession, task_id: str) -> TaskAttempt:
    row = (await session.exec(select(TaskAttempt).where(TaskAttempt.id == task_id).with_for_update())).first()
    if row is None:
        raise TaskNotFound(f"task '{task_id}' not found")
    return row


async def _refuse(session: AsyncSession, task_id: str, agent: Agent, why: str, status_code: int = 409) -> TaskRefused:
    """Record a refused report in its own transaction and build the error.

    The caller's transaction is rolled back first: it holds the row lock the record needs.
    """
    name = agent.name  # read before the rollback expires every loaded object
    await session.rollback()
    async with db.session() as s:
        row = await s.get(TaskAttempt, task_id)
        if row is not None:
            row.late_reports += 1
            add_event(
                s, "task.report_refused", why, run_id=row.run_id, stage=row.stage, agent=name, attempt=row.attempt
            )
    return TaskRefused(why, status_code)


async def _check_claim(session: AsyncSession, task_id: str, agent: Agent, claim_id: str) -> TaskAttempt:
    row = await _locked(session, task_id)
    if row.claimed_by != agent.name:
        # Not this agent's task: refused without a trace, or any key could write to any task's record and feed.
        why = (f"task {task_id} is held by {f'agent {row.claimed_by}' if row.claimed_by else 'no agent'}, not by "
               f"agent {agent.name}: an agent reports only on tasks it claimed")
        await session.rollback()  # releases the row's lock; expires the loaded objects, so read above
        raise TaskRefused(why, 403)
    if row.claim_id != claim_id:
        why = f"agent {agent.name} does not hold the claim on task {task_id}"
        raise await _refuse(session, task_id, agent, why, 403)
    if row.status != "claimed":
        why = f"attempt {row.attempt} of stage '{row.stage}' is {row.status}; a late report is not applied"
        raise await _refuse(session, task_id, agent, why)
    return row


async def _gone(session: AsyncSession, row: TaskAttempt, agent: Agent, exc: RPCError) -> TaskRefused:
    """Temporal no longer knows the activity (it timed out and was retried): the attempt is superseded."""
    if exc.status != RPCStatusCode.NOT_FOUND:
        raise exc
    run = await session.get(Run, row.run_id)
    row.status, row.finished_at = ("cancelled" if run and run.status == "cancelled" else "superseded"), utcnow()
    await session.commit()
    why = f"attempt {row.attempt} of stage '{row.stage}' timed out and was superseded"
    return await _refuse(session, row.id, agent, why)


async def claim(session: AsyncSession, client: Client, task_id: str, agent: Agent) -> TaskDetail:
    row = await _locked(session, task_id)
    if not can_serve(agent.capabilities, row.lane):
        raise TaskRefused(f"agent {agent.name} lacks capabilities for lane {row.lane}", 403)
    if row.status != "queued":
        holder = f" by {row.claimed_by}" if row.claimed_by else ""
        raise TaskRefused(f"task {task_id} is already {row.status}{holder}")
    handle = client.get_async_activity_handle(task_token=row.task_token)
    try:
        await handle.heartbeat({"claimed_by": agent.name})  # the agent's heartbeat clock starts now
    except AsyncActivityCancelledError:
        await handle.report_cancellation()
        row.status, row.finished_at = "cancelled", utcnow()
        await session.commit()
        raise TaskRefused(f"task {task_id} was cancelled") from None
    except RPCError as exc:
        raise await _gone(session, row, agent, exc) from None
    row.status, row.claimed_by, row.claim_id = "claimed", agent.name, uuid.uuid4().hex
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
    github_reporter.stage_claimed(row)  # GitHub hook: check run in progress (background, never raises)
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
    row = await _check_claim(session, task_id, agent, claim_id)
    if (found := reports.encoded_size(details)) > MAX_HEARTBEAT_BYTES:
        await session.rollback()
        raise ReportTooLarge(f"heartbeat details of {found} bytes exceed the limit of {MAX_HEARTBEAT_BYTES} bytes "
                             f"({size(MAX_HEARTBEAT_BYTES)}): Temporal keeps them with the activity")
    try:
        await client.get_async_activity_handle(task_token=row.task_token).heartbeat(details)
    except AsyncActivityCancelledError:
        return HeartbeatReply(cancel_requested=True)
    except RPCError as exc:
        raise await _gone(session, row, agent, exc) from None
    row.heartbeat_at = utcnow()
    await session.commit()
    return HeartbeatReply(cancel_requested=False)


async def complete(session: AsyncSession, client: Client, task_id: str, agent: Agent, req: CompleteRequest) -> None:
    row = await _check_claim(session, task_id, agent, req.claim_id)
    result = req.result.model_copy(update={"attempt": row.attempt, "agent": agent.name,
                                           "cost": to_money(prices().cost_micros(req.result.usage))})
    await _check_size(session, row, result)
    event_id = await reserve_id(session)
    try:
        await client.get_async_activity_handle(task_token=row.task_token).complete(result)
    except RPCError as exc:
        raise await _gone(session, row, agent, exc) from None
    await _finish(session, row, agent, "succeeded", result, None, event_id)
    await session.commit()
    github_reporter.stage_finished(row, result)  # GitHub hook: check run completed (background, never raises)


async def fail(session: AsyncSession, client: Client, task_id: str, agent: Agent, req: FailRequest) -> None:
    row = await _check_claim(session, task_id, agent, req.claim_id)
    report = req.result or StageResult(status="failed", summary=req.message)
    result = report.model_copy(update={"attempt": row.attempt, "agent": agent.name, "status": "failed",
                                       "cost": to_money(prices().cost_micros(report.usage))})
    # A failure without a result is always taken (its message is bounded): the agent can always end the stage.
    await _check_size(session, row, result, req.message, whole_run=req.result is not None)
    error = ApplicationError(req.message, result, type=req.error_type, non_retryable=req.non_retryable)
    event_id = await reserve_id(session)
    try:
        await client.get_async_activity_handle(task_token=row.task_token).fail(error)
    except RPCError as exc:
        raise await _gone(session, row, agent, exc) from None
    await _finish(session, row, agent, "failed", result, f"{req.error_type}: {req.message}", event_id)
    await session.commit()
    github_reporter.stage_finished(row, result, req.error_type, req.message, req.non_retryable)  # GitHub hook


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
    row = await _check_claim(session, task_id, agent, claim_id)
    event_id = await reserve_id(session)
    try:
        await client.get_async_activity_handle(task_token=row.task_token).report_cancellation()
    except RPCError as exc:
        raise await _gone(session, row, agent, exc) from None
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
    row = await _check_claim(session, task_id, agent, claim_id)
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
        raise await _gone(session, row, agent, exc) from None
    row.status, row.claimed_by, row.claim_id, row.claimed_at = "queued", None, None, None
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
    row.status, row.finished_at, row.error = status, utcnow(), error
    row.result = result.model_dump(mode="json") if result else None
    row.cost_micros = prices().cost_micros(result.usage) if result else 0
    metrics.TASKS_REPORTED.labels(row.skill, status).inc()
    _free(session, row, agent)
    if status in ("succeeded", "failed") and row.claimed_at is not None:
        seconds = (row.finished_at - row.claimed_at).total_seconds()
        await agents.record_outcome(session, agent.name, row.skill, status == "succeeded", seconds,
                                    to_money(row.cost_micros))
    kind = {"succeeded": "stage.attempt.succeeded", "failed": "stage.attempt.failed"}.get(status, "stage.cancelled")
    add_event(session, kind, error or (result.summary if result else status), run_id=row.run_id, stage=row.stage,
              agent=row.claimed_by, event_id=event_id, attempt=row.attempt)
