"""Independent stages run at the same time; a dependent stage waits for all it depends on."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers import noop_stage, publish, start, unique, wait_run
from tests.stack import Stack, sql


async def test_independent_stages_overlap(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    cap = unique("par")
    for _ in range(2):
        stack.start_agent(unique("agent"), [cap])
    name = unique("dag")
    stages = [noop_stage("left", cap, sleep=2), noop_stage("right", cap, sleep=2),
              {**noop_stage("join", cap), "depends_on": ["left", "right"]}]
    await publish(api, {"name": name, "stages": stages})
    run = await wait_run(api, await start(api, name, tmp_path))
    assert run["status"] == "succeeded", run
    spans = {r["stage"]: r for r in sql(
        "SELECT stage, claimed_at, finished_at, claimed_by FROM task_attempts WHERE run_id = :r", r=run["run_id"])}
    left, right, join = spans["left"], spans["right"], spans["join"]
    assert left["claimed_at"] < right["finished_at"] and right["claimed_at"] < left["finished_at"], spans
    assert left["claimed_by"] != right["claimed_by"]
    assert join["claimed_at"] >= max(left["finished_at"], right["finished_at"])
