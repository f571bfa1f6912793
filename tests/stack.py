"""The test stack: the real services (Temporal dev server, PostgreSQL, RabbitMQ) and devart's own processes.

Each session gets its own Temporal server and database under a temporary state folder, and its own AMQP
prefix and task queue, so the suite never sees a developer's running stack. A missing service skips the suite
on a laptop but fails it under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from devart.core import settings
from devart.core.database import db
from devart.core.devstack import services
from devart.core.devstack.supervisor import Child, Supervisor, stop_child
from devart.core.messaging import broker_users
from devart.core.messaging.topology import Topology
from tests.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_REPO = ROOT / "examples" / "sample-app"


def require(condition: bool, why: str) -> None:
    """Skip locally, fail under CI: a CI run that silently skips the real services proves nothing."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def clear_settings_caches() -> None:
    for fn in (settings.state, settings.temporal, settings.amqp, settings.api, settings.sandbox, settings.agent,
               settings.admin, settings.k8s, settings.package_index, settings.run_policy,
               db.database_url, db.engine, db._sessions, broker_users.admin):
        fn.cache_clear()
    from devart.sandboxes.factory import get_sandbox

    get_sandbox.cache_clear()


@dataclass
class Stack:
    """The running stack of one test session, with handles to restart its parts."""

    receiver: OtlpReceiver
    state: Path
    env: dict[str, str]
    supervisor: Supervisor
    temporal_port: int
    temporal_db: Path
    api_url: str
    #: The agents' API (``devart api --agents-only``, on ``DEVART_API_AGENT_PORT``): the session's agents claim and
    #: report through it, as under ``devart up`` (``DEVART_AGENT_API_URL`` in the stack's environment).
    agents_api_url: str
    temporal: subprocess.Popen[bytes] | None = None
    worker: Child | None = None
    agents: dict[str, Child] = field(default_factory=dict)
    #: How each agent of ``agents`` was started (capabilities, key, arguments, environment), so it can be revived.
    agent_launches: dict[str, tuple[list[str], str, tuple[str, ...], dict[str, str]]] = field(default_factory=dict)

    def restart_temporal(self) -> None:
        if self.temporal is not None:
            stop_child(self.temporal, grace=10)
        self.temporal = services.start_temporal(self.temporal_db, port=self.temporal_port, headless=True,
                                                log_file=self.state / "logs" / "temporal.log")

    def restart_worker(self, kill: bool = True) -> None:
        if self.worker is not None:
            if kill:
                self.worker.proc.kill()
                self.worker.proc.wait()
                self.supervisor.children.remove(self.worker)
            else:
                self.supervisor.stop(self.worker)
        self.worker = self.supervisor.worker()

    def start_agent(self, name: str, capabilities: list[str], *args: str, **env: str) -> Child:
        key = register_agent(name, capabilities)
        child = self.supervisor.agent(name, capabilities, key, *args, **env)
        self.agents[name] = child
        self.agent_launches[name] = (capabilities, key, args, env)
        return child

    def start_agents_api(self) -> None:
        """Start the agents' API (again) and return once it answers its health check."""
        child = self.supervisor.agents_api(self.env["DEVART_API_HOST"], int(self.env["DEVART_API_AGENT_PORT"]))
        self.supervisor.wait_healthy(self.agents_api_url, child)

    def pid(self, part: str) -> int:
        """The process id of one part: ``temporal``, ``api``, ``agents-api``, ``worker`` or the name of an agent of
        ``agents``."""
        if part == "temporal":
            assert self.temporal is not None, "Temporal is not running"
            return self.temporal.pid
        return self._child(part).proc.pid

    def sigkill(self, part: str) -> None:
        """Kill one part with SIGKILL, as a crash or the OOM killer would, and reap it.

        Only the part's own process gets the signal: whatever it started in a session of its own (a sandboxed
        command) is left behind, as after a real crash, for the product to clean up.
        """
        proc = self.temporal if part == "temporal" else self._child(part).proc
        assert proc is not None, f"{part} is not running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if part == "temporal":
            self.temporal = None
        else:
            self.supervisor.children.remove(self._child(part))

    def revive(self, part: str) -> None:
        """Start a part ``sigkill`` took down again, with the same settings (an agent keeps its name and key).

        Returns once Temporal listens or the API answers its health check; the worker and agents are spawned.
        """
        if part == "temporal":
            self.restart_temporal()
        elif part == "api":
            child = self.supervisor.api(self.env["DEVART_API_HOST"], int(self.env["DEVART_API_PORT"]))
            self.supervisor.wait_healthy(self.api_url, child)
        elif part == "agents-api":
            self.start_agents_api()
        elif part == "worker":
            self.worker = self.supervisor.worker()
        else:
            capabilities, key, args, env = self.agent_launches[part]
            self.agents[part] = self.supervisor.agent(part, capabilities, key, *args, **env)

    def _child(self, part: str) -> Child:
        if part == "worker":
            assert self.worker is not None, "the worker is not running"
            return self.worker
        if part in ("api", "agents-api"):
            return next(c for c in self.supervisor.children if c.name == part)
        return self.agents[part]


