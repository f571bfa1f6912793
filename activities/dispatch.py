"""Dispatch activity: publish a stage's task to its capability lane, then complete asynchronously.

The activity returns at once with ``raise_complete_async``; the API later completes, fails or heartbeats it
through the task token when the agent reports. Every attempt gets its own row, so the API can tell the
current attempt from a late one and refuse the latter.

A task goes to the band of its run's priority (see ``core.topology``). A band is declared, registered in the
``lanes`` table and announced to the agents the first time this process uses it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from opentelemetry.trace import SpanKind
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from temporalio import activity

from devart.activities.selfheal import heal
from devart.core.contracts import AgentTaskInput, AgentTaskMessage, StageResult
from devart.core.database import db, tenancy
from devart.core.database.models import Lane, TaskAttempt, utcnow
from devart.core.database.tenancy import system_in
from devart.core.messaging.broker_users import amqp_user
from devart.core.messaging.topology import DEFAULT_PRIORITY, Topology, band_key, lane_name
from devart.core.telemetry import metrics
from devart.core.telemetry import tracing as telemetry
from devart.domain.attempt_states import AttemptState, movable_from
from devart.domain.events import add_event

log = logging.getLogger(__name__)

#: States in which an attempt may still be reported on; anything else is final.
OPEN_STATES = tuple(movable_from(AttemptState.SUPERSEDED))


async def _beating(work: Awaitable[AgentTaskInput]) -> AgentTaskInput:
    """``work``'s result, heartbeating meanwhile: a first embedding loads the model, which may take longer than
    the stage's heartbeat timeout."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if done:
            return task.result()
        activity.heartbeat("looking up the knowledge base")


