"""The agent worker: consumes every lane it can serve, claims tasks through the API and runs their skills.

A message is acknowledged only after the API accepted the task's outcome (or refused it for good), so an agent
that dies mid-task leaves its message to RabbitMQ and its attempt to Temporal's heartbeat timeout. A keepalive
call tells the API the agent is alive and tells the agent whether it is still active: a deactivated agent stops
taking tasks within one keepalive interval. On SIGTERM the agent drains: it takes nothing new, lets running
tasks finish within a grace period, then hands the rest back so another agent picks them up. A handed-back task
is queued again within its attempt and its message returned to the lane, so a drain or a deactivation with
hand-back never uses up one of the stage's retries. An idle agent stops at once on SIGTERM: neither a keepalive
nor its goodbye to the API (which may be stopping beside it) holds it up.

A lane has a queue per priority band in use (``core.topology``); the agent consumes every band of every lane it
serves, and ``workers.intake`` starts what was delivered highest priority first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from devart.core.bounds import skills_problem
from devart.core.contracts import AgentTaskMessage
from devart.core.messaging.broker_users import amqp_user
from devart.core.messaging.topology import Topology, can_serve, parse_band_key
from devart.core.telemetry import tracing as telemetry
from devart.sandboxes.base import Sandbox
from devart.sandboxes.factory import package_index_for
from devart.workers.agent_client import AgentClient, Refused
from devart.workers.dead_letters import dead_letter
from devart.workers.execution import Execution, Runner
from devart.workers.intake import Intake, Settle
from devart.workers.skills.base import Skill
from devart.workers.skills.registry import SKILLS

log = logging.getLogger("devart.agent")

#: Control broadcasts announcing a lane's band: the default band (body: the lane) and the others (body: band key).
BAND_ANNOUNCEMENTS = ("lane.declared", "lane.band.declared")
#: How often the agent re-reads the lane list, in case it missed a control broadcast while reconnecting.
LANE_REFRESH_SECONDS = 30.0
#: How long a stopping agent waits for the API to take its "draining" and "offline" notes.
GOODBYE_SECONDS = 1.0


class Agent:
    def __init__(
        self,
        name: str,
        capabilities: list[str],
        client: AgentClient,
        sandbox: Sandbox,
        amqp_url: str,
        topology: Topology,
        *,
        concurrency: int = 1,
        heartbeat_interval: float | None = None,
        keepalive_interval: float = 2.0,
        drain_grace: float = 30.0,
        skills: dict[str, Skill] | None = None,
        own_broker_user: bool = False,
    ) -> None:
        """``own_broker_user``: ``amqp_url`` holds the agent's own RabbitMQ user, which may not declare the shared
        dead-letter exchange and queue (``Topology.agent_permissions``), so the agent leaves them to devart's
        services."""
        self.name = name
        self.capabilities = set(capabilities)
        self.client = client
        self.sandbox = sandbox
        self.skills: dict[str, Skill] = {**SKILLS, **(skills or {})}
        if problem := skills_problem(self.skills):  # the API would refuse every keepalive: say so at the start
            raise ValueError(f"agent {name}: {problem}")
        self._amqp_url = amqp_url
        self._topology = topology
        self._dead_letters = not own_broker_user
        self._instance = uuid.uuid4().hex[:8]
        self._concurrency = concurrency
        self._intake = Intake(concurrency, self._take)
        self._runner = Runner(name, client, sandbox, self.skills, heartbeat_interval)
        self._keepalive_interval = keepalive_interval
        self._drain_grace = drain_grace
        self._accepting = True
        self._active = True
        self._executions: dict[str, Execution] = {}
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None

    @property
    def status(self) -> str:
        if not self._accepting:
            return "draining"
        return "busy" if self._executions else "idle"

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain; the package index proxy runs as long (``network: packages``)."""
        async with package_index_for(self.sandbox, self.name):
            await self._serve(stop)

    async def _serve(self, stop: asyncio.Event) -> None:
        self._connection = await aio_pika.connect_robust(self._amqp_url)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._concurrency)
        await self._topology.declare_exchanges(self._channel, dead_letters=self._dead_letters)
        control = await self._channel.declare_queue(self._topology.control_queue(self.name, self._instance),
                                                    exclusive=True, auto_delete=True)
        await control.bind(self._topology.control_exchange)
        await control.consume(self._on_control, no_ack=True)
        await _unless_stopped(self._begin(), stop)  # a refusal here ends the agent; a stop, its start
        ticks = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._keepalive_interval)
            if stop.is_set():
                break
            ticks += 1
            refresh = ticks * self._keepalive_interval >= LANE_REFRESH_SECONDS
            ticks = 0 if refresh else ticks
            # The API may be restarting, and the client retries a call for minutes: a stop must not wait for that.
            await _unless_stopped(self._tick(refresh), stop)
        await self._drain()

    async def _begin(self) -> None:
        await self._keepalive()
        await self._refresh_lanes()
        log.info("agent %s serving lanes %s", self.name, self._intake.bands)

    async def _tick(self, refresh: bool) -> None:
        with contextlib.suppress(Exception):  # the API may be restarting: try again next tick
            await self._keepalive()
            if refresh:
                await self._refresh_lanes()

    async def _keepalive(self) -> None:
        reply = await self.client.keepalive(self.status, sorted(self.skills))
        if reply["active"] != self._active:
            self._active = bool(reply["active"])
            log.info("agent %s %s", self.name, "activated" if self._active else "deactivated")
        await (self._start_consuming() if self._active and self._accepting else self._stop_consuming())
        if reply["handback"]:
            for execution in self._executions.values():
                execution.hand_back("agent was deactivated with hand-back")

    async def _drain(self) -> None:
        """Stop taking tasks, give running ones the grace period, then hand back what is left."""
        self._accepting = False
        log.info("agent %s draining (%d running)", self.name, len(self._executions))
        await self._stop_consuming()
        if self._intake.running:  # an idle agent goes straight to "offline"
            await self._goodbye("draining")
            _, pending = await asyncio.wait(self._intake.running, timeout=self._drain_grace)
            for execution in self._executions.values():
                execution.hand_back(f"agent is shutting down (grace of {self._drain_grace:.0f}s over)")
            if pending:
                await asyncio.wait(pending)
        await self._goodbye("offline")
        if self._connection is not None:
            await self._connection.close()  # unacked messages go back to their lanes

    async def _goodbye(self, status: str) -> None:
        """Tell the API the agent is draining or gone, if it answers soon: it may be stopping too (``devart down``),
        and it shows a silent agent offline after ``core.agents.OFFLINE_AFTER`` anyway."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.keepalive(status, sorted(self.skills)), GOODBYE_SECONDS)

    async def _refresh_lanes(self) -> None:
        for key in await self.client.lanes():
            await self._serve_band(*parse_band_key(key))

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        if message.type in BAND_ANNOUNCEMENTS:
            await self._serve_band(*parse_band_key(message.body.decode()))

    async def _serve_band(self, lane: str, priority: int) -> None:
        if self._intake.serves(lane, priority) or not can_serve(self.capabilities, lane) or self._channel is None:
            return
        queue = await self._topology.declare_lane(self._channel, lane, priority, dead_letters=self._dead_letters)
        await self._intake.serve(lane, priority, queue)

    async def _start_consuming(self) -> None:
        if self._accepting:
            await self._intake.open()

    async def _stop_consuming(self) -> None:
        await self._intake.close()

    async def _take(self, message: AbstractIncomingMessage) -> Settle:
        """Run one delivered task message; the intake settles it as this says once it has chosen the next."""
        if not (self._accepting and self._active):
            return Settle.REQUEUE  # delivered before we stopped consuming: leave it to others
        try:
            envelope = AgentTaskMessage.model_validate_json(message.body)
        except ValidationError as exc:
            await dead_letter(self._channel, self._topology, message, f"unreadable task message: {exc.errors()[0]}",
                              user_id=amqp_user(self._amqp_url))  # RabbitMQ checks it: the letter is ours
            return Settle.SETTLED
        parent = telemetry.extract(message.headers)
        attributes: dict[str, str | int] = {
            "devart.run_id": envelope.run_id,
            "devart.stage": envelope.stage,
            "devart.attempt": envelope.attempt,
            "devart.agent": self.name,
            "devart.priority": envelope.priority,
            "messaging.destination.name": envelope.lane,
        }
        with telemetry.tracer().start_as_current_span(
            "agent task", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ):
            return await self._claim_and_run(envelope)

    async def _claim_and_run(self, envelope: AgentTaskMessage) -> Settle:
        try:
            with telemetry.tracer().start_as_current_span("claim"):
                task = await self.client.claim(envelope.task_id)
        except Refused as exc:
            if exc.status_code in (401, 403):
                # Refused because of *us* (deactivated, key rotated): the task is fine, leave it to other agents.
                log.warning("cannot claim %s: %s", envelope.task_id, exc.detail)
                await self._stop_consuming()
                return Settle.REQUEUE
            log.info("task %s not ours: %s", envelope.task_id, exc.detail)
            return Settle.ACK
        log.info("claimed %s/%s attempt %s (priority %s)", task.run_id, task.stage, task.attempt, task.priority)
        execution = Execution(task=task)
        try:
            await self._execute(execution)
        except Refused as exc:
            log.warning("report on %s/%s refused: %s", task.run_id, task.stage, exc.detail)
        # A task handed back is queued again on the API's side: its message goes back for another agent to claim.
        return Settle.REQUEUE if execution.handed_back else Settle.ACK

    async def _execute(self, execution: Execution) -> None:
        self._executions[execution.task.task_id] = execution
        try:
            await self._runner.execute(execution)
        finally:
            del self._executions[execution.task.task_id]


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Await ``work`` (its error is raised), or cancel it as soon as ``stop`` is set."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopped):
        pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
