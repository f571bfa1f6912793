"""Costs add up exactly; a soft budget pauses a run before its next stage until approved; a hard one stops it."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers import noop_stage, poll, publish, start, unique, wait_run
from tests.stack import Stack, admin

#: The suite's price table: 2.0 per 1,000 tokens of test-model, 0.5 per 1,000 of any other model.
TOKENS = {"test-model": 1500, "other": 200}
STAGE_COST = 1500 * 2.0 / 1000 + 200 * 0.5 / 1000  # 3.1


async def _pipeline(api: httpx.AsyncClient, stack: Stack) -> str:
    cap, name = unique("budget"), unique("budget")
    stack.start_agent(unique("agent"), [cap])
    await publish(api, {"name": name, "stages": [
        noop_stage("first", cap, report_tokens=TOKENS),
        {**noop_stage("second", cap, report_tokens=TOKENS), "depends_on": ["first"]},
    ]})
    return name


async def test_costs_add_up_exactly(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    name = await _pipeline(api, stack)
    runs = [await wait_run(api, await start(api, name, tmp_path)) for _ in range(2)]
    assert all(r["status"] == "succeeded" for r in runs)
    for run in runs:
        assert [s["cost"] for s in run["stages"]] == [STAGE_COST, STAGE_COST]
        assert run["cost"] == sum(s["cost"] for s in run["stages"]) == 2 * STAGE_COST
        assert [s["result"]["cost"] for s in run["stages"]] == [STAGE_COST, STAGE_COST]
    by_pipeline = {r["key"]: r for r in (await api.get("/v1/costs", headers=admin(stack))).json()}
    assert by_pipeline[name]["micros"] == 4 * 3_100_000 and by_pipeline[name]["runs"] == 2
    by_stage = (await api.get("/v1/costs", params={"group": "stage", "run_id": runs[0]["run_id"]},
                              headers=admin(stack))).json()
    assert [(r["key"], r["micros"]) for r in by_stage] == [("first", 3_100_000), ("second", 3_100_000)]


async def test_soft_budget_pauses_until_approved(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    name = await _pipeline(api, stack)
    r = await api.put(f"/v1/budgets/pipeline/{name}", json={"soft_limit": 1.0}, headers=admin(stack))
    assert r.status_code == 200
    run_id = await start(api, name, tmp_path)

    async def paused() -> dict | None:
        body = (await api.get(f"/v1/runs/{run_id}")).json()
        return body if body["stages"][1]["status"] == "awaiting_approval" else None

    body = await poll(paused, deadline=60, what="the run to pause before its second stage")
    assert body["stages"][0]["status"] == "succeeded" and "soft limit" in body["stages"][1]["error"]
    assert body["stages"][1]["attempt_log"] == []  # never dispatched over budget
    assert (await api.post(f"/v1/runs/{run_id}/approve", headers=admin(stack))).status_code == 202
    run = await wait_run(api, run_id)
    assert run["status"] == "succeeded" and run["cost"] == 2 * STAGE_COST


async def test_hard_budget_stops_the_run(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    name = await _pipeline(api, stack)
    await api.put(f"/v1/budgets/pipeline/{name}", json={"hard_limit": 3.0}, headers=admin(stack))
    run = await wait_run(api, await start(api, name, tmp_path))
    assert run["status"] == "failed"
    first, second = run["stages"]
    assert first["status"] == "succeeded" and second["status"] == "failed" and second["attempt_log"] == []
    assert "budget exceeded" in second["error"] and "hard limit of 3.000000" in second["error"]
    assert "budget exceeded" in run["error"]
    listed = {(b["scope"], b["name"]): b for b in (await api.get("/v1/budgets", headers=admin(stack))).json()}
    assert listed[("pipeline", name)]["spent"] == STAGE_COST