def register_agent(name: str, capabilities: list[str]) -> str:
    """Create the agent directly in the registry and return its key.

    Runs on its own thread and event loop, so it works from sync and async tests alike.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from devart.domain.agents import create_or_rotate

    async def _create() -> str:
        db.engine.cache_clear()
        db._sessions.cache_clear()
        try:
            async with db.session() as s:
                return await create_or_rotate(s, name, capabilities)
        finally:
            await db.engine().dispose()
            db.engine.cache_clear()
            db._sessions.cache_clear()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _create()).result()


@contextmanager
def fresh_database(prefix: str = "fresh") -> Iterator[str]:
    """A new, empty database on the suite's PostgreSQL server (no schema: nothing migrated it); its URL.

    Dropped at the end, with whatever is still connected to it.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    engine = create_engine(db.database_url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(db.database_url()).set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def sql(query: str, **params: object) -> list[dict[str, Any]]:
    """Run a query on the suite's database with a plain synchronous connection (for assertions), as its owner: it
    sees every organisation's rows, and a row it inserts is the default organisation's unless it names one."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db.database_url())
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('devart.org_id', 'default', true), "
                              "set_config('devart.role', 'system', true)"))
            result = conn.execute(text(query), params)
            return [dict(r._mapping) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def delete_broker_objects(env: dict[str, str]) -> list[str]:
    """Delete the session's lanes, dead-letter queue and exchanges from the machine's RabbitMQ (see Topology.delete)."""
    lanes = [row["name"] for row in sql("SELECT name FROM lanes")]
    topology = Topology(prefix=env["AMQP_PREFIX"], delivery_limit=0)

    async def delete() -> list[str]:
        async with await aio_pika.connect(env["AMQP_URL"], timeout=10) as connection:
            return await topology.delete(connection, lanes)

    return asyncio.run(delete())


def delete_broker_users(env: dict[str, str]) -> list[str]:
    """Delete the RabbitMQ users of the session's agents (the suite never deletes its agents); returns any left."""
    from urllib.parse import quote

    import httpx

    admin_url = env.get("DEVART_AMQP_ADMIN_URL")
    if not admin_url:
        return []
    parsed = httpx.URL(admin_url)
    base, auth = str(parsed.copy_with(username=None, password=None)).rstrip("/"), (parsed.username, parsed.password)
    mine = broker_users.broker_username(env["AMQP_PREFIX"], "")
    with httpx.Client(base_url=base, auth=auth, timeout=10.0) as http:
        users = [u["name"] for u in http.get("/api/users").raise_for_status().json() if u["name"].startswith(mine)]
        for user in users:
            http.delete(f"/api/users/{quote(user, safe='')}")
        left = [u["name"] for u in http.get("/api/users").json() if u["name"].startswith(mine)]
    return [f"broker user {u}" for u in left]


def admin(stack: Stack) -> dict[str, str]:
    """The first administrator's authorization header (user admin, admin of the default organisation)."""
    return {"Authorization": f"Bearer {stack.env['DEVART_ADMIN_TOKEN']}"}
