"""The pipeline worker: runs PipelineWorkflow and its activities, and keeps queued agent tasks alive."""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from activities.dispatch import Dispatcher
from activities.records import record_run
from activities.sandbox import provision_sandbox, teardown_sandbox
from core import db, settings
from core.temporal import connect
from core.topology import Topology
from workers.dead_letters import collect
from workers.queue_keeper import keep_queued_tasks_alive
from workflows.pipeline import PipelineWorkflow

log = logging.getLogger(__name__)


def build_worker(client: Client, dispatcher: Dispatcher, task_queue: str | None = None) -> Worker:
    """The worker with every workflow and activity of a pipeline registered."""
    return Worker(
        client,
        task_queue=task_queue or settings.temporal().task_queue,
        workflows=[PipelineWorkflow],
        activities=[provision_sandbox, teardown_sandbox, record_run, dispatcher.run_agent_task],
        max_concurrent_activities=200,
    )


async def serve(task_queue: str | None = None) -> None:
    """Run until SIGINT/SIGTERM, then finish in-flight activity calls and exit."""
    db.upgrade()
    client = await connect()
    dispatcher = Dispatcher(settings.amqp().amqp_url, Topology.from_settings())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = build_worker(client, dispatcher, task_queue)
    keeper = asyncio.create_task(keep_queued_tasks_alive(client, stop))
    collector = asyncio.create_task(collect(settings.amqp().amqp_url, Topology.from_settings(), stop))
    async with worker:
        log.info("pipeline worker polling %s", task_queue or settings.temporal().task_queue)
        await stop.wait()
    await keeper
    await collector
    await dispatcher.close()
