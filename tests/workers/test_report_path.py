"""An agent's claim and report hold no row lock and no pooled connection while Temporal answers.

A second API process reaches Temporal through a relay the test holds, as a stalled Temporal would be. While a
claim or a report waits on Temporal, the attempt's row can be locked by anyone else at once (nothing holds it),
the report is already recorded (``reporting``), and the API still answers other calls; once Temporal answers, the
claim and the report end as they always did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from devart.core.devstack.services import free_port
from tests.helpers import noop_stage, poll, publish, start, unique, wait_run
from tests.stack import Stack, register_agent, sql
from tests.workers.relay import Relay


@pytest.fixture
async def held_api(stack: Stack) -> AsyncIterator[tuple[str, Relay]]:
    """An API of its own whose calls to Temporal go through a relay the test can hold."""
    host, port = stack.env["TEMPORAL_ADDRESS"].rsplit(":", 1)
    relay = Relay(host, int(port))
    await relay.start()
    api_port = free_port()
    child = stack.supervisor.spawn("api-held", "api", "--host", "127.0.0.1", "--port", str(api_port),
                                   env={"TEMPORAL_ADDRESS": f"127.0.0.1:{relay.port}"})
    url = f"http://127.0.0.1:{api_port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as probe:
            async def healthy() -> bool | None:
                assert child.proc.poll() is None, "the second API exited"
                try:
                    return (await probe.get("/healthz")).status_code == 200 or None
                except httpx.TransportError:
                    return None

            await poll(healthy, deadline=60, what="the second API to answer")
        yield url, relay
    finally:
        relay.release()
        stack.supervisor.stop(child)
        await relay.cut()


def _nobody_holds(task_id: str) -> bool:
    """Whether the attempt's row can be locked at once: no transaction anywhere holds it."""
    return sql("SELECT id FROM task_attempts WHERE id = :i FOR UPDATE NOWAIT", i=task_id) == [{"id": task_id}]


async def test_a_claim_and_a_report_waiting_on_temporal_hold_nothing(
    api: httpx.AsyncClient, held_api: tuple[str, Relay], tmp_path: Path
) -> None:
    url, relay = held_api
    # Given a queued task of a one-stage run, and its agent talking to the API whose Temporal is held
    cap, name = unique("held"), unique("held-agent")
    auth = {"Authorization": f"Bearer {register_agent(name, [cap])}"}
    pipeline = unique("held")
    await publish(api, {"name": pipeline, "stages": [{**noop_stage("work", cap), "heartbeat_timeout": 60}]})
    run_id = await start(api, pipeline, tmp_path)

    async def recorded() -> list[dict[str, object]] | None:
        return sql("SELECT id FROM task_attempts WHERE run_id = :r", r=run_id) or None

    task_id = str((await poll(recorded, deadline=60, what="the task to be recorded"))[0]["id"])
    async with httpx.AsyncClient(base_url=url, timeout=60.0, headers=auth) as agent:
        # When the agent claims it while Temporal does not answer
        relay.hold()
        claim = asyncio.create_task(agent.post(f"/v1/agent/tasks/{task_id}/claim", json={}))
        await relay.until_held()  # the API's call to Temporal waits in the relay
        # Then the claim waits, the task is still queued and nothing holds its row
        assert not claim.done(), (await claim).text
        assert sql("SELECT status FROM task_attempts WHERE id = :i", i=task_id) == [{"status": "queued"}]
        assert _nobody_holds(task_id)
        # ... and once Temporal answers, the claim is granted
        relay.release()
        granted = await claim
        assert granted.status_code == 200, granted.text
        claim_id = granted.json()["claim_id"]

        # When the agent reports its result while Temporal does not answer
        relay.hold()
        body = {"claim_id": claim_id, "result": {"status": "succeeded", "summary": "done"}}
        report = asyncio.create_task(agent.post(f"/v1/agent/tasks/{task_id}/complete", json=body))

        async def reporting() -> bool | None:
            rows = sql("SELECT status, reported FROM task_attempts WHERE id = :i", i=task_id)
            return rows == [{"status": "reporting", "reported": "succeeded"}] or None

        # Then the report is recorded before Temporal hears of it, and nothing holds the row meanwhile
        await poll(reporting, deadline=30, what="the report to be recorded")
        assert not report.done() and _nobody_holds(task_id)
        # ... and the API still answers the agent's other calls at once
        me = await agent.get("/v1/agent/me", timeout=5.0)
        assert me.status_code == 200, me.text
        # ... and once Temporal answers, the report is settled: the attempt succeeded, the run too
        relay.release()
        done = await report
        assert done.status_code == 204, done.text
    row = sql("SELECT status, reported, late_reports FROM task_attempts WHERE id = :i", i=task_id)
    assert row == [{"status": "succeeded", "reported": "succeeded", "late_reports": 0}]
    run = await wait_run(api, run_id, deadline=60)
    assert run["status"] == "succeeded" and run["stages"][0]["result"]["summary"] == "done", run
    kinds = [e["kind"] for e in sql("SELECT kind FROM events WHERE run_id = :r ORDER BY id", r=run_id)]
    assert kinds.count("stage.attempt.succeeded") == 1 and kinds[-1] == "run.finished", kinds
