"""An agent killed mid-task: the heartbeat times out, another agent finishes, the dead attempt's report is refused."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.helpers import noop_stage, poll, publish, start, unique, wait_run
from tests.stack import Stack, register_agent, sql


async def test_sigkill_mid_task_moves_to_another_agent(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    # Given a task that takes long on attempt 1, claimed by agent A
    cap = unique("crash")
    name_a = unique("doomed-agent")
    agent_a = stack.start_agent(name_a, [cap])
    pipeline = unique("crash")
    await publish(api, {"name": pipeline, "stages": [noop_stage("work", cap, sleep=60, slow_attempts=1)]})
    run_id = await start(api, pipeline, tmp_path)

    async def claimed_by_a() -> list[dict]:
        return sql("SELECT id, claim_id FROM task_attempts WHERE run_id = :r AND claimed_by = :a", r=run_id, a=name_a)

    first = (await poll(claimed_by_a, deadline=30, what="agent A to claim the task"))[0]
    # When A is killed without a chance to say anything, and B comes online
    agent_a.proc.send_signal(signal.SIGKILL)
    agent_a.proc.wait()
    name_b = unique("rescuer")
    stack.start_agent(name_b, [cap])
    # Then the heartbeat timeout hands the task to B, and the run completes
    run = await wait_run(api, run_id, deadline=90)
    assert run["status"] == "succeeded", run
    log = run["stages"][0]["attempt_log"]
    attempts = [(a["attempt"], a["agent"], a["status"]) for a in log]
    assert attempts == [(1, name_a, "superseded"), (2, name_b, "succeeded")]
    assert run["stages"][0]["result"]["agent"] == name_b
    # And the dead attempt's late result is refused and recorded
    key_a = register_agent(name_a, [cap])  # A comes back with a new key, holding its stale claim
    late = await api.post(
        f"/v1/agent/tasks/{first['id']}/complete",
        headers={"Authorization": f"Bearer {key_a}"},
        json={"claim_id": first["claim_id"], "result": {"status": "succeeded", "summary": "late"}},
    )
    assert late.status_code == 409 and "superseded" in late.json()["detail"]
    row = sql("SELECT late_reports, status FROM task_attempts WHERE id = :i", i=first["id"])[0]
    assert row == {"late_reports": 1, "status": "superseded"}
    events = sql("SELECT kind FROM events WHERE run_id = :r AND kind = 'task.report_refused'", r=run_id)
    assert len(events) == 1
    final = (await api.get(f"/v1/runs/{run_id}")).json()
    assert final["stages"][0]["result"]["summary"] != "late"
