"""Dispatch activity: publish a stage's task to its capability lane, then complete asynchronously.

The activity returns at once with ``raise_complete_async``; the API later completes, fails or heartbeats it
through the task token when the agent reports. Every attempt gets its own row, so the API can tell the
current attempt from a late one and refuse the latter.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from opentelemetry.trace import SpanKind
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from temporalio import activity

from core import db, metrics, telemetry
from core.contracts import AgentTaskInput, AgentTaskMessage, StageResult
from core.events import add_event
from core.models import Lane, TaskAttempt, utcnow
from core.topology import Topology, lane_name

#: States in which an attempt may still be reported on; anything else is final.
OPEN_STATES = ("queued", "claimed")


class Dispatcher:
    """Holds the worker's AMQP connection (one per process) and the lanes it has already declared."""

    def __init__(self, amqp_url: str, topology: Topology) -> None:
        self._url = amqp_url
        self._topology = topology
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lanes: set[str] = set()
        self._lock = asyncio.Lock()

    async def _ready(self) -> AbstractExchange:
        async with self._lock:
            if self._exchange is None:
                self._connection = await aio_pika.connect_robust(self._url)
                self._channel = await self._connection.channel(publisher_confirms=True)
                self._exchange = await self._topology.declare_exchanges(self._channel)
            return self._exchange

    async def _ensure_lane(self, lane: str, requires: list[str]) -> None:
        """Declare the lane once per process, register it, and tell the agents it exists."""
        if lane in self._lanes:
            return
        await self._ready()
        assert self._channel is not None
        await self._topology.declare_lane(self._channel, lane)
        async with db.session() as s:
            await s.exec(  # type: ignore[call-overload]
                insert(Lane).values(name=lane, requires=sorted(requires), created_at=utcnow()).on_conflict_do_nothing()
            )
        control = await self._channel.get_exchange(self._topology.control_exchange)
        await control.publish(aio_pika.Message(body=lane.encode(), type="lane.declared"), routing_key="")
        self._lanes.add(lane)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @activity.defn(name="run_agent_task")
    async def run_agent_task(self, inp: AgentTaskInput) -> StageResult:
        """Record this attempt, publish it to the lane with publisher confirms, and hand completion to the API."""
        info = activity.info()
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
            "status": "queued",
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
            # Older attempts still open lost their activity to a timeout: fence them off.
            await s.exec(  # type: ignore[call-overload]
                update(TaskAttempt)
                .where(TaskAttempt.run_id == inp.run_id, TaskAttempt.stage == inp.stage)  # type: ignore[arg-type]
                .where(TaskAttempt.attempt < info.attempt, TaskAttempt.status.in_(OPEN_STATES))  # type: ignore[arg-type,attr-defined]
                .values(status="superseded", finished_at=utcnow())
            )
            stmt = insert(TaskAttempt).values(**row)
            stmt = stmt.on_conflict_do_update(index_elements=["run_id", "stage", "attempt"], set_=row)
            await s.exec(stmt)  # type: ignore[call-overload]
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
        await self._ensure_lane(lane, inp.requires)
        message = AgentTaskMessage(task_id=task_id, run_id=inp.run_id, stage=inp.stage, attempt=info.attempt, lane=lane)
        exchange = await self._ready()
        with telemetry.tracer().start_as_current_span(
            f"publish {lane}", kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "rabbitmq", "messaging.destination.name": lane, "devart.run_id": inp.run_id,
                        "devart.stage": inp.stage, "devart.attempt": info.attempt},
        ):
            await exchange.publish(
                aio_pika.Message(
                    body=message.model_dump_json().encode(),
                    content_type="application/json",
                    message_id=task_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type="agent.task",
                    headers=dict(telemetry.inject({})),
                ),
                routing_key=lane,
            )
        activity.raise_complete_async()
