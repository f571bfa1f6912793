"""A run's start and end reach the feed exactly once, however often the records activity writes them.

A local activity whose worker was killed before its workflow task completed runs again on the next worker, as a
first attempt again; an attempt that failed after its commit is retried. Both write the same record twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

from temporalio.testing import ActivityEnvironment

from devart.activities.records import record_run
from devart.core.contracts import RunRecord, RunStatus
from devart.core.database import db
from tests.helpers import unique
from tests.stack import Stack, sql


def _record(*writes: tuple[RunRecord, int]) -> None:
    """Run the activity once per (record, attempt), in order, on an event loop of its own (like ``register_agent``)."""

    async def run() -> None:
        db.engine.cache_clear()
        db._sessions.cache_clear()
        try:
            for rec, attempt in writes:
                env = ActivityEnvironment()
                env.info = dataclasses.replace(env.info, attempt=attempt)
                await env.run(record_run, rec)
        finally:
            await db.engine().dispose()
            db.engine.cache_clear()
            db._sessions.cache_clear()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def _records(run_id: str) -> tuple[RunRecord, RunRecord]:
    started = RunRecord(run_id=run_id, pipeline="recorded", repository="/srv/repo", ref=None, trigger="api",
                        params={}, status=RunStatus.RUNNING, stages=[])
    return started, started.model_copy(update={"status": RunStatus.SUCCEEDED})


def _feed(run_id: str) -> list[str]:
    return [r["kind"] for r in sql("SELECT kind FROM events WHERE run_id = :r ORDER BY id", r=run_id)]


def test_a_replayed_first_attempt_adds_no_second_event(stack: Stack) -> None:
    # Given a run's start and end, each written twice as a first attempt (a local activity replayed by a new worker)
    run_id = unique("replayed")
    started, finished = _records(run_id)
    _record((started, 1), (started, 1), (finished, 1), (finished, 1))
    # Then the feed has its start and its end once each, and the row its end
    assert _feed(run_id) == ["run.started", "run.finished"]
    assert sql("SELECT status FROM runs WHERE id = :r", r=run_id) == [{"status": "succeeded"}]


def test_a_retry_after_a_failed_first_attempt_adds_the_event(stack: Stack) -> None:
    # Given a first attempt that failed before committing anything, then its retry
    run_id = unique("retried")
    started, finished = _records(run_id)
    _record((started, 2), (finished, 3))
    # Then the retries put the start and the end in the feed all the same
    assert _feed(run_id) == ["run.started", "run.finished"]


def test_a_runs_end_waits_for_a_report_still_being_written(stack: Stack) -> None:
    """The workflow hears of a stage's end before the agent's report commits its result and cost; a run read as
    finished must already show them (its cost was short by the last stage's, now and then, before)."""
    from sqlalchemy import create_engine, text

    run_id = unique("reported")
    started, finished = _records(run_id)
    _record((started, 1))
    sql("INSERT INTO task_attempts (id, run_id, stage, attempt, lane, skill, task_token, heartbeat_timeout, "
        "wait_timeout, input, status, late_reports, cost_micros, created_at) VALUES (:id, :r, 'only', 1, 'x', 'noop', "
        "'\\x00', 30, 600, '{}', 'claimed', 0, 0, now())", id=unique("attempt"), r=run_id)
    engine = create_engine(db.database_url())
    try:
        with engine.connect() as report, ThreadPoolExecutor(1) as pool:
            # Given an agent's report holding its attempt's row lock while Temporal hears of it
            report.execute(text("SELECT 1 FROM task_attempts WHERE run_id = :r FOR UPDATE"), {"r": run_id})
            ending = pool.submit(_record, (finished, 1))
            # When the run's end is recorded meanwhile, Then it waits for the report's lock
            deadline = time.monotonic() + 30
            while not sql("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND query LIKE '%FROM task_attempts WHERE run_id%FOR SHARE%'"):
                assert not ending.done() and time.monotonic() < deadline, "the run's end did not wait for the report"
                time.sleep(0.05)
            assert sql("SELECT status FROM runs WHERE id = :r", r=run_id) == [{"status": "running"}]
            # And once the report commits its cost, the run's end follows it
            report.execute(text("UPDATE task_attempts SET status = 'succeeded', cost_micros = 7 WHERE run_id = :r"),
                           {"r": run_id})
            report.commit()
            ending.result(timeout=30)
    finally:
        engine.dispose()
    assert sql("SELECT status FROM runs WHERE id = :r", r=run_id) == [{"status": "succeeded"}]
    assert _feed(run_id) == ["run.started", "run.finished"]
