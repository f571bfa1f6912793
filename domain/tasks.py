"""The agent side of a task: claim, heartbeat, complete, fail, report cancellation.

Each call first passes the claim fence (``domain.claims``: the caller holds the claim of the *current* attempt,
a plain read), and no transaction, row lock or pooled connection is held while Temporal answers:

* **claim**: the activity is heartbeated by its token first (so a cancelled or superseded attempt is refused
  before any work starts), then the attempt is claimed with a compare-and-set from ``queued``: of two agents, one
  wins, the other is refused.
* **complete / fail / cancelled**: the report is measured as Temporal encodes it (``core.reports``; one Temporal
  would refuse is a 413 with nothing stored, and the task stays claimed), then *recorded* (the attempt becomes
  ``reporting`` with its result, error and cost, a compare-and-set from ``claimed`` with this claim), then sent to
  Temporal, then settled (``domain.settle``). A report Temporal refuses as unknown ends the attempt superseded and
  is counted as a late report.

A report the agent sends again because its answer was lost is answered as the first time: while the attempt is
``reporting`` it is sent to Temporal again; once settled, there is nothing to do. Temporal answering NOT_FOUND to a
report it already applied (the API stopped between its call and the settle) is checked against the run's history
(``domain.applied``) before the attempt is called superseded.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text, update
from sqlmodel import col
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
from devart.domain import applied
from devart.domain.attempt_states import AttemptState

# TaskNotFound and TaskRefused stay importable from here, where api.errors maps them to HTTP answers.
from devart.domain.claims import TaskForbidden, TaskRefused, check_claim, check_report, gone, read, refuse
from devart.domain.costs import prices, to_money
from devart.domain.events import add_event
from devart.domain.settle import settle


class ReportTooLarge(TooLarge):
    """A report past a size limit; nothing was stored and the task is still claimed."""


async def claim(session: AsyncSession, client: Client, task_id: str, agent: Agent,
                wanted: str | None = None) -> TaskDetail:
    """Claim the attempt for ``agent`` (as claim ``wanted``, if it names one)."""
    row = await read(session, task_id)
    if not can_serve(agent.capabilities, row.lane):
        raise TaskForbidden(f"agent {agent.name} lacks capabilities for lane {row.lane}")
    if wanted and row.status == AttemptState.CLAIMED and row.claimed_by == agent.name and row.claim_id == wanted:
        await session.commit()
        return _detail(row, wanted)  # asked again after the answer was lost: the claim stands
    if row.status != AttemptState.QUEUED:
        holder = f" by {row.claimed_by}" if row.claimed_by else ""
        raise TaskRefused(f"task {task_id} is already {row.status}{holder}")
    await session.commit()  # nothing stays open while Temporal answers
    handle = client.get_async_activity_handle(task_token=row.task_token)
    try:
        await handle.heartbeat({"claimed_by": agent.name})  # the agent's heartbeat clock starts now
    except AsyncActivityCancelledError:
        await handle.report_cancellation()
        await _end_queued(session, task_id, AttemptState.CANCELLED)
        raise TaskRefused(f"task {task_id} was cancelled") from None
    except RPCError as exc:
        raise await gone(session, row, agent, exc) from None
    claim_id = wanted or uuid.uuid4().hex
    won = (await session.execute(_CLAIM, {"id": task_id, "agent": agent.name, "claim": claim_id,
                                          "now": utcnow()})).first()
    if won is None:  # another agent's claim (or the queue keeper's verdict) came first
        await session.rollback()
        taken = await read(session, task_id)
        holder = f" by {taken.claimed_by}" if taken.claimed_by else ""
        raise TaskRefused(f"task {task_id} is already {taken.status}{holder}")
    await session.commit()
    return _detail(row, claim_id)


#: The claim in one statement: a compare-and-set from ``queued``, and only if it won, the agent marked busy with
#: this task and ``stage.attempt.started`` added to the feed (one round trip instead of three and a flush).
_CLAIM = text(
    "WITH won AS (UPDATE task_attempts SET status = 'claimed', claimed_by = :agent, claim_id = :claim, "
    "claimed_at = :now, heartbeat_at = :now, waiting_reason = NULL WHERE id = :id AND status = 'queued' "
    "RETURNING run_id, stage, attempt), "
    "busy AS (UPDATE agents SET status = 'busy', current_task = :id WHERE name = :agent AND EXISTS (SELECT FROM won)) "
    "INSERT INTO events (kind, message, run_id, stage, agent, data, created_at) "
    "SELECT 'stage.attempt.started', 'attempt ' || attempt || ' claimed by ' || :agent, run_id, stage, :agent, "
    "json_build_object('attempt', attempt), :now FROM won RETURNING run_id")


def _detail(row: TaskAttempt, claim_id: str) -> TaskDetail:
    return TaskDetail(
        **AgentTaskInput.model_validate(row.input).model_dump(),
        task_id=row.id,
        attempt=row.attempt,
        claim_id=claim_id,
        heartbeat_interval=settings.agent().heartbeat_interval,
    )


async def _end_queued(session: AsyncSession, task_id: str, state: AttemptState) -> None:
    await session.execute(update(TaskAttempt)
                          .where(col(TaskAttempt.id) == task_id, col(TaskAttempt.status) == AttemptState.QUEUED)
                          .values(status=state.value, finished_at=utcnow()))
    await session.commit()


async def heartbeat(
    session: AsyncSession, client: Client, task_id: str, agent: Agent, claim_id: str, details: dict[str, Any]
) -> HeartbeatReply:
    row = await check_claim(session, task_id, agent, claim_id)
    if (found := reports.encoded_size(details)) > MAX_HEARTBEAT_BYTES:
        await session.rollback()
        raise ReportTooLarge(f"heartbeat details of {found} bytes exceed the limit of {MAX_HEARTBEAT_BYTES} bytes "
                             f"({size(MAX_HEARTBEAT_BYTES)}): Temporal keeps them with the activity")
    await session.commit()  # nothing stays open while Temporal answers
    try:
        await client.get_async_activity_handle(task_token=row.task_token).heartbeat(details)
    except AsyncActivityCancelledError:
        return HeartbeatReply(cancel_requested=True)
    except RPCError as exc:
        raise await gone(session, row, agent, exc) from None
    await session.execute(_BEAT, {"id": task_id, "claim": claim_id})
    await session.commit()
    return HeartbeatReply(cancel_requested=False)


_BEAT = text("UPDATE task_attempts SET heartbeat_at = now() "
             "WHERE id = :id AND claim_id = :claim AND status = 'claimed'")


def _stamped(row: TaskAttempt, agent: Agent, report: StageResult, **update: Any) -> StageResult:
    """The report as the API forwards and records it: with its attempt, agent, cost and the remedies its task had
    (so they stand in the run's record and in the workflow's history)."""
    remedies = [AppliedRemedy.model_validate(r) for r in (row.input or {}).get("remedies") or []]
    return report.model_copy(update={"attempt": row.attempt, "agent": agent.name,
                                     "cost": to_money(prices().cost_micros(report.usage)), "remedies": remedies,
                                     **update})


def _holds(row: TaskAttempt, status: str, result: StageResult | None, error: str | None) -> bool:
    """Whether the attempt already holds this report, recorded (``reporting``) or settled."""
    ended = row.reported if row.status == AttemptState.REPORTING else row.status
    return (ended == status and row.error == error
            and row.result == (result.model_dump(mode="json") if result is not None else None))


async def complete(session: AsyncSession, client: Client, task_id: str, agent: Agent, req: CompleteRequest) -> None:
    """Complete the attempt with the agent's result; a repeat of the recorded result is answered as done."""
    spent = prices().cost_micros(req.result.usage)
    row = await check_report(session, task_id, agent, req.claim_id,
                             lambda r: _holds(r, "succeeded", _stamped(r, agent, req.result), None), spent)
    if row is None:
        return
    result = _stamped(row, agent, req.result)
    if row.status == AttemptState.CLAIMED:
        await _check_size(session, row, result)
        await _record(session, row, agent, "succeeded", result, None, spent)
    await session.commit()
    handle = client.get_async_activity_handle(task_token=row.task_token)
    await _tell_temporal(session, row, agent, lambda: handle.complete(result),
                         lambda: applied.completed(client, row, result))
    await settle(session, [row.id])
    await session.commit()


