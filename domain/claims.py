"""Who may act on a task: the claim fence every agent call on a task passes first.

A call goes on only if the caller holds the claim of the *current* attempt. The fence is a plain read, never a row
lock: no transaction stays open while Temporal answers (``domain.tasks``), and every write that follows is a
compare-and-set on the attempt's state and claim, so of two concurrent calls only one changes anything. A call on
another agent's task (or one nobody claimed) is refused with nothing written, not even the refusal, so no key can
add late-report counts or feed events to a task not its own; a report on an attempt that is no longer current is
refused, counted on the attempt and written to the feed.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.service import RPCError, RPCStatusCode

from devart.core.database import db
from devart.core.database.models import Agent, TaskAttempt
from devart.core.errors import Conflict, Forbidden, NotFound
from devart.domain.attempt_states import ENDED, AttemptState, movable_from
from devart.domain.events import add_event


class TaskRefused(Conflict):
    """The task's state does not allow the call (not the current attempt, already finished or taken)."""


class TaskForbidden(Forbidden):
    """The caller may not act on this task at all (another agent's claim, a lane it cannot serve)."""


class TaskNotFound(NotFound):
    """No task with that id."""


async def read(session: AsyncSession, task_id: str) -> TaskAttempt:
    """The attempt as committed now (never a copy the session loaded earlier), without locking it."""
    found = await session.exec(
        select(TaskAttempt).where(TaskAttempt.id == task_id).execution_options(populate_existing=True))
    row = found.first()
    if row is None:
        raise TaskNotFound(f"task '{task_id}' not found")
    return row


async def refuse(session: AsyncSession, task_id: str, agent: Agent, why: str, *, forbidden: bool = False,
                 close: AttemptState | None = None, spent: int = 0) -> TaskRefused | TaskForbidden:
    """Record a refused report in its own transaction and build the error; ``close`` also ends the attempt in that
    state if it is still open (Temporal no longer knows its activity).

    ``spent``: the cost (micro-units) of the refused report of the attempt's claim holder. Its result is not applied,
    but its agent did the work and the model calls were paid for, so an attempt that ended without a report of its
    own (timed out, superseded, cancelled) keeps that cost: the run's cost and its organisation's budgets count it.
    Counted once: an attempt that already holds a cost is left as it is.
    """
    name = agent.name  # read before the rollback expires every loaded object
    await session.rollback()
    params = {"id": task_id, "close": close.value if close is not None else None, "spent": spent,
              "movable": movable_from(close) if close is not None else [], "ended": _ENDED}
    async with db.session() as s:
        row = (await s.execute(_REFUSED, params)).first()
        if row is not None:
            add_event(s, "task.report_refused", why, run_id=row.run_id, stage=row.stage, agent=name,
                      attempt=row.attempt)
    return TaskForbidden(why) if forbidden else TaskRefused(why)


_ENDED = sorted(state.value for state in ENDED)
#: A refusal's write in one statement, so that concurrent refusals all count: the attempt closed as ``close`` if it
#: is still open, its late reports counted, and the refused report's cost kept where the attempt ends without one.
_REFUSED = text(
    "UPDATE task_attempts SET "
    "status = CASE WHEN status = ANY(:movable) THEN CAST(:close AS varchar) ELSE status END, "
    "finished_at = CASE WHEN status = ANY(:movable) THEN now() ELSE finished_at END, "
    "late_reports = late_reports + 1, "
    "cost_micros = CASE WHEN :spent > 0 AND reported IS NULL AND cost_micros = 0 "
    "AND (status = ANY(:ended) OR status = ANY(:movable)) THEN :spent ELSE cost_micros END "
    "WHERE id = :id RETURNING run_id, stage, attempt")

#: Whether an attempt already holds exactly the report being made (its answer was lost and it is sent again).
Recorded = Callable[[TaskAttempt], bool]


async def check_claim(session: AsyncSession, task_id: str, agent: Agent, claim_id: str) -> TaskAttempt:
    """The row if the caller holds the claim of the current attempt, still running; else refused."""
    row = await check_report(session, task_id, agent, claim_id, lambda _: False)
    assert row is not None  # nothing counts as recorded
    return row


async def check_report(session: AsyncSession, task_id: str, agent: Agent, claim_id: str,
                       recorded: Recorded, spent: int = 0) -> TaskAttempt | None:
    """``check_claim`` for a report. When ``recorded`` says the attempt already holds this very report, the claim
    holder asking again gets None if the attempt ended with it (nothing to do), or the row if it is still
    ``reporting`` (Temporal may not have it yet: the caller sends it again); any other report is refused (a late
    one keeps its cost ``spent``, see ``refuse``)."""
    row = await read(session, task_id)
    if row.claimed_by != agent.name:
        # Not this agent's task: refused without a trace, or any key could write to any task's record and feed.
        why = (f"task {task_id} is held by {f'agent {row.claimed_by}' if row.claimed_by else 'no agent'}, not by "
               f"agent {agent.name}: an agent reports only on tasks it claimed")
        await session.rollback()
        raise TaskForbidden(why)
    if row.claim_id != claim_id:
        why = f"agent {agent.name} does not hold the claim on task {task_id}"
        raise await refuse(session, task_id, agent, why, forbidden=True)
    if row.status != AttemptState.CLAIMED and recorded(row):
        if row.status == AttemptState.REPORTING:
            return row
        await session.rollback()
        return None
    if row.status == AttemptState.REPORTING:
        why = f"attempt {row.attempt} of stage '{row.stage}' is already being reported as {row.reported}"
        raise await refuse(session, task_id, agent, why)
    if row.status != AttemptState.CLAIMED:
        why = f"attempt {row.attempt} of stage '{row.stage}' is {row.status}; a late report is not applied"
        raise await refuse(session, task_id, agent, why, spent=spent)
    return row


_RUN_STATUS = text("SELECT status FROM runs WHERE id = :id")


async def gone(session: AsyncSession, row: TaskAttempt, agent: Agent, exc: RPCError) -> TaskRefused | TaskForbidden:
    """Temporal no longer knows the activity (it timed out and was retried, or its run ended): the attempt is over,
    superseded (cancelled if its run was). Any other error from Temporal is raised as it is."""
    if exc.status != RPCStatusCode.NOT_FOUND:
        raise exc
    run_status = (await session.execute(_RUN_STATUS, {"id": row.run_id})).scalar_one_or_none()
    close = AttemptState.CANCELLED if run_status == "cancelled" else AttemptState.SUPERSEDED
    why = f"attempt {row.attempt} of stage '{row.stage}' timed out and was superseded"
    return await refuse(session, row.id, agent, why, close=close)
