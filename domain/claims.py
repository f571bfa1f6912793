"""Who may act on a task: the claim fence every agent call on a task passes first.

A call locks the attempt's row and goes on only if the caller holds the claim of the *current* attempt. A call on
another agent's task (or one nobody claimed) is refused with nothing written, not even the refusal, so no key can
add late-report counts or feed events to a task not its own; a report on an attempt that is no longer current is
refused, counted on the attempt and written to the feed.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.service import RPCError, RPCStatusCode

from devart.core.database import db
from devart.core.database.models import Agent, Run, TaskAttempt
from devart.core.errors import Conflict, Forbidden, NotFound
from devart.domain.attempt_states import AttemptState, move
from devart.domain.events import add_event


class TaskRefused(Conflict):
    """The task's state does not allow the call (not the current attempt, already finished or taken)."""


class TaskForbidden(Forbidden):
    """The caller may not act on this task at all (another agent's claim, a lane it cannot serve)."""


class TaskNotFound(NotFound):
    """No task with that id."""


async def locked(session: AsyncSession, task_id: str) -> TaskAttempt:
    row = (await session.exec(select(TaskAttempt).where(TaskAttempt.id == task_id).with_for_update())).first()
    if row is None:
        raise TaskNotFound(f"task '{task_id}' not found")
    return row


async def refuse(session: AsyncSession, task_id: str, agent: Agent, why: str,
                 *, forbidden: bool = False) -> TaskRefused | TaskForbidden:
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
    return TaskForbidden(why) if forbidden else TaskRefused(why)


Recorded = Callable[[TaskAttempt], bool]


async def check_claim(session: AsyncSession, task_id: str, agent: Agent, claim_id: str) -> TaskAttempt:
    """The row, locked, if the caller holds the claim of the current attempt; else ``TaskRefused``."""
    row = await check_report(session, task_id, agent, claim_id, lambda _: False)
    assert row is not None  # nothing counts as recorded
    return row


async def check_report(session: AsyncSession, task_id: str, agent: Agent, claim_id: str,
                       recorded: Recorded) -> TaskAttempt | None:
    """``check_claim`` for a report: ``recorded`` tells whether an ended attempt already holds exactly this report,
    and the claim holder asking again after its answer was lost gets None (nothing to do), not a counted refusal.
    """
    row = await locked(session, task_id)
    if row.claimed_by != agent.name:
        # Not this agent's task: refused without a trace, or any key could write to any task's record and feed.
        why = (f"task {task_id} is held by {f'agent {row.claimed_by}' if row.claimed_by else 'no agent'}, not by "
               f"agent {agent.name}: an agent reports only on tasks it claimed")
        await session.rollback()  # releases the row's lock; expires the loaded objects, so read above
        raise TaskForbidden(why)
    if row.claim_id != claim_id:
        why = f"agent {agent.name} does not hold the claim on task {task_id}"
        raise await refuse(session, task_id, agent, why, forbidden=True)
    if row.status != AttemptState.CLAIMED and recorded(row):
        await session.rollback()
        return None
    if row.status != AttemptState.CLAIMED:
        why = f"attempt {row.attempt} of stage '{row.stage}' is {row.status}; a late report is not applied"
        raise await refuse(session, task_id, agent, why)
    return row


async def gone(session: AsyncSession, row: TaskAttempt, agent: Agent, exc: RPCError) -> TaskRefused | TaskForbidden:
    """Temporal no longer knows the activity (it timed out and was retried): the attempt is superseded."""
    if exc.status != RPCStatusCode.NOT_FOUND:
        raise exc
    run = await session.get(Run, row.run_id)
    move(row, AttemptState.CANCELLED if run and run.status == "cancelled" else AttemptState.SUPERSEDED)
    await session.commit()
    why = f"attempt {row.attempt} of stage '{row.stage}' timed out and was superseded"
    return await refuse(session, row.id, agent, why)
