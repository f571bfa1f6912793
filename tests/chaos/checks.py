"""What must hold after a chaos batch, and the figures that say how the stack coped.

Every planned run ended as designed in the API (run and stages), in Temporal (the workflow's status) and in the feed
(its start and end recorded exactly once); no agent's result was applied twice (one succeeded or failed attempt per
stage, the one the run's stage shows, counted once in the feed and in the agent's statistics); after the product's
own sweep no sandbox, artifact folder, mounted volume or sandboxed process of the batch is left, and no run of the
batch's pipelines is still running (not even one the API recorded but never started); and every part of the stack
runs exactly once. ``verify`` returns the problems (empty when all hold) beside the figures.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.service import RPCError

from devart.core.database import db
from devart.core.settings import SweepSettings
from devart.core.temporal import connect
from devart.sandboxes import artifacts
from devart.sandboxes.layout import read_handles
from tests.chaos.clients import until
from tests.chaos.harness import Batch, Harness, TrackedRun
from tests.chaos.plan import EXPECTED
from tests.chaos.procfs import mounts_under, sandbox_processes, stack_processes

#: Feed events a run records once in its life.
ONCE = ("run.requested", "run.started", "run.finished")
#: Seconds the sweep may take to get its turn (a worker may hold the sweeper's lock) and finish.
SWEEP_DEADLINE = 60.0


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def _label(run: TrackedRun) -> str:
    return f"{run.run_id} ({run.planned.kind}, {run.planned.ticket})"


async def _get(api: httpx.AsyncClient, path: str, **params: Any) -> Any:
    for _ in range(20):  # the API was restarted a moment ago: a stale pooled connection may break once
        try:
            r = await api.get(path, params=params)
            r.raise_for_status()
            return r.json()
        except httpx.TransportError:
            continue
    raise AssertionError(f"GET {path} kept failing")


async def verify(h: Harness, *, sandbox_root: Path, temporal_db: Path) -> Verdict:
    """Check the batch ``h`` ran; ``sandbox_root`` is the local backend's root, ``temporal_db`` Temporal's db file."""
    v = Verdict()
    batch = h.batch
    runs = [r for r in batch.runs if r.run_id]
    v.problems += [f"run {r.planned.ticket} ({r.planned.kind}) {r.how}" for r in batch.runs if not r.run_id]
    v.problems += [f"run {run_id} still running at the deadline (stuck)" for run_id in batch.unfinished]
    views = {r.run_id: await _get(h.api, f"/v1/runs/{r.run_id}") for r in runs}
    await _end_states(h, runs, views, v)
    await _applied_once(h, runs, views, v)
    await _left_behind(h, runs, sandbox_root, v)
    await _none_running(h, v)
    _processes(h, temporal_db, v)
    _figures(batch, runs, views, v)
    return v


async def _end_states(h: Harness, runs: list[TrackedRun], views: dict[Any, Any], v: Verdict) -> None:
    client = await h.temporal.client()
    for run in runs:
        status, workflow_status, stages = EXPECTED[run.planned.kind]
        view = views[run.run_id]
        if view["status"] != status:
            v.problems.append(f"{_label(run)}: the API says {view['status']}, expected {status} "
                              f"(error: {view.get('error')})")
        got = {s["name"]: s["status"] for s in view["stages"]}
        if got != stages:
            errors = {s["name"]: s.get("error") for s in view["stages"] if s.get("error")}
            v.problems.append(f"{_label(run)}: stages {got}, expected {stages} (errors: {errors})")
        try:
            described = await client.get_workflow_handle(str(run.run_id)).describe()
        except RPCError as exc:
            v.problems.append(f"{_label(run)}: Temporal has no workflow for it ({exc.message}); "
                              f"the API says {view['status']}, started by the harness as: {run.how}")
        else:
            found = described.status.name if described.status else None
            if found != workflow_status:
                v.problems.append(f"{_label(run)}: the workflow is {found}, expected {workflow_status}")
        events = await _get(h.api, "/v1/events", run_id=run.run_id, limit=1000)
        counts = Counter(e["kind"] for e in events)
        for kind in ONCE:
            if counts[kind] != 1:
                v.problems.append(f"{_label(run)}: {counts[kind]} '{kind}' events in the feed, expected 1")


async def _applied_once(h: Harness, runs: list[TrackedRun], views: dict[Any, Any], v: Verdict) -> None:
    """One result per stage, the one the run shows, counted once in the feed and in the agents' statistics.

    A stage that succeeded has exactly one succeeded attempt, its last one, whose number and agent the stage's result
    carries; a failed stage ends with its failed attempt; a cancelled or skipped stage has no succeeded attempt.
    """
    ids = [r.run_id for r in runs]
    rows = await h.db.rows("SELECT run_id, stage, attempt, status, claimed_by FROM task_attempts "
                           "WHERE run_id = ANY(:ids) ORDER BY attempt", ids=ids)
    events = await h.db.rows("SELECT run_id, stage, count(*) AS n FROM events WHERE run_id = ANY(:ids) "
                             "AND kind = 'stage.attempt.succeeded' GROUP BY run_id, stage", ids=ids)
    succeeded_events = {(e["run_id"], e["stage"]): e["n"] for e in events}
    double = 0
    for run in runs:
        for stage in views[run.run_id]["stages"]:
            mine = [r for r in rows if r["run_id"] == run.run_id and r["stage"] == stage["name"]]
            attempts = [(r["attempt"], r["status"], r["claimed_by"]) for r in mine]
            won = [r for r in mine if r["status"] == "succeeded"]
            where = f"{_label(run)} stage {stage['name']}"
            told = succeeded_events.get((run.run_id, stage["name"]), 0)
            if len(won) > 1 or told > len(won) or (won and stage["status"] != "succeeded"):
                double += 1
                v.problems.append(f"{where} ({stage['status']}): a result applied twice or in vain: attempts "
                                  f"{attempts}, {told} 'stage.attempt.succeeded' events")
                continue
            result = stage.get("result")
            if stage["status"] not in ("succeeded", "failed") or not result:
                continue
            last = mine[-1] if mine else None
            final = (last["attempt"], last["status"], last["claimed_by"]) if last else None
            expected = (result["attempt"], stage["status"], result["agent"])
            if final != expected or stage.get("attempts") != result["attempt"]:
                v.problems.append(f"{where} is {stage['status']} with attempt {result['attempt']} of "
                                  f"{result['agent']} (the stage counts {stage.get('attempts')} attempts), but "
                                  f"the attempts table ends with {final}: {attempts}")
    outcomes = await h.db.rows("SELECT count(*) AS n FROM task_attempts WHERE claimed_by = ANY(:a) "
                               "AND status IN ('succeeded', 'failed')", a=h.agents)
    counted = await h.db.rows("SELECT coalesce(sum(tasks), 0) AS n FROM agent_skill_stats WHERE agent = ANY(:a)",
                              a=h.agents)
    if outcomes[0]["n"] != counted[0]["n"]:
        double += 1
        v.problems.append(f"the agents' statistics count {counted[0]['n']} tasks, the attempts table "
                          f"{outcomes[0]['n']} reported outcomes")
    v.figures["double_applied"] = double


def _sweep_once(address: str) -> dict[str, str] | None:
    """One sweep by the product's sweeper, on its own event loop (the database engine is per loop).

    Without a grace period: the batch is over, so no run is being started, and whatever has no run is left over.
    """
    from devart.core.temporal_namespaces import Namespaces
    from devart.workers.sweeper import sweep_if_alone

    async def sweep() -> dict[str, str] | None:
        try:
            result = await sweep_if_alone(Namespaces(await connect(address)), SweepSettings(grace_seconds=0))
            return None if result is None else result.removed
        finally:
            await db.engine().dispose()

    db.engine.cache_clear()
    db._sessions.cache_clear()
    try:
        return asyncio.run(sweep())
    finally:
        db.engine.cache_clear()
        db._sessions.cache_clear()


async def _left_behind(h: Harness, runs: list[TrackedRun], root: Path, v: Verdict) -> None:
    """Sandboxes a run lost track of (a provision replayed after the worker was killed) wait for the sweep: count
    them, sweep once, and then nothing of the batch may be left on disk or running."""
    ids = {str(r.run_id) for r in runs}

    def mine() -> list[str]:
        return [handle.id for handle in read_handles(root, "local") if handle.run_id in ids]

    v.figures["sandboxes_until_swept"] = len(await asyncio.to_thread(mine))
    removed: dict[str, str] | None = None
    end = asyncio.get_running_loop().time() + SWEEP_DEADLINE
    while removed is None and asyncio.get_running_loop().time() < end:
        removed = await asyncio.to_thread(_sweep_once, h.temporal.address)
        if removed is None:
            await asyncio.sleep(0.5)  # a worker holds the sweeper's lock: it is sweeping, take the next turn
    if removed is None:
        v.problems.append(f"the sweeper's lock stayed taken for {SWEEP_DEADLINE:.0f}s")
    left = await asyncio.to_thread(mine)
    stored = set(await asyncio.to_thread(artifacts.runs, root)) & ids
    prefixes = [f"{root}/{run_id[:40]}-" for run_id in ids]  # a sandbox's folder starts with its run's id
    processes: list[str] = []

    async def gone() -> bool:  # a process the sweep killed a moment ago may not have exited yet
        processes[:] = [p for p in sandbox_processes(root) if any(prefix in p for prefix in prefixes)]
        return not processes

    with suppress(TimeoutError):
        await until(gone, deadline=10, what="the batch's sandboxed processes to exit")
    mounted = [m for m in mounts_under(root) if any(m.startswith(prefix) for prefix in prefixes)]
    v.figures.update(sandboxes_left=len(left), artifacts_left=len(stored), mounts_left=len(mounted),
                     sandbox_processes_left=len(processes))
    if left:
        v.problems.append(f"sandboxes left after the sweep: {left}")
    if stored:
        v.problems.append(f"artifact folders left after the sweep: {sorted(stored)}")
    if processes:
        v.problems.append(f"sandboxed processes still running: {processes}")
    if mounted:
        v.problems.append(f"filesystems still mounted under the sandbox root: {mounted}")


async def _none_running(h: Harness, v: Verdict) -> None:
    """After the sweep no run of the batch's pipelines is running, not even one the API recorded without starting
    its workflow: those are failed, and their end is in the feed once."""
    pipelines = list(h.batch.pipelines.values())
    going = await h.db.rows("SELECT id FROM runs WHERE pipeline = ANY(:p) AND status = 'running'", p=pipelines)
    v.problems += [f"run {r['id']} is still running after the batch and the sweep" for r in going]
    orphans = h.batch.orphaned_starts
    ended = await h.db.rows("SELECT r.id, r.status, (SELECT count(*) FROM events e WHERE e.run_id = r.id AND "
                            "e.kind = 'run.finished') AS ends FROM runs r WHERE r.id = ANY(:o)", o=orphans)
    v.problems += [f"run {r['id']}, recorded but never started, is {r['status']} with {r['ends']} 'run.finished' "
                   "events (expected failed, 1)" for r in ended if (r["status"], r["ends"]) != ("failed", 1)]
    v.figures["orphaned_starts"] = len(orphans)


def _processes(h: Harness, temporal_db: Path, v: Verdict) -> None:
    found = stack_processes(h.target.env["DEVART_HOME"], temporal_db)
    duplicates = {key: n for key, n in found.items() if n > 1}
    missing = [key for key in ["temporal", "api", "agents-api", "worker", *(f"agent {a}" for a in h.agents)]
               if not found[key]]
    v.figures["duplicate_processes"] = sum(n - 1 for n in duplicates.values())
    if duplicates:
        v.problems.append(f"processes running more than once: {duplicates}")
    if missing:
        v.problems.append(f"parts not running after the batch: {missing}")
    v.problems += [f"{k.part} did not come back after its kill: {k.error}" for k in h.batch.kills if k.error]


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"n": len(values), "p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def _figures(batch: Batch, runs: list[TrackedRun], views: dict[Any, Any], v: Verdict) -> None:
    v.figures.update(
        seed=batch.plan.seed, seconds=batch.seconds, planned=len(batch.runs),
        kinds=dict(Counter(r.planned.kind for r in batch.runs)),
        end_states=dict(Counter(views[r.run_id]["status"] for r in runs)),
        wrong_end_states=sum(1 for r in runs if views[r.run_id]["status"] != EXPECTED[r.planned.kind][0]),
        adopted_starts=sum(1 for r in runs if r.how == "adopted"), refused_starts=batch.refused_starts,
        attempts=sum(len(s["attempt_log"]) for r in runs for s in views[r.run_id]["stages"]),
        retried_stages=sum(1 for r in runs for s in views[r.run_id]["stages"] if len(s["attempt_log"]) > 1),
        late_reports=sum(a["late_reports"] for r in runs for s in views[r.run_id]["stages"] for a in s["attempt_log"]),
        kills=[{"part": k.part, "role": k.role, "in_flight": k.in_flight, "outage_s": k.outage,
                "back_after_s": k.back_after, "error": k.error} for k in batch.kills],
        recovery_s={role: _summary([k.back_after for k in batch.kills if k.role == role and k.back_after is not None])
                    for role in sorted({k.role for k in batch.kills})},
    )
    v.figures["run_seconds"] = _summary([_when(views[r.run_id]["finished_at"]) - _when(views[r.run_id]["created_at"])
                                         for r in runs if views[r.run_id].get("finished_at")])


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()
