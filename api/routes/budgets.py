"""Budgets per pipeline or repository, and cost totals (administrator)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from devart.api.auth import access
from devart.api.deps import SessionDep
from devart.api.schemas import BudgetPut, BudgetView
from devart.core.bounds import MAX_KEY_CHARS, MAX_NAME_CHARS
from devart.domain import budgets
from devart.domain.costs import to_money
from devart.domain.costs import totals as costs_of
from devart.domain.identity import Role

router = APIRouter(prefix="/v1", tags=["budgets and costs (admin)"])

BudgetName = Annotated[str, Path(min_length=1, max_length=MAX_KEY_CHARS,
                                 description="The pipeline's name or the repository's path or URL.")]


def _view(b: object, spent: int) -> BudgetView:
    soft, hard = getattr(b, "soft_micros"), getattr(b, "hard_micros")  # noqa: B009
    return BudgetView(scope=getattr(b, "scope"), name=getattr(b, "name"),  # noqa: B009
                      soft_limit=to_money(soft) if soft is not None else None,
                      hard_limit=to_money(hard) if hard is not None else None, spent=to_money(spent))


@router.get("/budgets", response_model=list[BudgetView], **access(Role.VIEWER))
async def list_budgets(session: SessionDep) -> list[BudgetView]:
    return [_view(b, spent) for b, spent in await budgets.list_budgets(session)]


@router.put("/budgets/{scope}/{name:path}", response_model=BudgetView, **access(Role.SUPERVISOR))
async def put_budget(scope: Literal["pipeline", "repository"], name: BudgetName, body: BudgetPut,
                     session: SessionDep) -> BudgetView:
    """Set (or raise) a budget; paused runs notice a raised budget on their next check."""
    budget = await budgets.put(session, scope, name, body.soft_limit, body.hard_limit)
    await session.commit()
    return _view(budget, await budgets.spent_micros(session, scope, name))


@router.delete("/budgets/{scope}/{name:path}", status_code=204, **access(Role.SUPERVISOR))
async def delete_budget(scope: Literal["pipeline", "repository"], name: BudgetName, session: SessionDep) -> None:
    await budgets.remove(session, scope, name)
    await session.commit()


@router.get("/costs", **access(Role.VIEWER))
async def costs(session: SessionDep, group: Literal["pipeline", "repository", "run", "stage"] = "pipeline",
                run_id: str | None = Query(default=None, max_length=MAX_NAME_CHARS)) -> list[dict[str, object]]:
    """Cost totals grouped by pipeline, repository, run or stage (of one run with run_id)."""
    return await costs_of(session, group, run_id)
