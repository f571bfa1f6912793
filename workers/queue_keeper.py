"""Keeps queued agent tasks alive until an agent claims them, and says when no agent can.

An agent task's heartbeat timeout exists to detect a dead agent. While the task still waits in its lane no agent
holds it, so the pipeline worker heartbeats it instead; waiting never counts as a dead agent. When no active,
online agent has the lane's capabilities, the attempt shows "waiting for an agent with capabilities …" (on the
run and in the feed), and fails with that reason once it has waited longer than the stage's ``wait_timeout``.
A run cancelled before any agent claimed its task learns it here, and the attempt is closed as cancelled.

**Who keeps which attempt.** Each worker's keeper keeps only the attempts it holds a lease on (``Leases``): the
ones its own dispatcher published, and the ones it adopted. So N workers share the work instead of each polling
every queued attempt. The lease is the attempt's ``heartbeat_at``, which its keeper moves at every heartbeat
(every third of the attempt's heartbeat timeout); the holder itself lives only in the keeper's memory, so no
column is added for it. An attempt whose ``heartbeat_at`` is older than two thirds of its heartbeat timeout has
lost its keeper (the worker died or restarted and forgot its leases): any keeper adopts it by moving
``heartbeat_at`` only if it still holds the value it read (a compare-and-set, so one keeper wins, without an
advisory lock), then heartbeats it before Temporal's timeout would retry the stage. A fresh attempt has no
``heartbeat_at`` until its keeper's first heartbeat (dispatch writes nothing after publishing), so it is due a third
of its timeout after it was created, and no other keeper adopts it before then: its worker may have died before
publishing it, and an attempt with no message must time out and be retried, not be kept alive. A handed-back attempt is
queued again under the lease it had, which its keeper keeps while an agent holds the claim.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import AsyncActivityCancelledError, Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from devart.core.database import db
from devart.core.database.models import utcnow
from devart.core.messaging.topology import can_serve, lane_requirements
from devart.core.telemetry import metrics
from devart.core.temporal_namespaces import Namespaces
from devart.domain.agents import OFFLINE_AFTER
from devart.domain.attempt_states import OPEN, AttemptState, IllegalTransition, can_move
from devart.domain.events import add_event

log = logging.getLogger(__name__)

#: How often the keeper looks for queued tasks; each task is heartbeated at a third of its own timeout.
TICK = 0.5
#: Heartbeats the keeper has on their way to Temporal at once: thousands of waiting attempts are kept within their
#: timeouts, and a slow Temporal is not flooded.
KEEP_AT_ONCE = 32
#: After this share of its heartbeat timeout without a heartbeat, a queued attempt has lost its keeper: another
#: adopts it. Its own keeper heartbeats at a third, so a third is left for adopting before Temporal's timeout.
ORPHANED_AFTER = 2 / 3

_COLUMNS = "id, run_id, stage, lane, task_token, created_at, wait_timeout, waiting_reason, org_id"
#: Of this keeper's leases, those still waiting and due for a heartbeat (a third of their timeout since the last),
#: and the ids of those that need no keeper any more (ended, or gone): with thousands waiting, a tick reads only
#: the few due, not every lease.
_DUE = text(
    f"SELECT {_COLUMNS} FROM task_attempts WHERE id = ANY(:ids) AND status = 'queued' "
    "AND coalesce(heartbeat_at, created_at) < now() - make_interval(secs => heartbeat_timeout / 3.0)"
)
_RELEASED = text("SELECT id FROM unnest(CAST(:ids AS text[])) AS leased(id) "
                 "WHERE NOT EXISTS (SELECT FROM task_attempts a WHERE a.id = leased.id AND a.status = ANY(:kept))")
_ORPHANED = text(
    f"SELECT heartbeat_at, {_COLUMNS} FROM task_attempts WHERE status = 'queued' AND heartbeat_at IS NOT NULL "
    "AND heartbeat_at < now() - make_interval(secs => heartbeat_timeout * :share) LIMIT 100"
)
_ADOPT = text(
    "UPDATE task_attempts SET heartbeat_at = now() WHERE id = :id AND status = 'queued' AND heartbeat_at = :seen "
    "RETURNING id"
)
#: Online agents by organisation: an agent serves only its own organisation's lanes.
_ONLINE = text("SELECT org_id, capabilities FROM agents WHERE active AND last_seen_at > :since")
#: Statuses in which an attempt still needs its keeper: waiting, or claimed (a hand-back queues it again).
_KEPT = tuple(sorted(s.value for s in OPEN))


class Leases:
    """The attempts one worker's keeper keeps alive: those its dispatcher published and those it adopted."""

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def take(self, task_id: str) -> None:
        self._ids.add(task_id)

    def drop(self, task_id: str) -> None:
        self._ids.discard(task_id)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)


async def keep_queued_tasks_alive(client: Namespaces, stop: asyncio.Event, leases: Leases) -> None:
    """Run until ``stop`` is set."""
    while not stop.is_set():
        try:
            await tick(client, leases)
        except Exception:  # the database or Temporal may be restarting; the next tick tries again
            log.warning("queue keeper tick failed", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), TICK)
        except TimeoutError:
            pass