async def fail(session: AsyncSession, client: Client, task_id: str, agent: Agent, req: FailRequest) -> None:
    """Fail the attempt with the agent's error; a repeat of the recorded failure is answered as done."""
    report = req.result or StageResult(status="failed", summary=req.message)
    error = f"{req.error_type}: {req.message}"
    spent = prices().cost_micros(report.usage)
    row = await check_report(session, task_id, agent, req.claim_id,
                             lambda r: _holds(r, "failed", _stamped(r, agent, report, status="failed"), error), spent)
    if row is None:
        return
    result = _stamped(row, agent, report, status="failed")
    if row.status == AttemptState.CLAIMED:
        # A failure without a result is always taken (its message is bounded): the agent can always end the stage.
        await _check_size(session, row, result, req.message, whole_run=req.result is not None)
        await _record(session, row, agent, "failed", result, error, spent)
    await session.commit()
    failure = ApplicationError(req.message, result, type=req.error_type, non_retryable=req.non_retryable)
    handle = client.get_async_activity_handle(task_token=row.task_token)
    await _tell_temporal(session, row, agent, lambda: handle.fail(failure),
                         lambda: applied.failed(client, row, failure))
    await settle(session, [row.id])
    await session.commit()


async def _record(session: AsyncSession, row: TaskAttempt, agent: Agent, status: str, result: StageResult | None,
                  error: str | None, spent: int = 0) -> None:
    """Write the report (the attempt becomes ``reporting``) if this claim still holds the attempt; else refused."""
    won = (await session.execute(
        update(TaskAttempt)
        .where(col(TaskAttempt.id) == row.id, col(TaskAttempt.claim_id) == row.claim_id,
               col(TaskAttempt.status) == AttemptState.CLAIMED)
        .values(status=AttemptState.REPORTING.value, reported=status, error=error,
                result=result.model_dump(mode="json") if result is not None else None,
                cost_micros=spent)
        .returning(col(TaskAttempt.id)))).first()
    if won is None:  # a concurrent call of the same claim came first, or the attempt ended meanwhile
        now = await read(session, row.id)
        raise await check_report_lost(session, now, agent, spent)


