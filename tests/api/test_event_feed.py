"""The live feed: a subscriber sees a run's events in order, and resuming with Last-Event-ID loses and repeats none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import noop_stage, publish, start, unique, wait_run
from tests.stack import Stack, sql


async def _read(api: httpx.AsyncClient, run_id: str, last: int, stop_after: int) -> list[dict[str, Any]]:
    """Read ``stop_after`` events of the run from the stream, then hang up."""
    seen: list[dict[str, Any]] = []
    async with api.stream("GET", "/v1/events/stream", params={"run_id": run_id},
                          headers={"Last-Event-ID": str(last)}, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == stop_after:
                    break
    return seen


async def test_stream_in_order_and_resume_without_gaps(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    cap = unique("feed")
    stack.start_agent(unique("agent"), [cap])
    name = unique("feed")
    await publish(api, {"name": name, "stages": [noop_stage("a", cap), {**noop_stage("b", cap), "depends_on": ["a"]}]})
    run_id = await start(api, name, tmp_path)
    first = await _read(api, run_id, 0, stop_after=3)  # disconnect early, mid-run
    run = await wait_run(api, run_id)
    assert run["status"] == "succeeded"
    expected = sql("SELECT id, kind FROM events WHERE run_id = :r ORDER BY id", r=run_id)
    rest = await _read(api, run_id, first[-1]["id"], stop_after=len(expected) - 3)
    got = [(e["id"], e["kind"]) for e in first + rest]
    assert got == [(e["id"], e["kind"]) for e in expected]
    kinds = [k for _, k in got]
    assert kinds[0] == "run.requested" and kinds[-1] == "run.finished"
    assert kinds.index("stage.attempt.succeeded") < kinds.index("run.finished")
