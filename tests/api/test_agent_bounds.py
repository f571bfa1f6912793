"""What agents report and announce is bounded, and an agent writes only to tasks it claimed.

A result Temporal would refuse is refused first (413, nothing stored, the task still claimed) and the stage fails
with the reason everywhere a verdict is read: the API, the feed and the Temporal workflow. An agent's key cannot
report, heartbeat, count late reports or write feed events for another agent's task.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowExecutionStatus

from devart.core.bounds import MAX_AGENT_CAPABILITIES, MAX_AGENT_SKILLS, MAX_RESULT_BYTES, MAX_RUN_RESULTS_BYTES
from tests.helpers import closed_status, noop_stage, poll, publish, start, unique, wait_run
from tests.stack import Stack, admin, register_agent, sql

MB = 1_000_000


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def one_stage_run(api: httpx.AsyncClient, tmp_path: Path, cap: str, **stage: Any) -> str:
    """A run of one stage needing ``cap``, with a heartbeat timeout long enough for a test to report by hand."""
    pipeline = unique("bounds")
    await publish(api, {"name": pipeline, "stages": [{**noop_stage("only", cap), "heartbeat_timeout": 60, **stage}]})
    return await start(api, pipeline, tmp_path)


async def queued_task(api: httpx.AsyncClient, tmp_path: Path, cap: str) -> tuple[str, str]:
    """A one-stage run on a capability no running agent has, and its task's id once it is queued."""
    run_id = await one_stage_run(api, tmp_path, cap)

    async def queued() -> str | None:
        rows = sql("SELECT id FROM task_attempts WHERE run_id = :r AND status = 'queued'", r=run_id)
        return str(rows[0]["id"]) if rows else None

    return run_id, await poll(queued, deadline=30, what="the task to be queued")


def result(output_bytes: int) -> dict[str, Any]:
    return {"status": "succeeded", "summary": "done", "output": {"blob": "x" * output_bytes}}


def attempt_row(task_id: str) -> dict[str, Any]:
    return sql("SELECT status, claimed_by, result, late_reports FROM task_attempts WHERE id = :i", i=task_id)[0]


async def assert_failed_everywhere(api: httpx.AsyncClient, temporal: Client, run_id: str, reason: str) -> None:
    """The run and its stage failed with ``reason`` in the API and the feed, and its workflow failed."""
    run = await wait_run(api, run_id)
    assert run["status"] == "failed", run
    stage = run["stages"][0]
    assert stage["status"] == "failed" and reason in stage["error"] and reason in run["error"], stage
    assert await closed_status(temporal, run_id) == WorkflowExecutionStatus.FAILED
    failed = sql("SELECT message FROM events WHERE run_id = :r AND kind = 'stage.attempt.failed'", r=run_id)
    assert failed and reason in failed[0]["message"]
    assert sql("SELECT status FROM task_attempts WHERE run_id = :r", r=run_id) == [{"status": "failed"}]


