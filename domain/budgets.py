"""Budgets: spending limits per pipeline or repository, checked before every stage is dispatched.

A soft limit raises an alert and pauses the run before its next stage until a supervisor approves the run or
raises the budget; a hard limit stops the run with the reason. Spending is the total cost of every attempt of
every run of that pipeline (or on that repository), so the check sees what the run itself has spent so far.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.contracts import BudgetDecision
from devart.core.database.models import Budget, utcnow
from devart.core.errors import NotFound
from devart.domain.costs import MICROS

Scope = Literal["pipeline", "repository"]


class BudgetNotFound(NotFound):
    """No budget for that pipeline or repository."""


async def spent_micros(session: AsyncSession, scope: Scope, name: str) -> int:
    column = "pipeline" if scope == "pipeline" else "repository"
    row = (await session.execute(text(
        f"SELECT coalesce(sum(a.cost_micros), 0) FROM task_attempts a JOIN runs r ON r.id = a.run_id "
        f"WHERE r.{column} = :name"), {"name": name})).scalar_one()
    return int(row)


async def check(session: AsyncSession, pipeline: str, repository: str) -> BudgetDecision:
    """The strictest verdict over the run's pipeline and repository budgets."""
    budgets = (await session.exec(select(Budget).where(
        ((col(Budget.scope) == "pipeline") & (col(Budget.name) == pipeline))
        | ((col(Budget.scope) == "repository") & (col(Budget.name) == repository))))).all()
    soft: list[str] = []
    for budget in budgets:
        spent = await spent_micros(session, budget.scope, budget.name)  # type: ignore[arg-type]
        what = f"{budget.scope} '{budget.name}' has spent {spent / MICROS:.6f}"
        if budget.hard_micros is not None and spent >= budget.hard_micros:
            return BudgetDecision(state="hard", message=f"{what}, at or over its hard limit of "
                                                        f"{budget.hard_micros / MICROS:.6f}")
        if budget.soft_micros is not None and spent >= budget.soft_micros:
            soft.append(f"{what}, at or over its soft limit of {budget.soft_micros / MICROS:.6f}")
    return BudgetDecision(state="soft", message="; ".join(soft)) if soft else BudgetDecision(state="ok")


async def put(session: AsyncSession, scope: Scope, name: str, soft: float | None, hard: float | None) -> Budget:
    budget = await session.get(Budget, (scope, name)) or Budget(scope=scope, name=name)
    budget.soft_micros = round(soft * MICROS) if soft is not None else None
    budget.hard_micros = round(hard * MICROS) if hard is not None else None
    budget.updated_at = utcnow()
    session.add(budget)
    return budget


async def remove(session: AsyncSession, scope: Scope, name: str) -> None:
    budget = await session.get(Budget, (scope, name))
    if budget is None:
        raise BudgetNotFound(f"no budget for {scope} '{name}'")
    await session.delete(budget)


async def list_budgets(session: AsyncSession) -> list[tuple[Budget, int]]:
    rows = (await session.exec(select(Budget).order_by(col(Budget.scope), col(Budget.name)))).all()
    return [(b, await spent_micros(session, b.scope, b.name)) for b in rows]  # type: ignore[arg-type]
