"""A report Temporal applied but the API never recorded, sent again: answered as the first time, recorded once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from devart.core.contracts import StageResult, Usage
from devart.domain.costs import prices, to_money
from tests.helpers import noop_stage, poll, publish, start, unique, wait_run
from tests.stack import register_agent, sql


async def _claimed_task(api: httpx.AsyncClient, tmp_path: Path, **stage: Any) -> tuple[str, dict[str, Any], str, str]:
    """Start a one-stage run and claim its task through the API as a new agent (no agent process: the test is the
    agent); returns the run's id, the attempt's row, the agent's name and its claim id."""
    cap, name = unique("retried"), unique("reporter")
    auth = {"Authorization": f"Bearer {register_agent(name, [cap])}"}
    pipeline = unique("retried")
    await publish(api, {"name": pipeline, "stages": [{**noop_stage("work", cap), "heartbeat_timeout": 60, **stage}]})
    run_id = await start(api, pipeline, tmp_path)

    async def published() -> list[dict[str, Any]]:
        return sql("SELECT id, task_token FROM task_attempts WHERE run_id = :r", r=run_id)

    row = (await poll(published, deadline=60, what="the task to be recorded"))[0]
    claimed = await api.post(f"/v1/agent/tasks/{row['id']}/claim", headers=auth, json={})
    assert claimed.status_code == 200, claimed.text
    return run_id, {**row, "auth": auth}, name, claimed.json()["claim_id"]


@pytest.mark.parametrize("outcome", ["complete", "fail"])
async def test_a_report_temporal_applied_but_the_api_never_recorded_is_taken_when_sent_again(
    api: httpx.AsyncClient, temporal: Client, tmp_path: Path, outcome: str
) -> None:
    # Given a task claimed by an agent
    run_id, row, name, claim_id = await _claimed_task(api, tmp_path)
    # And Temporal took the agent's report, as the API forwarded it, but the API never recorded it (it restarted
    # before its commit, so the agent's call got no reply)
    report = StageResult(status="succeeded" if outcome == "complete" else "failed", summary="done", output={"n": 1})
    forwarded = report.model_copy(update={"attempt": 1, "agent": name,
                                          "cost": to_money(prices().cost_micros(report.usage))})
    handle = temporal.get_async_activity_handle(task_token=bytes(row["task_token"]))
    if outcome == "complete":
        body: dict[str, Any] = {"claim_id": claim_id, "result": report.model_dump(mode="json")}
        await handle.complete(forwarded)
    else:
        body = {"claim_id": claim_id, "error_type": "Broken", "message": "it broke", "non_retryable": True,
                "result": report.model_dump(mode="json")}
        await handle.fail(ApplicationError("it broke", forwarded, type="Broken", non_retryable=True))
    # When the agent sends the same report again
    again = await api.post(f"/v1/agent/tasks/{row['id']}/{outcome}", headers=row["auth"], json=body)
    assert again.status_code == 204, again.text
    # Then the attempt is recorded once, with the report, and nothing counts as a late report
    status = "succeeded" if outcome == "complete" else "failed"
    recorded = sql("SELECT status, late_reports, result->>'summary' AS summary FROM task_attempts WHERE id = :i",
                   i=row["id"])
    assert recorded == [{"status": status, "late_reports": 0, "summary": "done"}]
    kinds = [e["kind"] for e in sql("SELECT kind FROM events WHERE run_id = :r ORDER BY id", r=run_id)]
    assert kinds.count(f"stage.attempt.{status}") == 1 and "task.report_refused" not in kinds, kinds
    run = await wait_run(api, run_id, deadline=60)
    assert run["status"] == status and run["stages"][0]["result"]["summary"] == "done", run


