"""A run's start and end reach the feed exactly once, however often the records activity writes them.

A local activity whose worker was killed before its workflow task completed runs again on the next worker, as a
first attempt again; an attempt that failed after its commit is retried. Both write the same record twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

from temporalio.testing import ActivityEnvironment

from devart.activities.records import record_run
from devart.core.contracts import RunRecord, RunStatus, StageResult, StageState, StageStatus
from devart.core.database import db, tenancy
from devart.domain import run_feed
from tests.helpers import unique
from tests.stack import Stack, register_agent, sql


def _record(*writes: tuple[RunRecord, int]) -> None:
    """Run the activity once per (record, attempt), in order, on an event loop of its own (like ``register_agent``)."""

    async def run() -> None:
        db.engine.cache_clear()
        db._sessions.cache_clear()
        try:
            for rec, attempt in writes:
                env = ActivityEnvironment()
                env.info = dataclasses.replace(env.info, attempt=attempt)
                with tenancy.acting_as(tenancy.SYSTEM):  # as the pipeline worker: for every organisation, none named
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


def test_a_runs_end_records_its_start_when_the_api_did_not(stack: Stack) -> None:
    """The API records a run's start after Temporal started its workflow; killed in between (seen in the chaos
    suite), it left a run whose feed never had its start. The run's end adds it, once, before the end."""
    # Given a run the API recorded, whose workflow runs, but whose start never reached the feed
    run_id = unique("unannounced")
    started, finished = _records(run_id)
    sql("INSERT INTO runs (id, pipeline, pipeline_version, repository, trigger, params, status, stages, created_at) "
        "VALUES (:id, 'recorded', 1, '/srv/repo', 'api', '{}', 'running', '[]', now())", id=run_id)
    # When its end is recorded, twice (a replayed local activity)
    _record((finished, 1), (finished, 1))
    # Then the feed has its start, saying who recorded it and why, and then its end, once each
    feed = sql("SELECT kind, data FROM events WHERE run_id = :r ORDER BY id", r=run_id)
    assert [e["kind"] for e in feed] == ["run.started", "run.finished"]
    assert "the API did not record it" in feed[0]["data"]["recorded_late"]


def test_concurrent_writers_of_a_runs_start_add_it_once(stack: Stack) -> None:
    """The API, the sweep and the run's end may all try to record a start the feed lacks, at the same moment."""
    run_id = unique("raced")
    sql("INSERT INTO runs (id, pipeline, pipeline_version, repository, trigger, params, status, stages, created_at) "
        "VALUES (:id, 'recorded', 1, '/srv/repo', 'api', '{}', 'running', '[]', now())", id=run_id)

    async def race() -> list[bool]:
        db.engine.cache_clear()
        db._sessions.cache_clear()

        async def write() -> bool:
            with tenancy.acting_as(tenancy.SYSTEM):
                async with db.session() as s:
                    return await run_feed.record_started(s, run_id)

        try:
            return list(await asyncio.gather(*(write() for _ in range(6))))
        finally:
            await db.engine().dispose()
            db.engine.cache_clear()
            db._sessions.cache_clear()

    with ThreadPoolExecutor(1) as pool:
        added = pool.submit(asyncio.run, race()).result()
    assert sorted(added) == [False] * 5 + [True]
    assert _feed(run_id) == ["run.started"]
    # And the run's end adds no second start
    _record((_records(run_id)[1], 1))
    assert _feed(run_id) == ["run.started", "run.finished"]


