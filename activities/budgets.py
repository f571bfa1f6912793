"""Budget activity: the check a stage passes before it is dispatched."""

from __future__ import annotations

from temporalio import activity

from core import budgets, db
from core.contracts import BudgetCheck, BudgetDecision
from core.events import add_event


@activity.defn
async def check_budget(inp: BudgetCheck) -> BudgetDecision:
    """ok, soft (alert, then the workflow pauses for approval) or hard (the run stops)."""
    async with db.session() as s:
        decision = await budgets.check(s, inp.pipeline, inp.repository)
        if decision.state != "ok":
            kind = "budget.exceeded" if decision.state == "hard" else "budget.alert"
            add_event(s, kind, decision.message, run_id=inp.run_id, stage=inp.stage, pipeline=inp.pipeline)
    return decision
