"""The pipeline worker: runs PipelineWorkflow and its activities, keeps queued agent tasks alive, sweeps sandboxes."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress
from datetime import timedelta

from prometheus_client import start_http_server
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from devart.activities.budgets import check_budget
from devart.activities.dispatch import Dispatcher
from devart.activities.github import report_github
from devart.activities.records import record_run
from devart.activities.sandbox import prepare_stage, provision_sandbox, teardown_sandbox
from devart.activities.selfheal import learn_from_stage
from devart.core import settings
from devart.core.database import db, tenancy
from devart.core.errors import ServiceUnavailable
from devart.core.messaging.topology import Topology
from devart.core.telemetry import tracing as telemetry
from devart.core.temporal import connect, workflow_runner
from devart.core.temporal_namespaces import Namespaces, ensure
from devart.domain import budget_cache
from devart.workers.dead_letters import collect
from devart.workers.queue_keeper import Leases, keep_queued_tasks_alive, sample_gauges
from devart.workers.sweeper import keep_sweeping, retire_schedule
from devart.workflows.pipeline import PipelineWorkflow

log = logging.getLogger(__name__)

#: How long a stopping worker lets the activities it runs finish before cancelling them: without it, SIGTERM
#: cancels a dispatch mid-publish and the stage pays a retry. Within the supervisor's default stop grace (10 s).
GRACEFUL_SHUTDOWN = timedelta(seconds=8)


def _metrics_runtime(cfg: settings.WorkerSettings) -> Runtime | None:
    """Serve devart's metrics, and return a Temporal runtime exporting the SDK's; a busy port only warns."""
    if cfg.metrics_port:
        try:
            start_http_server(cfg.metrics_port)
        except OSError as exc:
            log.warning("worker metrics not served on :%s: %s", cfg.metrics_port, exc)
    if not cfg.sdk_metrics_port:
        return None
    try:
        return Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"0.0.0.0:{cfg.sdk_metrics_port}"))
        )
    except Exception as exc:  # the SDK reports a busy port as a generic runtime error
        log.warning("Temporal SDK metrics not served on :%s: %s", cfg.sdk_metrics_port, exc)
        return None


def build_worker(client: Client, dispatcher: Dispatcher, task_queue: str | None = None) -> Worker:
    """The worker with every workflow and activity of a pipeline registered."""
    return Worker(
        client,
        task_queue=task_queue or settings.temporal().task_queue,
        workflows=[PipelineWorkflow],
        activities=[prepare_stage, provision_sandbox, teardown_sandbox, record_run, dispatcher.run_agent_task,
                    check_budget, report_github, learn_from_stage],
        max_concurrent_activities=200,
        workflow_runner=workflow_runner(),
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )


async def serve(task_queue: str | None = None) -> None:
    """Run until SIGINT/SIGTERM, then finish in-flight activity calls and exit."""
    telemetry.setup("devart-worker")
    tenancy.serve_all()  # the worker acts for every organisation's runs (core.database.tenancy)
    await asyncio.to_thread(db.require_current_schema)  # `devart db upgrade` migrates, before the services start
    runtime = _metrics_runtime(settings.worker())
    client = await connect(runtime=runtime)
    temporal = Namespaces(client)
    queue = task_queue or settings.temporal().task_queue
    leases = Leases()  # the queued attempts this worker keeps alive (workers.queue_keeper)
    dispatcher = Dispatcher(settings.amqp().amqp_url, Topology.from_settings(), leases.take)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await retire_schedule(client, queue)
    keeper = asyncio.create_task(keep_queued_tasks_alive(temporal, stop, leases))
    sweeper = asyncio.create_task(keep_sweeping(temporal, stop))
    sampler = asyncio.create_task(sample_gauges(stop))
    budgets = asyncio.create_task(budget_cache.WATCH.run(stop))
    collector = asyncio.create_task(collect(settings.amqp().amqp_url, Topology.from_settings(), stop))
    await poll_every_namespace(temporal, dispatcher, queue, stop)
    await keeper
    await sweeper
    await sampler
    await budgets
    await collector
    await dispatcher.close()
    telemetry.shutdown()


async def poll_every_namespace(temporal: Namespaces, dispatcher: Dispatcher, queue: str, stop: asyncio.Event) -> None:
    """Poll ``queue`` in the deployment's namespace and in every organisation's own, picking up an organisation's
    new namespace within ``namespace_refresh_seconds``, until ``stop``; then let in-flight activities finish."""
    polling: dict[str, Worker] = {}
    running: list[asyncio.Task[None]] = []
    every = settings.temporal().namespace_refresh_seconds
    try:
        while not stop.is_set():
            try:
                namespaces = await temporal.refresh()
            except Exception:  # the database may be restarting: the namespaces polled so far go on
                if not polling:
                    raise
                log.warning("could not read the organisations' namespaces", exc_info=True)
                namespaces = set()
            for namespace in sorted(namespaces - set(polling)):
                try:
                    if namespace != temporal.default.namespace:
                        await ensure(temporal.default, namespace)  # a Temporal whose data was lost heals here
                except ServiceUnavailable as exc:
                    log.warning("not polling namespace %s yet: %s", namespace, exc)
                    continue
                worker = polling[namespace] = build_worker(temporal.client(namespace), dispatcher, queue)
                task = asyncio.create_task(worker.run(), name=f"worker {namespace}")
                task.add_done_callback(lambda _: stop.set())  # a worker that fails stops the process
                running.append(task)
                log.info("pipeline worker polling %s in namespace %s", queue, namespace)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        log.info("pipeline worker stopping: in-flight activities get up to %.0fs to finish",
                 GRACEFUL_SHUTDOWN.total_seconds())
        await asyncio.gather(*(w.shutdown() for w in polling.values()), return_exceptions=True)
    for task in running:
        task.result()  # a worker's fatal error ends the process with it (its supervisor starts it again)
