"""A run that ends without its own teardown (worker killed, run terminated) leaves no sandbox once swept.

The sweeper runs inside the pipeline worker, not as a workflow: it adds nothing to Temporal's workflow list, only
one worker sweeps at a time, and a worker removes the schedule older releases swept with.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError

from devart.core.database import db
from devart.core.settings import SweepSettings
from devart.core.temporal_namespaces import Namespaces
from devart.sandboxes import artifacts
from devart.sandboxes.layout import create_layout
from devart.workers.sweeper import LOCK_KEY, OLD_SCHEDULE_ID, sweep_if_alone
from tests.helpers import noop_stage, poll, publish, start, unique, wait_stage
from tests.stack import Stack, sql


def restart_worker(stack: Stack, **env: str) -> None:
    """Kill the pipeline worker (no finally runs) and start another with ``env``."""
    assert stack.worker is not None
    stack.worker.proc.kill()
    stack.worker.proc.wait()
    stack.supervisor.children.remove(stack.worker)
    stack.worker = stack.supervisor.spawn("worker", "worker", env=env)


async def start_busy_run(api: httpx.AsyncClient, stack: Stack, repo: Path) -> str:
    """A run whose one stage is busy in its sandbox for two minutes, on an agent of its own."""
    cap = unique("busy")
    stack.start_agent(unique("agent"), [cap])
    name = unique("busy")
    await publish(api, {"name": name, "stages": [noop_stage("long", cap, sleep=120)]})
    run_id = await start(api, name, repo)
    await wait_stage(api, run_id, "long", "running")
    return run_id


@pytest.fixture
def fast_sweeps(stack: Stack) -> Iterator[None]:
    """Tests here restart the worker sweeping every second; the rest of the session gets a default one again."""
    yield
    stack.restart_worker(kill=False)


async def test_sweeper_removes_what_a_dead_worker_left(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path, fast_sweeps: None
) -> None:
    # Given a stage busy in its sandbox
    run_id = await start_busy_run(api, stack, tmp_path)
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
    stack.worker = stack.supervisor.spawn("worker", "worker", env={"DEVART_SWEEP_EVERY": "1"})

    # Then the worker's sweeper removes the sandbox and says so in the feed (once its whole sweep is done)
    def reported() -> list[dict[str, object]]:
        return sql("SELECT message FROM events WHERE kind = 'sandbox.swept' AND run_id = :r", r=run_id)

    async def swept() -> bool:
        return bool(reported())

    await poll(swept, deadline=60, every=0.5, what="the sweeper to remove the orphaned sandbox and say so in the feed")
    assert not mine()
    assert "terminated" in str(reported()[0]["message"])
    # And no sweep shows up among the workflows: they are the runs only
    listed = [w.workflow_type async for w in temporal.list_workflows("WorkflowType != 'PipelineWorkflow'")]
    assert "SandboxSweepWorkflow" not in listed


async def test_only_the_lock_holder_sweeps(temporal: Client, stack: Stack, fast_sweeps: None) -> None:
    # Given a worker sweeping every second, an orphaned sandbox, and another process holding the sweeper's lock
    restart_worker(stack, DEVART_SWEEP_EVERY="1")
    orphan = stack.state / "sandboxes" / unique("orphan")
    create_layout(orphan, {"workspace": str(orphan / "workspace"), "run_id": unique("gone"),
                           "created": "2000-01-01T00:00:00+00:00"})
    engine = create_engine(db.database_url())
    try:
        with engine.connect() as holder:
            assert holder.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar_one()
            # Then a sweep elsewhere stands aside, and the orphan stays
            assert await sweep_if_alone(Namespaces(temporal), SweepSettings()) is None
            assert orphan.exists()
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            holder.commit()
    finally:
        engine.dispose()
        await db.engine().dispose()  # this test's event loop ends: the next test gets a fresh pool
        db.engine.cache_clear()
        db._sessions.cache_clear()

    # And once the lock is free, the worker takes it and sweeps: the feed hears of it once the whole sweep is done
    def reported() -> list[dict[str, object]]:
        return sql("SELECT message FROM events WHERE kind = 'sandbox.swept' AND data->>'sandbox' = :s", s=orphan.name)

    async def swept() -> bool:
        return bool(reported())

    await poll(swept, deadline=30, what="the sweeper to remove the orphaned sandbox and say so in the feed")
    assert not orphan.exists()
    assert "older than its time to live" in str(reported()[0]["message"])


async def test_a_worker_retires_the_old_schedule(temporal: Client, stack: Stack, fast_sweeps: None) -> None:
    # Given the schedule an older release created (paused, so it starts nothing here)
    schedule_id = f"{OLD_SCHEDULE_ID}-{stack.env['TEMPORAL_TASK_QUEUE']}"
    await temporal.create_schedule(schedule_id, Schedule(
        action=ScheduleActionStartWorkflow("SandboxSweepWorkflow", id=schedule_id,
                                           task_queue=stack.env["TEMPORAL_TASK_QUEUE"]),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=1))]),
        state=ScheduleState(paused=True),
    ))
    # When a worker starts
    restart_worker(stack)

    # Then the schedule is gone
    async def removed() -> bool:
        try:
            await temporal.get_schedule_handle(schedule_id).describe()
            return False
        except RPCError:
            return True

    await poll(removed, deadline=60, what="the worker to delete the old sweep schedule")


async def test_handed_on_files_go_when_their_run_has_ended(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path, fast_sweeps: None
) -> None:
    # Given a run still going and one long gone, each with a file its build stage handed on
    going = await start_busy_run(api, stack, tmp_path)
    root = stack.state / "sandboxes"
    for run_id in (going, unique("gone")):
        artifacts.store(root, run_id, "proj-1.0-py3-none-any.whl", b"wheel")
    gone = [r for r in artifacts.runs(root) if r.startswith("gone-")]

    # When the worker sweeps
    restart_worker(stack, DEVART_SWEEP_EVERY="1")

    # Then the ended run's files are removed and the running one's kept
    async def pruned() -> bool:
        return not set(gone) & set(artifacts.runs(root))

    await poll(pruned, deadline=60, every=0.5, what="the sweeper to drop the ended run's files")
    assert going in artifacts.runs(root)
    await api.post(f"/v1/runs/{going}/cancel")


async def test_the_sweep_fails_a_run_never_started_and_records_a_start_never_recorded(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path, fast_sweeps: None
) -> None:
    # Given a run the API recorded but whose workflow it never started (it died in between), and a run that is
    # going, both older than the grace period
    orphan = unique("unstarted")
    sql("INSERT INTO runs (id, pipeline, pipeline_version, repository, trigger, params, status, stages, created_at) "
        "VALUES (:id, 'unstarted', 1, '/srv/repo', 'api', '{}', 'running', '[]', now() - interval '5 minutes')",
        id=orphan)
    going = await start_busy_run(api, stack, tmp_path)
    sql("UPDATE runs SET created_at = now() - interval '5 minutes' WHERE id = :r", r=going)
    # whose start the API never recorded (it died after starting the workflow)
    sql("DELETE FROM events WHERE run_id = :r AND kind = 'run.started'", r=going)
    # When the worker sweeps
    restart_worker(stack, DEVART_SWEEP_EVERY="1")

    # Then the run without a workflow is failed, with the reason, and its end is in the feed once
    async def failed() -> bool:
        return sql("SELECT status FROM runs WHERE id = :r", r=orphan) == [{"status": "failed"}]

    await poll(failed, deadline=60, every=0.5, what="the sweeper to fail the run that never started")
    assert "Temporal has no workflow for it" in sql("SELECT error FROM runs WHERE id = :r", r=orphan)[0]["error"]
    assert len(sql("SELECT 1 FROM events WHERE kind = 'run.finished' AND run_id = :r", r=orphan)) == 1
    # And the run that has its workflow goes on, its start now in the feed, once, saying why it came late
    def starts() -> list[str]:
        return [r["late"] for r in sql("SELECT data->>'recorded_late' AS late FROM events "
                                       "WHERE kind = 'run.started' AND run_id = :r", r=going)]

    async def announced() -> bool:
        return bool(starts())

    await poll(announced, deadline=60, every=0.5, what="the sweeper to record the going run's start")
    assert sql("SELECT status FROM runs WHERE id = :r", r=going) == [{"status": "running"}]
    assert len(starts()) == 1 and starts()[0].startswith("by the sweep")
    # And a later sweep adds no second one
    try:
        again = await poll(lambda: sweep_if_alone(Namespaces(temporal), SweepSettings()), deadline=30,
                           what="a turn to sweep")
    finally:
        await db.engine().dispose()
        db.engine.cache_clear()
        db._sessions.cache_clear()
    assert going not in again.runs_started and len(starts()) == 1
    await api.post(f"/v1/runs/{going}/cancel")

    async def ended() -> bool:
        return bool(sql("SELECT 1 FROM events WHERE kind = 'run.finished' AND run_id = :r", r=going))

    await poll(ended, deadline=60, what="the cancelled run to end")  # nothing of it reaches the next test's feed
