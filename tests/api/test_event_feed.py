"""The live feed: a subscriber sees a run's events in order, and resuming with Last-Event-ID loses and repeats none."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import noop_stage, publish, start, unique, wait_run
from tests.stack import Stack, sql

#: Longest wait for the events a read expects (the stream itself never ends).
DEADLINE = 60.0


async def _read(api: httpx.AsyncClient, run_id: str, last: int, done: Callable[[list[dict[str, Any]]], bool],
                ) -> list[dict[str, Any]]:
    """Read the run's events from the stream after event ``last`` until ``done`` says so, then hang up."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE), api.stream(
            "GET", "/v1/events/stream", params={"run_id": run_id}, headers={"Last-Event-ID": str(last)}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if done(seen):
                    break
    return seen


async def test_stream_in_order_and_resume_without_gaps(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    cap = unique("feed")
    stack.start_agent(unique("agent"), [cap])
    name = unique("feed")
    await publish(api, {"name": name, "stages": [noop_stage("a", cap), {**noop_stage("b", cap), "depends_on": ["a"]}]})
    run_id = await start(api, name, tmp_path)
    first = await _read(api, run_id, 0, lambda seen: len(seen) == 3)  # disconnect early, mid-run
    run = await wait_run(api, run_id)
    assert run["status"] == "succeeded", (run.get("error"), [(s["name"], s.get("error")) for s in run["stages"]])
    # The last stage's report may commit after the run's end (it waits for Temporal): the feed waits for it
    rest = await _read(api, run_id, first[-1]["id"], lambda seen: seen[-1]["kind"] == "run.finished")
    got = [(e["id"], e["kind"]) for e in first + rest]
    # Every id up to the run's end is settled once the feed handed the end out: the table holds the same events
    expected = sql("SELECT id, kind FROM events WHERE run_id = :r AND id <= :end ORDER BY id", r=run_id, end=got[-1][0])
    assert got == [(e["id"], e["kind"]) for e in expected]
    assert got[0][1] == "run.requested"
    finished = [e["stage"] for e in first + rest if e["kind"] == "stage.attempt.succeeded"]
    assert finished == ["a", "b"], f"both stages' outcomes come before the run's end: {got}"
