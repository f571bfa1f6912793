"""The benchmark's stack: devart's real processes on servers of their own, started as the test suite starts them.

``start`` brings up a Temporal dev server on a free port with its db file under a temporary state folder, the
embedded PostgreSQL in that folder (``core.db.database_url``), and the API, the agents' API and the pipeline
worker as subprocesses through ``core.supervisor.Supervisor``, laid out as ``devart up`` lays them out; RabbitMQ is
the machine's, under a throwaway ``AMQP_PREFIX``. ``start_agents`` registers and starts noop agents with a
capability no other agent has, calling the agents' API. ``stop`` takes it all down again, including the prefix's
exchanges and queues and the embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import psutil
from sqlmodel import col, select

from devart.core.database import db, tenancy
from devart.core.database.models import Agent
from devart.core.database.tenancy import DEFAULT_ORG
from devart.core.devstack import services
from devart.core.devstack.supervisor import Child, Supervisor, stop_child, tail
from devart.core.errors import ServiceUnavailable
from devart.core.messaging.topology import Topology, lane_name
from devart.domain.agents import create_or_rotate
from devart.domain.bootstrap import prepare_schema

#: Seconds the agents may take to start, reach the API and bind their control queue.
AGENTS_READY_SECONDS = 60.0


def bearer() -> dict[str, str]:
    """The first administrator's authorization header, for the benchmark's API clients (the stack's environment
    is this process's, see ``start``)."""
    return {"Authorization": f"Bearer {os.environ['DEVART_ADMIN_TOKEN']}"}


@dataclass
class BenchStack:
    """The running stack of one benchmark: where it lives, how to reach it, and its processes."""

    state: Path
    env: dict[str, str]
    supervisor: Supervisor
    temporal: subprocess.Popen[bytes]
    api: Child
    #: The agents' API (``devart api --agents-only``), which the agents call, as under ``devart up``.
    agents_api: Child
    worker: Child
    capability: str
    keep_state: bool = False
    agents: list[Child] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return self.env["DEVART_API_URL"]

    @property
    def temporal_address(self) -> str:
        return self.env["TEMPORAL_ADDRESS"]

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.env["AMQP_PREFIX"], delivery_limit=5)  # names only: the limit is unused

    @property
    def lane(self) -> str:
        return lane_name([self.capability])

    def pids(self) -> dict[str, list[int]]:
        """The process ids of devart's own processes, by role (for memory sampling)."""
        return {"api": [self.api.proc.pid], "agents api": [self.agents_api.proc.pid], "worker": [self.worker.proc.pid],
                "agents": [a.proc.pid for a in self.agents]}

    def server_pids(self) -> dict[str, list[int]]:
        """The servers' process ids: Temporal, the embedded PostgreSQL's postmaster, and the machine's RabbitMQ
        (shared with whatever else uses it; empty when it is not visible from here)."""
        pids: dict[str, list[int]] = {"temporal": [self.temporal.pid], "postgres": [], "rabbitmq": []}
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids["postgres"] = [int((self.state / "postgres" / "postmaster.pid").read_text().splitlines()[0])]
        pids["rabbitmq"] = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
        return pids

    def check_alive(self) -> None:
        """Fail with the log tail of any devart process that died during the benchmark."""
        for child in [self.api, self.agents_api, self.worker, *self.agents]:
            if child.proc.poll() is not None:
                raise ServiceUnavailable(f"{child.name} exited ({child.proc.returncode}):\n{tail(child.log)}")


def agents_api_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['DEVART_API_AGENT_PORT']}"