class Dispatcher:
    """Holds the worker's AMQP connection (one per process) and the lane bands it has already declared."""

    def __init__(self, amqp_url: str, topology: Topology, on_published: Callable[[str], None] | None = None) -> None:
        self._url = amqp_url
        #: Set as every task's ``user_id``, which RabbitMQ checks: a task of ours that dies keeps it, and the
        #: dead-letter collector files it by its lane only then (``workers.dead_letters``).
        self._user = amqp_user(amqp_url)
        self._topology = topology
        #: Told each attempt's id once it waits in its lane: this worker's queue keeper keeps it alive from then on.
        self._on_published = on_published
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        #: Each organisation's task exchange, once declared.
        self._exchanges: dict[str, AbstractExchange] = {}
        self._bands: set[tuple[str, str, int]] = set()
        self._lock = asyncio.Lock()

    async def _ready(self, org: str) -> AbstractExchange:
        """The organisation's task exchange (each has its own: ``core.messaging.topology``)."""
        async with self._lock:
            if self._channel is None:
                self._connection = await aio_pika.connect_robust(self._url)
                self._channel = await self._connection.channel(publisher_confirms=True)
            if org not in self._exchanges:
                self._exchanges[org] = await self._topology.for_org(org).declare_exchanges(self._channel)
            return self._exchanges[org]

    async def _ensure_band(self, lane: str, requires: list[str], priority: int, org: str) -> None:
        """Declare the lane's band once per process, register it, and tell the agents it exists.

        The default band is announced as ``lane.declared`` with the lane as body, exactly as before priorities, so
        agents of an older release keep serving it; other bands are ``lane.band.declared`` with the band key as
        body, a type older agents ignore (they could not consume the band's queue anyway).
        """
        if (org, lane, priority) in self._bands:
            return
        await self._ready(org)
        assert self._channel is not None
        topology = self._topology.for_org(org)
        # Registered before it is declared: a worker dying in between leaves a row without a queue (agents and the
        # next attempt declare it), never a queue that nothing lists, which no clean-up would find.
        async with db.session() as s:
            await tenancy.switch(s, system_in(org))  # the lane is the organisation's
            await s.exec(  # type: ignore[call-overload]
                insert(Lane)
                .values(name=lane, requires=sorted(requires), priorities=[priority], created_at=utcnow())
                .on_conflict_do_nothing()
            )
            row = (await s.exec(select(Lane).where(Lane.name == lane, Lane.org_id == org).with_for_update())).one()
            if priority not in row.priorities:
                row.priorities = sorted({*row.priorities, priority})  # a new list: JSON columns see no mutation
                s.add(row)
        await topology.declare_lane(self._channel, lane, priority)
        kind = "lane.declared" if priority == DEFAULT_PRIORITY else "lane.band.declared"
        control = await self._channel.get_exchange(topology.control_exchange)
        await control.publish(aio_pika.Message(body=band_key(lane, priority).encode(), type=kind), routing_key="")
        self._bands.add((org, lane, priority))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @activity.defn(name="run_agent_task")
    async def run_agent_task(self, inp: AgentTaskInput) -> StageResult:
        """Record this attempt, publish it to the lane with publisher confirms, and hand completion to the API."""
        info = activity.info()
        if info.attempt > 1 and inp.self_heal != "off":
            try:
                inp = await _beating(heal(inp, info.attempt))  # the knowledge base's hints and remedies
            except Exception:  # the retry goes on as Temporal asked, without them; the log says why
                log.warning("no knowledge-base hints for %s/%s attempt %d", inp.run_id, inp.stage, info.attempt,
                            exc_info=True)
        lane = lane_name(inp.requires)
        task_id = str(uuid.uuid4())
        row = {
            "id": task_id,
            "run_id": inp.run_id,
            "stage": inp.stage,
            "attempt": info.attempt,
            "lane": lane,
            "skill": inp.skill,
            "task_token": info.task_token,
            "status": AttemptState.QUEUED.value,
            "claimed_by": None,
            "claim_id": None,
            "result": None,
            "error": None,
            "late_reports": 0,
            "created_at": utcnow(),
            "heartbeat_timeout": info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 30.0,
            "input": inp.model_dump(mode="json"), "wait_timeout": inp.wait_timeout, "waiting_reason": None,
        }
        async with db.session() as s:
            if info.attempt > 1:  # older attempts still open lost their activity to a timeout: fence them off
                await s.exec(  # type: ignore[call-overload]
                    update(TaskAttempt)
                    .where(TaskAttempt.run_id == inp.run_id, TaskAttempt.stage == inp.stage)  # type: ignore[arg-type]
                    .where(TaskAttempt.attempt < info.attempt, TaskAttempt.status.in_(OPEN_STATES))  # type: ignore[arg-type,attr-defined]
                    .values(status=AttemptState.SUPERSEDED.value, finished_at=utcnow())
                )
            stmt = insert(TaskAttempt).values(**row)
            stmt = stmt.on_conflict_do_update(index_elements=["run_id", "stage", "attempt"], set_=row)
            org = (await s.exec(stmt.returning(col(TaskAttempt.org_id)))).scalar_one()  # type: ignore[call-overload]
            kind = "stage.attempt.queued" if info.attempt == 1 else "stage.retried"
            if info.attempt > 1:
                metrics.STAGE_RETRIES.labels(inp.pipeline, inp.stage).inc()
            add_event(
                s,
                kind,
                f"attempt {info.attempt} waiting for an agent on lane {lane}",
                run_id=inp.run_id,
                stage=inp.stage,
                attempt=info.attempt,
                lane=lane,
            )
        await self._ensure_band(lane, inp.requires, inp.priority, org)
        message = AgentTaskMessage(task_id=task_id, run_id=inp.run_id, stage=inp.stage, attempt=info.attempt, lane=lane,
                                   priority=inp.priority)
        # An older agent's contract forbids unknown fields: the default band's messages stay as they were.
        body = message.model_dump_json(exclude={"priority"} if inp.priority == DEFAULT_PRIORITY else None)
        exchange = await self._ready(org)
        with telemetry.tracer().start_as_current_span(
            f"publish {lane}", kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "rabbitmq", "messaging.destination.name": lane, "devart.run_id": inp.run_id,
                        "devart.stage": inp.stage, "devart.attempt": info.attempt, "devart.priority": inp.priority},
        ):
            await exchange.publish(
                aio_pika.Message(
                    body=body.encode(),
                    content_type="application/json",
                    message_id=task_id,
                    user_id=self._user,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    priority=inp.priority,
                    type="agent.task",
                    headers=dict(telemetry.inject({})),
                ),
                routing_key=band_key(lane, inp.priority),
            )
        # From now on this worker's queue keeper keeps the attempt alive while it waits, and its first heartbeat marks
        # it as kept (``heartbeat_at``), so another worker's keeper adopts it if this one dies. Not before: an attempt
        # whose worker died between recording and publishing has no message, so it must time out and be retried;
        # it was never marked, and no keeper adopts it.
        if self._on_published is not None:
            self._on_published(task_id)
        activity.raise_complete_async()
