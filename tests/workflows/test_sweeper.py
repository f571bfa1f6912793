"""A run that ends without its own teardown (worker killed, run terminated) leaves no sandbox once swept."""

from __future__ import annotations

from pathlib import Path

import httpx
from temporalio.client import Client

from tests.helpers import noop_stage, poll, publish, start, unique, wait_stage
from tests.stack import Stack, sql
from workflows.sweeper import SCHEDULE_ID


async def test_sweeper_removes_what_a_dead_worker_left(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    # Given a stage busy in its sandbox
    cap = unique("orphan")
    stack.start_agent(unique("agent"), [cap])
    name = unique("orphan")
    await publish(api, {"name": name, "stages": [noop_stage("long", cap, sleep=120)]})
    run_id = await start(api, name, tmp_path)
    await wait_stage(api, run_id, "long", "running")
    sandboxes = stack.state / "sandboxes"

    def mine() -> list[Path]:
        return [p for p in sandboxes.iterdir() if p.name.startswith(run_id[:40])]

    assert mine()
    # When the pipeline worker dies mid-stage and the run is terminated from outside, so no finally runs
    assert stack.worker is not None
    stack.worker.proc.kill()
    stack.worker.proc.wait()
    await temporal.get_workflow_handle(run_id).terminate("operator gave up")
    stack.supervisor.children.remove(stack.worker)
    stack.worker = stack.supervisor.worker()
    # Then the sweeper (a Temporal Schedule) removes the sandbox and says so in the feed
    schedule = temporal.get_schedule_handle(f"{SCHEDULE_ID}-{stack.env['TEMPORAL_TASK_QUEUE']}")

    async def schedule_exists() -> bool:
        try:
            await schedule.describe()
            return True
        except Exception:
            return False

    await poll(schedule_exists, deadline=30, what="the sweep schedule")

    async def swept() -> bool:
        await schedule.trigger()
        return not mine()

    await poll(swept, deadline=60, every=2.0, what="the sweeper to remove the orphaned sandbox")
    events = sql("SELECT message FROM events WHERE kind = 'sandbox.swept' AND run_id = :r", r=run_id)
    assert events and "terminated" in events[0]["message"]