def start(amqp_url: str | None = None, keep_state: bool = False) -> BenchStack:
    """Start Temporal, PostgreSQL, the API and the pipeline worker; RabbitMQ must already run.

    Sets the stack's settings in this process's environment too, so ``core.temporal.connect`` and ``core.db``
    reach the same servers as the children.
    """
    amqp_url = amqp_url or os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    if not services.amqp_reachable(amqp_url):
        raise ServiceUnavailable(f"RabbitMQ is not reachable at {amqp_url} (start it: rabbitmq-server -detached)")
    state = Path(tempfile.mkdtemp(prefix="devart-bench-"))
    env = {**services.isolated_env(state, "devart-bench", amqp_url),
           "DEVART_LOG_LEVEL": os.environ.get("DEVART_LOG_LEVEL", "WARNING"),
           # Fault injection is not built in: the benchmark's agents load the noop plugin of the tests.
           "DEVART_AGENT_MODULES": "tests.plugins.noop"}
    tag = env["AMQP_PREFIX"].rsplit("-", 1)[1]
    api_port = int(env["DEVART_API_PORT"])
    temporal_port = int(env["TEMPORAL_ADDRESS"].rsplit(":", 1)[1])
    # Set before any settings are read, so every lru-cached settings object sees this stack.
    os.environ.update(env)
    temporal = services.start_temporal(state / "temporal.db", port=temporal_port, headless=True,
                                       log_file=state / "logs" / "temporal.log")
    sup = Supervisor(state / "logs", env=env)
    try:
        env["DATABASE_URL"] = db.database_url()
        prepare_schema()  # and the first administrator, holding env's DEVART_ADMIN_TOKEN
        tenancy.serve_all(DEFAULT_ORG)  # the benchmark's agents are the default organisation's
        api = sup.api("127.0.0.1", api_port)
        agents_api = sup.agents_api("127.0.0.1", int(env["DEVART_API_AGENT_PORT"]))
        sup.wait_healthy(env["DEVART_API_URL"], api)
        sup.wait_healthy(agents_api_url(env), agents_api)
        worker = sup.worker()
    except BaseException:
        sup.stop_all(grace=5)
        stop_child(temporal, grace=5)
        _stop_embedded_postgres(state)
        raise
    return BenchStack(state=state, env=env, supervisor=sup, temporal=temporal, api=api, agents_api=agents_api,
                      worker=worker,
                      capability=f"bench{tag}", keep_state=keep_state)


async def start_agents(stack: BenchStack, count: int, concurrency: int) -> None:
    """Register ``count`` agents with the stack's capability, start them, and wait until they serve."""
    names = [f"bench-agent-{i}-{uuid.uuid4().hex[:4]}" for i in range(count)]
    for name in names:
        async with db.session() as s:
            key = await create_or_rotate(s, name, [stack.capability])
        stack.agents.append(stack.supervisor.agent(name, [stack.capability], key, "--concurrency", str(concurrency),
                                                   DEVART_AGENT_API_URL=agents_api_url(stack.env)))
    # An agent's first keepalive comes after it bound its control queue: from then on it hears of new lanes.
    deadline = time.monotonic() + AGENTS_READY_SECONDS
    while time.monotonic() < deadline:
        stack.check_alive()
        async with db.session() as s:
            ready = (await s.exec(select(Agent).where(col(Agent.name).in_(names), Agent.status == "idle"))).all()
        if len(ready) == count:
            return
        await asyncio.sleep(0.2)
    raise ServiceUnavailable(f"agents not serving after {AGENTS_READY_SECONDS:.0f}s")


async def delete_broker_objects(stack: BenchStack) -> list[str]:
    """Remove the prefix's queues and exchanges from the shared RabbitMQ; returns what could not be removed."""
    try:
        connection = await aio_pika.connect(stack.env["AMQP_URL"], timeout=10)
    except Exception as exc:
        return [f"cannot connect: {exc}"]
    async with connection:
        return await stack.topology.delete(connection, [stack.lane])


def _stop_embedded_postgres(state: Path) -> None:
    """Stop the embedded PostgreSQL we started: a fast shutdown (SIGINT), as nothing it holds is kept."""
    pidfile = state / "postgres" / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, signal.SIGINT)
    except (OSError, ValueError, IndexError):
        return  # not running
    deadline = time.monotonic() + 10
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def stop(stack: BenchStack) -> None:
    """Stop every process of the stack and remove its state folder (unless asked to keep it)."""
    # Agents first, while the API still answers their last keepalive; then the API and the worker; then Temporal.
    for agent in stack.agents:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.proc.pid, signal.SIGTERM)
    for agent in stack.agents:
        stack.supervisor.stop(agent, grace=5)
    stack.supervisor.stop_all(grace=5)
    stop_child(stack.temporal, grace=5)
    _stop_embedded_postgres(stack.state)
    if not stack.keep_state:
        shutil.rmtree(stack.state, ignore_errors=True)
