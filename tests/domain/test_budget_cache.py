"""The pipeline worker's budget watch: a stage's budget check is skipped only where it is known that the run's
organisation has no budget, and a budget set or removed is known at once (PostgreSQL's LISTEN on the trigger of
migration 0013); while its connection is down nothing is skipped."""

from __future__ import annotations

import asyncio

import httpx

from devart.core.database import db
from devart.domain.budget_cache import BudgetWatch
from tests.helpers import poll, unique
from tests.stack import Stack, sql


async def test_the_watch_skips_only_organisations_known_to_have_no_budget(stack: Stack, api: httpx.AsyncClient) -> None:
    org = unique("budgetless")
    assert (await api.post("/v1/orgs", json={"id": org})).status_code == 201
    watch, stop = BudgetWatch(), asyncio.Event()
    # Before it has read the budgets, nothing is skipped
    assert not watch.none_for(org)
    url = db.app_database_url().replace("postgresql+psycopg://", "postgresql://", 1)
    task = asyncio.create_task(watch.run(stop, url))
    try:
        # Given the watch running: an organisation with no budget is known to have none (an unknown run, None, never)
        await poll(lambda: _answer(watch.none_for(org)), deadline=30, what="the watch to read the budgets")
        assert not watch.none_for(None)
        # When a budget is set for it, the check is no longer skipped
        name = unique("watched")
        sql("INSERT INTO budgets (scope, name, org_id, soft_micros, updated_at) VALUES ('pipeline', :n, :o, 1, now())",
            n=name, o=org)
        await poll(lambda: _answer(not watch.none_for(org)), deadline=30, what="the watch to see the new budget")
        # And once it is removed, skipped again
        sql("DELETE FROM budgets WHERE name = :n", n=name)
        await poll(lambda: _answer(watch.none_for(org)), deadline=30, what="the watch to see the budget go")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    # Stopped (its connection closed), it skips nothing
    assert not watch.none_for(org)


async def _answer(value: bool) -> bool | None:
    return value or None
