"""Cancelling mid-stage stops the agent's work, removes the sandbox and shows the run cancelled."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil

from tests.helpers import noop_stage, poll, publish, start, unique, wait_run, wait_stage
from tests.stack import Stack, sql


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


async def test_cancel_mid_stage(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    # Given a stage busy with a long command inside its sandbox
    cap = unique("cancel")
    stack.start_agent(unique("agent"), [cap])
    name = unique("cancel")
    marker = "317.25"  # an unusual duration identifies our sleep among the machine's processes
    await publish(api, {"name": name, "stages": [
        noop_stage("long", cap, sandbox_command=f"sleep {marker}"),
        {**noop_stage("never", cap), "depends_on": ["long"]},
    ]})
    run_id = await start(api, name, tmp_path)
    await wait_stage(api, run_id, "long", "running")

    async def sleeping() -> bool:
        return bool(_marked(f"sleep {marker}"))

    await poll(sleeping, deadline=30, what="the sandboxed command to start")
    sandboxes = stack.state / "sandboxes"
    assert any(p.name.startswith(run_id[:40]) for p in sandboxes.iterdir())
    # When the run is cancelled
    r = await api.post(f"/v1/runs/{run_id}/cancel")
    assert r.status_code == 202
    run = await wait_run(api, run_id, deadline=60)
    # Then the run is cancelled, the agent's work is gone and so is the sandbox
    assert run["status"] == "cancelled"
    assert [s["status"] for s in run["stages"]] == ["cancelled", "cancelled"]

    async def work_stopped() -> bool:
        return not _marked(f"sleep {marker}")

    await poll(work_stopped, deadline=30, what="the sandboxed command to be killed")

    async def sandbox_removed() -> bool:
        return not any(p.name.startswith(run_id[:40]) for p in sandboxes.iterdir())

    await poll(sandbox_removed, deadline=30, what="the sandbox to be removed")

    async def attempt_closed() -> bool:
        rows = sql("SELECT status FROM task_attempts WHERE run_id = :r", r=run_id)
        return rows == [{"status": "cancelled"}]

    await poll(attempt_closed, deadline=30, what="the agent to report the cancellation")
    assert (await api.post(f"/v1/runs/{run_id}/cancel")).status_code == 409


async def test_cancel_while_the_agent_is_dead(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    # Given a stage held by an agent that is then killed, so nobody will acknowledge a cancellation
    cap = unique("orphaned")
    agent = unique("agent")
    stack.start_agent(agent, [cap])
    name = unique("orphaned")
    await publish(api, {"name": name, "stages": [{**noop_stage("long", cap, sleep=300), "heartbeat_timeout": 4}]})
    run_id = await start(api, name, tmp_path)
    await wait_stage(api, run_id, "long", "running")

    async def claimed() -> bool:
        return bool(sql("SELECT 1 FROM task_attempts WHERE run_id = :r AND status = 'claimed'", r=run_id))

    await poll(claimed, deadline=30, what="the agent to claim the task")
    stack.sigkill(agent)
    # When the run is cancelled, and the stage's task times out instead of acknowledging it
    assert (await api.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
    run = await wait_run(api, run_id, deadline=60)
    # Then the stage ended because the run was cancelled, not because it failed
    assert run["status"] == "cancelled"
    assert [(s["status"], s["error"]) for s in run["stages"]] == [("cancelled", "cancelled")]
