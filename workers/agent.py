"""The agent worker: consumes every lane it can serve, claims tasks through the API and runs their skills.

A message is acknowledged only after the API accepted the task's outcome (or refused it for good), so an agent
that dies mid-task leaves its message to RabbitMQ and its attempt to Temporal's heartbeat timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from pydantic import ValidationError

from core.contracts import AgentTaskMessage, StageResult, TaskDetail
from core.errors import SkillError
from core.topology import Topology, can_serve
from sandboxes.base import Sandbox
from workers.agent_client import AgentClient, Refused
from workers.skills.base import SkillContext
from workers.skills.registry import get_skill

log = logging.getLogger("devart.agent")

#: How often the agent re-reads the lane list, in case it missed a control broadcast while reconnecting.
LANE_REFRESH_SECONDS = 30.0


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
    ) -> None:
        self.name = name
        self.capabilities = set(capabilities)
        self.client = client
        self.sandbox = sandbox
        self._amqp_url = amqp_url
        self._topology = topology
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._heartbeat_interval = heartbeat_interval
        self._lanes: set[str] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then stop taking tasks and let the current ones finish."""
        self._connection = await aio_pika.connect_robust(self._amqp_url)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._concurrency)
        await self._topology.declare_exchanges(self._channel)
        control = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await control.bind(self._topology.control_exchange)
        await control.consume(self._on_control, no_ack=True)
        await self._refresh_lanes()
        log.info("agent %s serving lanes %s", self.name, sorted(self._lanes))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LANE_REFRESH_SECONDS)
            if not stop.is_set():
                with contextlib.suppress(Exception):
                    await self._refresh_lanes()
        await self._channel.close()  # stops deliveries; unacked messages go back to their lanes
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self._connection.close()

    async def _refresh_lanes(self) -> None:
        for lane in await self.client.lanes():
            await self._serve_lane(lane)

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        lane = message.body.decode()
        if message.type == "lane.declared" and can_serve(self.capabilities, lane):
            await self._serve_lane(lane)

    async def _serve_lane(self, lane: str) -> None:
        if lane in self._lanes or not can_serve(self.capabilities, lane) or self._channel is None:
            return
        self._lanes.add(lane)
        queue = await self._topology.declare_lane(self._channel, lane)
        await queue.consume(self._on_task)

    async def _on_task(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            async with self._slots:
                await self._handle(message)
        finally:
            if task is not None:
                self._running.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = AgentTaskMessage.model_validate_json(message.body)
        except ValidationError as exc:
            log.error("unreadable task message dead-lettered: %s", exc.errors()[:1])
            await message.reject(requeue=False)
            return
        try:
            task = await self.client.claim(envelope.task_id)
        except Refused as exc:
            log.info("task %s not ours: %s", envelope.task_id, exc.detail)
            await message.ack()
            return
        log.info("claimed %s/%s attempt %s", task.run_id, task.stage, task.attempt)
        try:
            await self._execute(task)
        except Refused as exc:
            log.warning("report on %s/%s refused: %s", task.run_id, task.stage, exc.detail)
        await message.ack()

    async def _execute(self, task: TaskDetail) -> None:
        """Run the skill beside a heartbeat loop; report the outcome; a cancel or lost claim stops the skill."""
        progress: dict[str, str] = {}
        ctx = SkillContext(task=task, sandbox=self.sandbox, python=sys.executable, progress=_progress_setter(progress))
        skill = asyncio.create_task(_run_skill(ctx))
        interval = self._heartbeat_interval or task.heartbeat_interval
        outcome = "done"
        while not skill.done():
            done, _ = await asyncio.wait({skill}, timeout=interval)
            if done:
                break
            try:
                if await self.client.heartbeat(task, progress):
                    outcome = "cancelled"
                    skill.cancel()
            except Refused:
                outcome = "lost"
                skill.cancel()
        try:
            result = await skill
        except asyncio.CancelledError:
            if outcome == "cancelled":
                await self.client.cancelled(task)
            log.info("%s/%s attempt %s %s", task.run_id, task.stage, task.attempt, outcome)
            return
        except SkillError as exc:
            report = StageResult(status="failed", summary=str(exc), output=exc.output, log_tail=exc.log_tail)
            await self.client.fail(task, exc.error_type, str(exc), exc.non_retryable, report)
            return
        except Exception as exc:  # a bug in a skill must fail the attempt, not kill the agent
            log.exception("skill %s crashed", task.skill)
            await self.client.fail(task, "AgentError", f"{type(exc).__name__}: {exc}", False, None)
            return
        await self.client.complete(task, result)


def _progress_setter(progress: dict[str, str]) -> Callable[[str], None]:
    def set_progress(message: str) -> None:
        progress["progress"] = message[:500]

    return set_progress


async def _run_skill(ctx: SkillContext) -> StageResult:
    return await get_skill(ctx.task.skill)(ctx)
