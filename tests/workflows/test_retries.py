"""Temporal owns retries: a transient failure is retried with the template's backoff; a non-retryable one is not."""

from __future__ import annotations

from pathlib import Path

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from tests.helpers import noop_stage, publish, start, unique, wait_run
from tests.stack import Stack, sql


async def _agent_task_events(temporal: Client, run_id: str) -> list:
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    return [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]


async def test_transient_failure_is_retried_with_backoff(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    # Given a stage whose skill fails on attempt 1 only, and a 1 s initial retry interval
    cap = unique("flaky")
    stack.start_agent(unique("agent"), [cap])
    name = unique("retry")
    await publish(api, {"name": name, "stages": [noop_stage("flaky", cap, fail_attempts=1)]})
    # When it runs
    run = await wait_run(api, await start(api, name, tmp_path))
    # Then attempt 2 succeeds, and both attempts are visible with the backoff between them
    assert run["status"] == "succeeded", run
    stage = run["stages"][0]
    assert stage["attempts"] == 2 and stage["result"]["attempt"] == 2
    assert [a["status"] for a in stage["attempt_log"]] == ["failed", "succeeded"]
    rows = sql("SELECT attempt, created_at, finished_at FROM task_attempts WHERE run_id = :r ORDER BY attempt",
               r=run["run_id"])
    gap = (rows[1]["created_at"] - rows[0]["finished_at"]).total_seconds()
    assert gap >= 0.9, f"retry came {gap:.2f}s after the failure; the policy asks for 1 s"
    started = [e for e in await _agent_task_events(temporal, run["run_id"])
               if e.activity_task_started_event_attributes.attempt == 2]
    assert len(started) == 1
    last_failure = started[0].activity_task_started_event_attributes.last_failure
    assert "transient failure injected on attempt 1" in last_failure.message


async def test_non_retryable_failure_stops_at_once(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    cap = unique("fatal")
    stack.start_agent(unique("agent"), [cap])
    name = unique("fatal")
    stages = [noop_stage("doomed", cap, fail_attempts=5, fail_type="BadConfig", non_retryable=True),
              {**noop_stage("after", cap), "depends_on": ["doomed"]}]
    await publish(api, {"name": name, "stages": stages})
    run = await wait_run(api, await start(api, name, tmp_path))
    assert run["status"] == "failed"
    doomed, after = run["stages"]
    assert doomed["status"] == "failed" and len(doomed["attempt_log"]) == 1
    assert "BadConfig" in doomed["error"]
    assert after["status"] == "skipped" and "doomed" in after["error"]
    assert "stage 'doomed' failed" in run["error"]