def waiting_reason(lane: str) -> str:
    return f"waiting for an agent with capabilities {', '.join(sorted(lane_requirements(lane))) or '(any)'}"


async def tick(client: Namespaces, leases: Leases) -> None:
    """Heartbeat the leased attempts that are due, after adopting those whose keeper is gone."""
    async with db.session() as s:
        due = await _adopt(s, leases)
        if leases:
            ids = leases.ids()
            for (task_id,) in (await s.execute(_RELEASED, {"ids": ids, "kept": list(_KEPT)})).all():
                leases.drop(task_id)  # finished (or gone): nothing more to keep
            adopted = {row.id for row in due}
            due += [row for row in (await s.execute(_DUE, {"ids": ids})).all() if row.id not in adopted]
        if not due:
            return
        online = [(r[0], set(r[1])) for r in (await s.execute(_ONLINE, {"since": utcnow() - OFFLINE_AFTER})).all()]
    limit = asyncio.Semaphore(KEEP_AT_ONCE)

    async def keep(row: Any) -> tuple[Any, Kept]:
        async with limit:  # the token is of its organisation's namespace
            return row, await _keep(await client.for_org(row.org_id), row, online)

    await _store_all(list(await asyncio.gather(*(keep(row) for row in due))))


async def _adopt(s: AsyncSession, leases: Leases) -> list[Any]:
    """Take the lease of every attempt whose keeper is gone; returns them, all due for a heartbeat now."""
    adopted = []
    for row in (await s.execute(_ORPHANED, {"share": ORPHANED_AFTER})).all():
        if row.id in leases:
            continue  # ours, and late: it is due anyway
        won = (await s.execute(_ADOPT, {"id": row.id, "seen": row.heartbeat_at})).first()
        await s.commit()
        if won is not None:
            log.info("adopted queued attempt %s of %s/%s: its keeper is gone", row.id, row.run_id, row.stage)
            leases.take(row.id)
            adopted.append(row)
    return adopted


@dataclass(frozen=True)
class Kept:
    """What keeping one attempt came to: still waiting (with or without a reason), or ended."""

    state: AttemptState
    error: str | None
    reason: str | None


async def _keep(client: Client, row: Any, online: list[tuple[str, set[str]]]) -> Kept:
    """Heartbeat one waiting attempt, or fail it when no agent came within its wait timeout."""
    lane, token = row.lane, row.task_token
    created_at: datetime = row.created_at
    handle = client.get_async_activity_handle(task_token=bytes(token))
    servable = any(org == row.org_id and can_serve(caps, lane) for org, caps in online)
    new_reason = None if servable else waiting_reason(lane)
    state, error = AttemptState.QUEUED, None
    try:
        if new_reason and utcnow() - created_at > timedelta(seconds=row.wait_timeout):
            error = f"no active agent with capabilities {lane} came within {row.wait_timeout:.0f}s"
            await handle.fail(ApplicationError(error, type="NoAgentAvailable", non_retryable=True))
            state = AttemptState.FAILED
        else:
            await handle.heartbeat(new_reason or "waiting for a free agent")
    except AsyncActivityCancelledError:
        await handle.report_cancellation()
        state = AttemptState.CANCELLED
    except RPCError:
        state = AttemptState.SUPERSEDED  # the activity timed out or finished: this attempt is over
    if state != AttemptState.QUEUED and not can_move(AttemptState.QUEUED, state):
        raise IllegalTransition(row.id, AttemptState.QUEUED, state)
    return Kept(state, error, new_reason)


#: The attempts still waiting whose reason did not change: one statement moves all their leases.
_BEATEN = text("UPDATE task_attempts SET heartbeat_at = :now WHERE id = ANY(:ids) AND status = 'queued'")
_CHANGED = text(
    "UPDATE task_attempts SET heartbeat_at = :now, status = :state, waiting_reason = :reason, "
    "error = coalesce(:error, error), finished_at = :finished WHERE id = :id AND status = 'queued'"
)


async def _store_all(kept: list[tuple[Any, Kept]]) -> None:
    """Record every heartbeat of a tick in one transaction: the plain ones in one statement, and each attempt that
    ended or whose waiting reason changed on its own, with its feed event."""
    now = utcnow()
    plain = [row.id for row, k in kept if k.state == AttemptState.QUEUED and k.reason == row.waiting_reason]
    async with db.session() as s:
        if plain:
            await s.execute(_BEATEN, {"now": now, "ids": plain})
        for row, k in kept:
            if k.state == AttemptState.QUEUED and k.reason == row.waiting_reason:
                continue
            await s.execute(_CHANGED, {"now": now, "state": k.state.value, "id": row.id, "reason": k.reason,
                                       "error": k.error, "finished": None if k.state == "queued" else now})
            if k.state == "cancelled":
                add_event(s, "stage.cancelled", "cancelled before an agent claimed it", run_id=row.run_id,
                          stage=row.stage)
            elif k.state == "failed":
                add_event(s, "stage.attempt.failed", k.error or "failed", run_id=row.run_id, stage=row.stage)
            elif k.reason:
                add_event(s, "stage.waiting", k.reason, run_id=row.run_id, stage=row.stage)


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
