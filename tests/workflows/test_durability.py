"""Runs survive the pipeline worker being killed and the Temporal dev server restarting (same db file)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers import noop_stage, publish, start, unique, wait_run, wait_stage
from tests.stack import Stack


async def _two_stage_run(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> str:
    cap = unique("durable")
    stack.start_agent(unique("agent"), [cap])
    name = unique("durable")
    first = {**noop_stage("first", cap, sleep=4), "heartbeat_timeout": 20}
    second = {**noop_stage("second", cap), "depends_on": ["first"], "heartbeat_timeout": 20}
    await publish(api, {"name": name, "stages": [first, second]})
    run_id = await start(api, name, tmp_path)
    await wait_stage(api, run_id, "first", "running")
    return run_id


async def test_worker_killed_and_restarted_mid_run(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    run_id = await _two_stage_run(api, stack, tmp_path)
    stack.restart_worker(kill=True)
    run = await wait_run(api, run_id, deadline=120)
    assert run["status"] == "succeeded", run
    assert [s["status"] for s in run["stages"]] == ["succeeded", "succeeded"]


async def test_temporal_restarted_mid_run(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    run_id = await _two_stage_run(api, stack, tmp_path)
    stack.restart_temporal()
    run = await wait_run(api, run_id, deadline=120)
    assert run["status"] == "succeeded", run
    assert [s["status"] for s in run["stages"]] == ["succeeded", "succeeded"]