async def check_report_lost(session: AsyncSession, row: TaskAttempt, agent: Agent,
                            spent: int = 0) -> TaskRefused | TaskForbidden:
    """The refusal for a report whose attempt moved on between the fence and the write (keeping its cost ``spent``
    where the attempt ended without one, see ``claims.refuse``)."""
    why = f"attempt {row.attempt} of stage '{row.stage}' is {row.status}; a late report is not applied"
    return await refuse(session, row.id, agent, why, spent=spent)


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
            "AND (status IN ('succeeded', 'failed') OR (status = 'reporting' AND reported IN ('succeeded', 'failed'))) "
            "ORDER BY stage, attempt DESC) latest"),
            {"run": row.run_id, "stage": row.stage})).scalar_one()
        problem = reports.run_problem(found, int(others), row.run_id)
    if problem is not None:
        await session.rollback()
        raise ReportTooLarge(problem)


async def cancelled(session: AsyncSession, client: Client, task_id: str, agent: Agent, claim_id: str) -> None:
    """The agent stopped the task as its run asked: recorded, told to Temporal, settled (as ``complete``)."""
    row = await check_report(session, task_id, agent, claim_id, lambda r: _holds(r, "cancelled", None, "cancelled"))
    if row is None:
        return
    if row.status == AttemptState.CLAIMED:
        await _record(session, row, agent, "cancelled", None, "cancelled")
    await session.commit()
    try:
        await client.get_async_activity_handle(task_token=row.task_token).report_cancellation()
    except RPCError as exc:
        raise await gone(session, row, agent, exc) from None
    await settle(session, [row.id])
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
    await session.commit()  # nothing stays open while Temporal answers
    handle = client.get_async_activity_handle(task_token=row.task_token)
    try:
        await handle.heartbeat({"released_by": agent.name})
    except AsyncActivityCancelledError:  # the run was cancelled meanwhile: nothing to hand over
        await handle.report_cancellation()
        await _record(session, row, agent, "cancelled", None, "cancelled")
        await settle(session, [row.id])
        await session.commit()
        return
    except RPCError as exc:
        raise await gone(session, row, agent, exc) from None
    handed = (await session.execute(
        update(TaskAttempt)
        .where(col(TaskAttempt.id) == row.id, col(TaskAttempt.claim_id) == claim_id,
               col(TaskAttempt.status) == AttemptState.CLAIMED)
        .values(status=AttemptState.QUEUED.value, claimed_by=None, claim_id=None, claimed_at=None,
                heartbeat_at=utcnow(), waiting_reason=None)  # handed back: the same Temporal attempt, for another
        .returning(col(TaskAttempt.id)))).first()
    if handed is None:
        raise await check_report_lost(session, await read(session, row.id), agent)
    if agent.current_task == row.id:
        agent.current_task = None
        agent.status = "idle" if agent.status == "busy" else agent.status
        session.add(agent)
    metrics.TASKS_REPORTED.labels(row.skill, "released").inc()
    add_event(session, "stage.attempt.released", f"handed back by agent {agent.name}: {reason}", run_id=row.run_id,
              stage=row.stage, agent=agent.name, attempt=row.attempt)
    await session.commit()