def test_a_runs_end_settles_the_reports_that_ended_its_stages(stack: Stack) -> None:
    """The workflow may hear of a stage's end before the API settled the agent's report (it records the report, then
    tells Temporal, then settles it); a run read as finished must already show every stage's outcome and cost, and
    its end must follow them in the feed."""
    run_id = unique("reported")
    started, finished = _records(run_id)
    agent = unique("settled-agent")
    register_agent(agent, ["settling"])
    sql("UPDATE agents SET status = 'busy', current_task = :t WHERE name = :n", n=agent, t=f"{run_id}-1")
    _record((started, 1))
    insert = ("INSERT INTO task_attempts (id, run_id, stage, attempt, lane, skill, task_token, heartbeat_timeout, "
              "wait_timeout, input, status, reported, result, error, claimed_by, claimed_at, late_reports, "
              "cost_micros, created_at) VALUES (:id, :r, :stage, 1, 'x', 'noop', '\\x00', 30, 600, '{}', "
              "'reporting', :reported, CAST(:result AS json), NULL, :agent, now(), 0, 7, now())")
    # Given two reports recorded and on their way to Temporal: one that ended its stage, one Temporal never took
    took = StageResult(status="succeeded", summary="done", attempt=1)
    sql(insert, id=f"{run_id}-1", r=run_id, stage="only", reported="succeeded", agent=agent,
        result=took.model_dump_json())
    sql(insert, id=f"{run_id}-2", r=run_id, stage="other", reported="succeeded", agent=agent,
        result=took.model_dump_json())
    stages = [StageState(name="only", status=StageStatus.SUCCEEDED, result=took),
              StageState(name="other", status=StageStatus.FAILED, error="timed out")]
    # When the run's end is recorded before the API settled them
    _record((finished.model_copy(update={"stages": stages}), 1))
    # Then the report that ended its stage is settled, with its cost, its event, the agent's freedom and statistics
    rows = sql("SELECT id, status, cost_micros FROM task_attempts WHERE run_id = :r ORDER BY id", r=run_id)
    assert rows == [{"id": f"{run_id}-1", "status": "succeeded", "cost_micros": 7},
                    {"id": f"{run_id}-2", "status": "superseded", "cost_micros": 7}]
    assert _feed(run_id) == ["run.started", "stage.attempt.succeeded", "run.finished"]
    assert sql("SELECT status, current_task FROM agents WHERE name = :n", n=agent) == [
        {"status": "idle", "current_task": None}]
    assert sql("SELECT tasks, successes FROM agent_skill_stats WHERE agent = :n", n=agent) == [
        {"tasks": 1, "successes": 1}]
    # And recording the end again settles nothing twice
    _record((finished.model_copy(update={"stages": stages}), 1))
    assert _feed(run_id) == ["run.started", "stage.attempt.succeeded", "run.finished"]


def test_several_reports_of_one_agent_settle_at_once_with_their_sums_and_messages(stack: Stack) -> None:
    """Settling is one statement over every attempt it ends: one agent's several reports of one skill add up in its
    statistics, and each outcome reaches the feed with the error, the result's summary or the state as its
    message."""
    run_id = unique("summed")
    started, finished = _records(run_id)
    agent = unique("summing-agent")
    register_agent(agent, ["summing"])
    _record((started, 1))
    insert = ("INSERT INTO task_attempts (id, run_id, stage, attempt, lane, skill, task_token, heartbeat_timeout, "
              "wait_timeout, input, status, reported, result, error, claimed_by, claimed_at, late_reports, "
              "cost_micros, created_at) VALUES (:id, :r, :stage, 1, 'x', 'noop', '\\x00', 30, 600, '{}', "
              "'reporting', :reported, CAST(:result AS json), :error, :agent, now() - interval '2 seconds', 0, "
              ":cost, now())")
    summarised = StageResult(status="succeeded", summary="all 12 tests passed", attempt=1)
    unsummarised = StageResult(status="succeeded", summary="", attempt=1)
    failed = StageResult(status="failed", summary="3 tests failed", attempt=1)
    sql(insert, id=f"{run_id}-a", r=run_id, stage="a", reported="succeeded", agent=agent, cost=1_500_000,
        result=summarised.model_dump_json(), error=None)
    sql(insert, id=f"{run_id}-b", r=run_id, stage="b", reported="succeeded", agent=agent, cost=500_000,
        result=unsummarised.model_dump_json(), error=None)
    sql(insert, id=f"{run_id}-c", r=run_id, stage="c", reported="failed", agent=agent, cost=0,
        result=failed.model_dump_json(), error="TestsFailed: 3 tests failed")
    stages = [StageState(name="a", status=StageStatus.SUCCEEDED, result=summarised),
              StageState(name="b", status=StageStatus.SUCCEEDED, result=unsummarised),
              StageState(name="c", status=StageStatus.FAILED, result=failed, error="3 tests failed")]
    _record((finished.model_copy(update={"stages": stages, "status": RunStatus.FAILED}), 1))
    stats = sql("SELECT tasks, successes, total_seconds, cost FROM agent_skill_stats WHERE agent = :n", n=agent)
    assert len(stats) == 1 and (stats[0]["tasks"], stats[0]["successes"], stats[0]["cost"]) == (3, 2, 2.0)
    assert 6.0 <= stats[0]["total_seconds"] < 60  # three tasks claimed two seconds before they were settled
    told = sql("SELECT kind, stage, agent, message, data FROM events WHERE run_id = :r AND stage IS NOT NULL "
               "ORDER BY id", r=run_id)
    assert [(e["kind"], e["stage"], e["agent"], e["message"], e["data"]) for e in told] == [
        ("stage.attempt.succeeded", "a", agent, "all 12 tests passed", {"attempt": 1}),
        ("stage.attempt.succeeded", "b", agent, "succeeded", {"attempt": 1}),
        ("stage.attempt.failed", "c", agent, "TestsFailed: 3 tests failed", {"attempt": 1})]