async def test_a_result_past_the_limit_is_refused_and_the_task_stays_claimed(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    # Given a task claimed through the API
    cap = unique("big")
    reporter = unique("reporter")
    key = bearer(register_agent(reporter, [cap]))
    run_id, task_id = await queued_task(api, tmp_path, cap)
    claim = await api.post(f"/v1/agent/tasks/{task_id}/claim", headers=key)
    assert claim.status_code == 200, claim.text
    claim_id = claim.json()["claim_id"]
    # When its agent reports a 3 MB result, or one just past the result limit
    for size in (3 * MB, MAX_RESULT_BYTES + 1000):
        answer = await api.post(f"/v1/agent/tasks/{task_id}/complete", headers=key,
                                json={"claim_id": claim_id, "result": result(size)})
        # Then it is a 413 naming the limit, nothing is stored, and the task is still the agent's to report on
        assert answer.status_code == 413, answer.text
        detail = answer.json()["detail"]
        assert "larger than 1 MiB" in detail or f"exceeds the limit of {MAX_RESULT_BYTES} bytes" in detail, detail
        assert attempt_row(task_id) == {"status": "claimed", "claimed_by": reporter, "result": None, "late_reports": 0}
    # (the size is measured as Temporal encodes the result, a little more than its output)
    assert re.match(rf"result of \d+ bytes exceeds the limit of {MAX_RESULT_BYTES} bytes \(256 KiB\)", detail)
    assert not sql("SELECT 1 FROM events WHERE run_id = :r AND kind LIKE 'stage.attempt.succeeded'", r=run_id)
    # And a failure saying so is accepted: PostgreSQL and Temporal agree the stage failed, for that reason
    failure = await api.post(f"/v1/agent/tasks/{task_id}/fail", headers=key, json={
        "claim_id": claim_id, "error_type": "ResultTooLarge", "message": detail, "non_retryable": True})
    assert failure.status_code == 204, failure.text
    await assert_failed_everywhere(api, temporal, run_id, "ResultTooLarge: result of")


async def start_oversized_agent(api: httpx.AsyncClient, stack: Stack, prefix: str) -> str:
    """Start an agent of ``tests.api.agent_apps`` on a capability of its own, once it announced its skill."""
    cap, name = unique(prefix), unique(f"{prefix}-agent")
    stack.start_agent(name, [cap], "--module", "tests.api.agent_apps")

    async def announced() -> bool:
        agent = (await api.get(f"/v1/agents/{name}", headers=admin(stack))).json()
        return "oversized" in agent.get("skills", [])

    await poll(announced, deadline=30, what="the agent to announce its skill")
    return cap


async def test_an_agent_with_an_oversized_result_fails_the_stage_with_the_reason(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    # Given an agent whose skill returns 3 MB
    cap = await start_oversized_agent(api, stack, "oversized")
    # When a run reaches it
    run_id = await one_stage_run(api, tmp_path, cap, skill="oversized", inputs={"bytes": 3 * MB})
    # Then the stage fails at once (not retried) with the size and the limit, in the API, the feed and Temporal
    await assert_failed_everywhere(api, temporal, run_id, "ResultTooLarge: result of 3000")
    run = (await api.get(f"/v1/runs/{run_id}")).json()
    assert f"exceeds the limit of {MAX_RESULT_BYTES} bytes" in run["stages"][0]["error"]
    assert [a["status"] for a in run["stages"][0]["attempt_log"]] == ["failed"]


async def test_the_results_of_a_run_together_are_bounded(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    # Given a run of five stages in a row, each with a result just under the limit of one result
    cap = await start_oversized_agent(api, stack, "heavy")
    pipeline = unique("heavy")
    stage = {**noop_stage("s1", cap), "skill": "oversized", "inputs": {"bytes": 250_000}}
    stages = [{**stage, "name": f"s{i}", "depends_on": [f"s{i - 1}"] if i > 1 else []} for i in range(1, 6)]
    await publish(api, {"name": pipeline, "stages": stages})
    run_id = await start(api, pipeline, tmp_path)
    # Then four fit in the run's share of Temporal's payload, and the fifth is refused by the API (the agent cannot
    # see the run's other results): the agent fails that stage with the API's reason, and the run fails everywhere
    run = await wait_run(api, run_id, deadline=180)
    assert [s["status"] for s in run["stages"]] == ["succeeded"] * 4 + ["failed"], run
    error = run["stages"][4]["error"]
    assert error.startswith("ResultTooLarge: result of") and f"stage results of run {run_id} together" in error
    assert f"limit of {MAX_RUN_RESULTS_BYTES} bytes (1 MiB)" in error
    assert await closed_status(temporal, run_id) == WorkflowExecutionStatus.FAILED
    statuses = sql("SELECT stage, status FROM task_attempts WHERE run_id = :r ORDER BY stage", r=run_id)
    assert [r["status"] for r in statuses] == ["succeeded"] * 4 + ["failed"]


async def test_an_agent_writes_only_to_its_own_tasks(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    # Given agents A and B serving the same lane, and a task nobody has claimed yet
    cap = unique("owner")
    name_a, name_b = unique("agent-a"), unique("agent-b")
    key_a, key_b = bearer(register_agent(name_a, [cap])), bearer(register_agent(name_b, [cap]))
    run_id, task_id = await queued_task(api, tmp_path, cap)
    base = f"/v1/agent/tasks/{task_id}"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("heartbeat", {"details": {"progress": "mine now"}}),
        ("complete", {"result": result(10)}),
        ("fail", {"message": "sabotage", "non_retryable": True}),
        ("cancelled", {}),
        ("release", {"reason": "sabotage"}),
    ]

    async def b_is_refused(claim_id: str) -> None:
        for route, body in calls:
            answer = await api.post(f"{base}/{route}", headers=key_b, json={"claim_id": claim_id, **body})
            assert answer.status_code == 403, (route, answer.text)
            assert f"not by agent {name_b}" in answer.json()["detail"]

    # When B reports on it before anyone claimed it, Then every call is refused and nothing is written
    await b_is_refused("guessed")
    assert attempt_row(task_id) == {"status": "queued", "claimed_by": None, "result": None, "late_reports": 0}
    # When A claims it and B reports with A's own claim id (leaked), Then still nothing is written
    claim = await api.post(f"{base}/claim", headers=key_a)
    assert claim.status_code == 200, claim.text
    claim_id = claim.json()["claim_id"]
    await b_is_refused(claim_id)
    assert attempt_row(task_id) == {"status": "claimed", "claimed_by": name_a, "result": None, "late_reports": 0}
    assert sql("SELECT kind FROM events WHERE run_id = :r AND (agent = :b OR kind = 'task.report_refused')",
               r=run_id, b=name_b) == []
    # And A's own reports go through, and A's own late report is still counted
    assert (await api.post(f"{base}/heartbeat", headers=key_a, json={"claim_id": claim_id})).status_code == 200
    done = await api.post(f"{base}/complete", headers=key_a, json={"claim_id": claim_id, "result": result(10)})
    assert done.status_code == 204, done.text
    assert (await wait_run(api, run_id))["status"] == "succeeded"
    # A repeat of the recorded report (its answer lost on the way back) is answered as done, and not counted
    repeat = await api.post(f"{base}/complete", headers=key_a, json={"claim_id": claim_id, "result": result(10)})
    assert repeat.status_code == 204, repeat.text
    assert attempt_row(task_id)["late_reports"] == 0
    late = await api.post(f"{base}/complete", headers=key_a, json={"claim_id": claim_id, "result": result(11)})
    assert late.status_code == 409
    assert attempt_row(task_id)["late_reports"] == 1


async def test_announced_skills_and_capabilities_are_bounded(api: httpx.AsyncClient, stack: Stack) -> None:
    name = unique("announcer")
    key = bearer(register_agent(name, ["python"]))
    ok = await api.post("/v1/agent/keepalive", headers=key, json={"status": "idle", "skills": ["noop", "my-skill.v2"]})
    assert ok.status_code == 200, ok.text
    refusals = [
        (f"{MAX_AGENT_SKILLS + 1} skills announced; an agent may announce at most {MAX_AGENT_SKILLS}",
         [f"skill-{i}" for i in range(MAX_AGENT_SKILLS + 1)]),
        ("has 65 characters; at most 64", ["a" * 65]),
        ("skill name 'Shouty' does not match [a-z0-9][a-z0-9._-]*", ["Shouty"]),
        ("skill name '-leading-dash' does not match", ["noop", "-leading-dash"]),
    ]
    for expected, skills in refusals:
        answer = await api.post("/v1/agent/keepalive", headers=key, json={"status": "busy", "skills": skills})
        assert answer.status_code == 422, answer.text
        assert expected in answer.json()["detail"], answer.text
    # 50,000 made-up names are refused too (by the body's own list limit, before they are even read one by one)
    flood = await api.post("/v1/agent/keepalive", headers=key,
                           json={"status": "busy", "skills": [f"s{i}" for i in range(50_000)]})
    assert flood.status_code in (413, 422), flood.text
    # Nothing of a refused announcement was stored
    agent = sql("SELECT skills, status FROM agents WHERE name = :n", n=name)[0]
    assert agent == {"skills": ["my-skill.v2", "noop"], "status": "idle"}
    # An agent registered with too many capabilities is refused, naming the limit
    caps = [f"cap{i}" for i in range(MAX_AGENT_CAPABILITIES + 1)]
    many = unique("many")
    created = await api.post("/v1/agents", headers=admin(stack), json={"name": many, "capabilities": caps})
    assert created.status_code == 422 and f"at most {MAX_AGENT_CAPABILITIES}" in created.json()["detail"]
    assert sql("SELECT name FROM agents WHERE name = :n", n=many) == []


def test_the_sdk_refuses_a_skill_name_the_api_would() -> None:
    from devart_sdk import AgentApp

    for bad in ("Audit", "a b", "x" * 65):
        try:
            AgentApp().skill(bad, capabilities=[])
        except ValueError as exc:
            assert "skill name" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")



async def test_reported_usage_is_bounded_so_no_report_lowers_or_overflows_a_cost(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    # Given a task claimed through the API
    cap = unique("usage")
    key = bearer(register_agent(unique("reporter"), [cap]))
    _, task_id = await queued_task(api, tmp_path, cap)
    claim = await api.post(f"/v1/agent/tasks/{task_id}/claim", headers=key)
    assert claim.status_code == 200, claim.text
    claim_id = claim.json()["claim_id"]
    # When its agent reports negative usage (which would lower the run's cost and its budget's spending), usage
    # whose cost overflows the cost's column, or a CPU time that is not a number
    for usage in ({"model_tokens": {"test-model": -1_000_000}}, {"model_tokens": {"test-model": 10**20}},
                  {"sandbox_cpu_seconds": -5.0}, {"sandbox_cpu_seconds": "Infinity"}):
        answer = await api.post(f"/v1/agent/tasks/{task_id}/complete", headers=key, json={
            "claim_id": claim_id, "result": {"status": "succeeded", "summary": "done", "usage": usage}})
        # Then it is refused at the edge with the field named, nothing is stored, and the task is still claimed
        assert answer.status_code == 422, (usage, answer.status_code, answer.text)
        assert "usage" in answer.text, answer.text
        assert attempt_row(task_id)["status"] == "claimed"
    assert sql("SELECT cost_micros FROM task_attempts WHERE id = :i", i=task_id) == [{"cost_micros": 0}]