@pytest.mark.parametrize("learned", [False, True], ids=["first-heard-from-temporal", "already-recorded-as-over"])
@pytest.mark.parametrize("outcome", ["complete", "fail"])
async def test_a_report_on_an_attempt_that_timed_out_is_still_refused_and_keeps_its_cost(
    api: httpx.AsyncClient, temporal: Client, tmp_path: Path, outcome: str, learned: bool
) -> None:
    # Given a claimed task whose activity closed without this report (here: failed for another reason)
    run_id, row, _, claim_id = await _claimed_task(api, tmp_path, retry={"maximum_attempts": 1})
    await temporal.get_async_activity_handle(task_token=bytes(row["task_token"])).fail(
        ApplicationError("something else ended it", type="Elsewhere", non_retryable=True))
    if learned:  # the agent's heartbeat already told the API that the attempt is over
        beat = await api.post(f"/v1/agent/tasks/{row['id']}/heartbeat", headers=row["auth"],
                              json={"claim_id": claim_id, "details": {}})
        assert beat.status_code == 409, beat.text
    # When the agent reports a result Temporal never took, after paying for 1,500 tokens of a model
    result = {"status": "succeeded" if outcome == "complete" else "failed", "summary": "late",
              "usage": {"model_tokens": {"test-model": 1500}}}
    body: dict[str, Any] = {"claim_id": claim_id, "result": result}
    if outcome == "fail":
        body |= {"error_type": "Broken", "message": "late too"}
    url = f"/v1/agent/tasks/{row['id']}/{outcome}"
    late = await api.post(url, headers=row["auth"], json=body)
    # Then it is refused, as before: the attempt is superseded and the stage's outcome is Temporal's
    assert late.status_code == 409, late.text
    spent = prices().cost_micros(Usage(model_tokens={"test-model": 1500}))
    assert spent == 3_000_000  # the suite's price: 2.0 per 1,000 tokens
    recorded = sql("SELECT status, result->>'summary' AS summary, late_reports, cost_micros FROM task_attempts "
                   "WHERE id = :i", i=row["id"])
    # (a report recorded before Temporal refused it stays on the attempt for the record; one refused first is not)
    assert recorded == [{"status": "superseded", "summary": None if learned else "late",
                         "late_reports": 2 if learned else 1, "cost_micros": spent}]
    # But what the agent spent counts in the run's cost, once, however often the late report is sent again; and
    # sent five times at once, each refusal is counted
    again = await asyncio.gather(*(api.post(url, headers=row["auth"], json=body) for _ in range(5)))
    assert [r.status_code for r in again] == [409] * 5, [r.text for r in again]
    assert sql("SELECT late_reports, cost_micros FROM task_attempts WHERE id = :i", i=row["id"]) == [
        {"late_reports": 7 if learned else 6, "cost_micros": spent}]
    refused = sql("SELECT count(*) AS n FROM events WHERE run_id = :r AND kind = 'task.report_refused'", r=run_id)
    assert refused == [{"n": 7 if learned else 6}]
    run = await wait_run(api, run_id, deadline=60)
    assert run["status"] == "failed" and run["cost"] == to_money(spent) == 3.0, run
    assert run["stages"][0]["cost"] == 3.0, run["stages"]


async def test_a_claim_asked_again_with_its_claim_id_gets_the_claim_back(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    # Given a task claimed by an agent under a claim id of its own
    run_id, row, _, claim_id = await _claimed_task(api, tmp_path)
    # When the same agent asks again with the same claim id (its answer was lost), it gets the same claim
    again = await api.post(f"/v1/agent/tasks/{row['id']}/claim", headers=row["auth"], json={"claim_id": claim_id})
    assert again.status_code == 200, again.text
    assert again.json()["claim_id"] == claim_id
    # And with another claim id it is refused: the task is taken
    other = await api.post(f"/v1/agent/tasks/{row['id']}/claim", headers=row["auth"], json={"claim_id": "f" * 32})
    assert other.status_code == 409, other.text
    # And a claim id that is not 32 hex digits is refused before anything is read
    bad = await api.post(f"/v1/agent/tasks/{row['id']}/claim", headers=row["auth"], json={"claim_id": "x\u0000"})
    assert bad.status_code == 422, bad.text
    # And the claim asked again still finishes the task, which ends the run (and tears its sandbox down)
    body = {"claim_id": claim_id, "result": {"status": "succeeded", "summary": "kept"}}
    done = await api.post(f"/v1/agent/tasks/{row['id']}/complete", headers=row["auth"], json=body)
    assert done.status_code == 204, done.text
    run = await wait_run(api, run_id, deadline=60)
    assert run["status"] == "succeeded" and run["stages"][0]["result"]["summary"] == "kept", run
