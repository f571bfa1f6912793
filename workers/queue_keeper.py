"""Keeps queued agent tasks alive until an agent claims them.

An agent task's heartbeat timeout exists to detect a dead agent. While the task still waits in its lane no agent
holds it, so the pipeline worker heartbeats it instead; waiting for an agent then never counts as a dead agent,
and the stage's start-to-close timeout still bounds the whole wait. A run cancelled before any agent claimed its
task learns it here, and the attempt is closed as cancelled.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from temporalio.client import AsyncActivityCancelledError, Client
from temporalio.service import RPCError

from core import db
from core.events import add_event
from core.models import utcnow

log = logging.getLogger(__name__)

#: How often the keeper looks for queued tasks; each task is heartbeated at a third of its own timeout.
TICK = 0.5

_DUE = text(
    "SELECT id, run_id, stage, task_token FROM task_attempts WHERE status = 'queued' "
    "AND coalesce(heartbeat_at, created_at) < now() - make_interval(secs => heartbeat_timeout / 3.0) LIMIT 500"
)


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


async def _tick(client: Client) -> None:
    async with db.session() as s:
        rows = (await s.execute(_DUE)).all()
    for task_id, run_id, stage, token in rows:
        state = "queued"
        try:
            await client.get_async_activity_handle(task_token=bytes(token)).heartbeat("waiting for an agent")
        except AsyncActivityCancelledError:
            await client.get_async_activity_handle(task_token=bytes(token)).report_cancellation()
            state = "cancelled"
        except RPCError:
            state = "superseded"  # the activity timed out or finished: this attempt is over
        async with db.session() as s:
            await s.execute(
                text(
                    "UPDATE task_attempts SET heartbeat_at = :now, status = :state, "
                    "finished_at = CASE WHEN :state = 'queued' THEN NULL ELSE :now END "
                    "WHERE id = :id AND status = 'queued'"
                ),
                {"now": utcnow(), "state": state, "id": task_id},
            )
            if state == "cancelled":
                add_event(s, "stage.cancelled", "cancelled before an agent claimed it", run_id=run_id, stage=stage)
