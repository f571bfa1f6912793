"""Keeps queued agent tasks alive until an agent claims them, and says when no agent can.

An agent task's heartbeat timeout exists to detect a dead agent. While the task still waits in its lane no agent
holds it, so the pipeline worker heartbeats it instead; waiting never counts as a dead agent. When no active,
online agent has the lane's capabilities, the attempt shows "waiting for an agent with capabilities …" (on the
run and in the feed), and fails with that reason once it has waited longer than the stage's ``wait_timeout``.
A run cancelled before any agent claimed its task learns it here, and the attempt is closed as cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import text
from temporalio.client import AsyncActivityCancelledError, Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from core import db, metrics
from core.agents import OFFLINE_AFTER
from core.events import add_event
from core.models import utcnow
from core.topology import can_serve, lane_requirements

log = logging.getLogger(__name__)

#: How often the keeper looks for queued tasks; each task is heartbeated at a third of its own timeout.
TICK = 0.5

_DUE = text(
    "SELECT id, run_id, stage, lane, task_token, created_at, wait_timeout, waiting_reason FROM task_attempts "
    "WHERE status = 'queued' AND heartbeat_at IS NOT NULL "  # NULL: recorded, not published yet (or never)
    "AND heartbeat_at < now() - make_interval(secs => heartbeat_timeout / 3.0) LIMIT 500"
)
_ONLINE = text("SELECT capabilities FROM agents WHERE active AND last_seen_at > :since")


async def keep_queued_tasks_alive(client: Client, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set."""
    while not stop.is_set():
        try:
            await _tick(client)
        except Exception:  # the database or Temporal may be restarting; the next tick tries again
            log.warning("queue keeper tick failed", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), TICK)
        except TimeoutError:
            pass


def waiting_reason(lane: str) -> str:
    return f"waiting for an agent with capabilities {', '.join(sorted(lane_requirements(lane))) or '(any)'}"


async def _tick(client: Client) -> None:
    async with db.session() as s:
        rows = (await s.execute(_DUE)).all()
        if not rows:
            return
        online = [set(r[0]) for r in (await s.execute(_ONLINE, {"since": utcnow() - OFFLINE_AFTER})).all()]
    for task_id, run_id, stage, lane, token, created_at, wait_timeout, reason in rows:
        handle = client.get_async_activity_handle(task_token=bytes(token))
        servable = any(can_serve(caps, lane) for caps in online)
        new_reason = None if servable else waiting_reason(lane)
        state, error = "queued", None
        try:
            if new_reason and utcnow() - created_at > timedelta(seconds=wait_timeout):
                error = f"no active agent with capabilities {lane} came within {wait_timeout:.0f}s"
                await handle.fail(ApplicationError(error, type="NoAgentAvailable", non_retryable=True))
                state = "failed"
            else:
                await handle.heartbeat(new_reason or "waiting for a free agent")
        except AsyncActivityCancelledError:
            await handle.report_cancellation()
            state = "cancelled"
        except RPCError:
            state = "superseded"  # the activity timed out or finished: this attempt is over
        await _store(task_id, run_id, stage, state, error, reason, new_reason)


async def _store(
    task_id: str, run_id: str, stage: str, state: str, error: str | None, old_reason: str | None, new_reason: str | None
) -> None:
    now = utcnow()
    async with db.session() as s:
        await s.execute(
            text(
                "UPDATE task_attempts SET heartbeat_at = :now, status = :state, waiting_reason = :reason, "
                "error = coalesce(:error, error), finished_at = :finished WHERE id = :id AND status = 'queued'"
            ),
            {
                "now": now,
                "state": state,
                "id": task_id,
                "reason": new_reason,
                "error": error,
                "finished": None if state == "queued" else now,
            },
        )
        if state == "cancelled":
            add_event(s, "stage.cancelled", "cancelled before an agent claimed it", run_id=run_id, stage=stage)
        elif state == "failed":
            add_event(s, "stage.attempt.failed", error or "failed", run_id=run_id, stage=stage)
        elif new_reason and new_reason != old_reason:
            add_event(s, "stage.waiting", new_reason, run_id=run_id, stage=stage)


#: How often lane depth and agents by status are sampled into the worker's gauges.
SAMPLE_EVERY = 5.0


async def sample_gauges(stop: asyncio.Event) -> None:
    """Keep the lane-depth and agents-by-status gauges current until ``stop`` is set."""
    while not stop.is_set():
        try:
            async with db.session() as s:
                lanes = (
                    await s.execute(
                        text("SELECT lane, count(*) FROM task_attempts WHERE status = 'queued' GROUP BY lane")
                    )
                ).all()
                agents = (await s.execute(text("SELECT active, status, last_seen_at FROM agents"))).all()
            metrics.LANE_QUEUED.clear()
            for lane, count in lanes:
                metrics.LANE_QUEUED.labels(lane).set(count)
            counts: dict[str, int] = {}
            for active, status, seen in agents:
                shown = "inactive" if not active else status if seen and utcnow() - seen <= OFFLINE_AFTER else "offline"
                counts[shown] = counts.get(shown, 0) + 1
            metrics.AGENTS.clear()
            for status, count in counts.items():
                metrics.AGENTS.labels(status).set(count)
        except Exception:  # sampling must never take the worker down
            log.warning("sampling gauges failed", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
        except TimeoutError:
            pass
