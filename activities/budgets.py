"""Budget activity: the check a stage passes before it is dispatched."""

from __future__ import annotations

from sqlalchemy.exc import DataError, ProgrammingError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from devart.core.contracts import BudgetCheck, BudgetDecision
from devart.core.database import db
from devart.domain import budgets
from devart.domain.events import add_event


@activity.defn
async def check_budget(inp: BudgetCheck) -> BudgetDecision:
    """ok, soft (alert, then the workflow pauses for approval) or hard (the run stops).

    A query PostgreSQL refuses (a missing table or column: a worker ahead of its migration) fails the stage at
    once; a connection problem is retried like any other step.
    """
    async with db.session() as s:
        try:
            decision = await budgets.check(s, inp.pipeline, inp.repository)
        except (ProgrammingError, DataError) as exc:
            reason = str(exc.orig or exc).splitlines()[0]
            raise ApplicationError(f"the budget check failed: {reason}", type="BudgetCheckFailed",
                                   non_retryable=True) from exc
        if decision.state != "ok":
            kind = "budget.exceeded" if decision.state == "hard" else "budget.alert"
            add_event(s, kind, decision.message, run_id=inp.run_id, stage=inp.stage, pipeline=inp.pipeline)
    return decision
