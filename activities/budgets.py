"""Budget activity: the check a stage passes before it is dispatched."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DataError, ProgrammingError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from devart.core.contracts import BudgetCheck, BudgetDecision
from devart.core.database import db, tenancy
from devart.domain import budgets
from devart.domain.budget_cache import WATCH
from devart.domain.events import add_event

_ORG = text("SELECT org_id FROM runs WHERE id = :run_id")


@activity.defn
async def check_budget(inp: BudgetCheck) -> BudgetDecision:
    """ok, soft (alert, then the workflow pauses for approval) or hard (the run stops).

    A query PostgreSQL refuses (a missing table or column: a worker ahead of its migration) fails the stage at
    once; a connection problem is retried like any other step. Where the run's organisation is known to have no
    budget (``domain.budget_cache``), nothing is read: the stage goes on.
    """
    if WATCH.none_for(inp.org):
        return BudgetDecision(state="ok")
    async with db.session() as s:
        # Engine 9 names the run's organisation; older runs' is read from their row.
        org = inp.org or (await s.execute(_ORG, {"run_id": inp.run_id})).scalar_one_or_none()
        if org is not None:  # the run's organisation's budgets and spending, not every organisation's
            await tenancy.switch(s, tenancy.service_in(org))
        # An agent's report, with its cost, is recorded before Temporal hears of it (``domain.tasks``): the
        # spending includes the stage that just ended.
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
