"""What ``devart up`` runs: the embedded PostgreSQL, Temporal's dev server, the API, the pipeline worker and the
default agent pool, each a ``ChildSpec`` that the supervisor (``core/devstack/daemon.py``) starts, watches and stops.

A server someone else provides is used, not started: PostgreSQL when ``DATABASE_URL`` is set, Temporal when its
address is not local or a server already listens there. The agents' keys are created once and kept: stored hashed
in the registry, the key itself only in ``<state>/keys/<agent>`` (0600), which the agent reads (``--key-file``).
``ensure_key`` issues a key only when that file is missing or the registry no longer accepts it, which it runs
just before the agent starts; so a key is never changed under a running agent.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import httpx

from devart.core import settings
from devart.core.devstack import embedded, services
from devart.core.devstack.statedir import write_private
from devart.core.devstack.supervisor import ProcessRef
from devart.core.security import MIN_TOKEN_LENGTH

#: The default agent pool: together they serve every built-in pipeline, each lane by at least one agent.
DEFAULT_POOL = {
    "builder": ["python", "build", "test", "lint", "shell"],
    "tester": ["python", "test", "lint"],
    "reviewer": ["python", "code-review", "lint"],
}
#: Children that are servers the others need: started first, in this order, and stopped last.
SERVERS = ("postgres", "temporal")


@dataclass(frozen=True)
class ChildSpec:
    """How to run one process of the stack."""

    name: str
    #: Its command line, computed at each start (the embedded PostgreSQL's port is chosen by ``prepare``).
    command: Callable[[], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    user: pwd.struct_passwd | None = None
    stop_signal: int = signal.SIGTERM
    #: Run before each start: the database's data folder and password, an agent's key.
    prepare: Callable[[], None] | None = None
    #: Whether it serves; bring-up waits for it before starting the next child.
    ready: Callable[[], bool] | None = None
    #: A process already serving (not one of the record's) to adopt rather than start a second.
    running: Callable[[], ProcessRef | None] | None = None
    #: Where it listens; if another process listens there when it is to start, it is either used as it is
    #: (``external``) or bring-up fails naming the port (``error``).
    port: tuple[str, int] | None = None
    port_taken: Literal["external", "error"] = "error"
    #: The setting that moves it to another port, named when the port is taken.
    port_setting: str = ""


def stop_order(names: list[str]) -> list[list[str]]:
    """The order to stop children in, batch by batch: the agents first (draining, they still report to the API),
    then the APIs (``agents-api`` is not an agent) and the worker, then the servers in the reverse order of their
    start."""
    agents = [n for n in names if n.startswith("agent-")]
    rest = [n for n in names if n not in agents and n not in SERVERS]
    return [b for b in (agents, rest) if b] + [[n] for n in reversed(names) if n in SERVERS]


def is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def temporal_host_port() -> tuple[str, int]:
    host, _, port = settings.temporal().address.rpartition(":")
    return host or "127.0.0.1", int(port or 7233)


def servers(state: Path) -> list[ChildSpec]:
    """The embedded PostgreSQL (unless ``DATABASE_URL`` is set) and Temporal's dev server (unless not local)."""
    specs = []
    if not settings.DatabaseSettings().database_url:
        specs.append(ChildSpec(
            "postgres", lambda: embedded.command(state), user=embedded.system_user(), stop_signal=signal.SIGINT,
            prepare=lambda: embedded.prepare(state), ready=lambda: embedded.accepting(state),
            running=lambda: embedded.running(state)))
    host, port = temporal_host_port()
    if is_local(host):
        ui_port = urlparse(settings.temporal().ui_url).port or 8233
        specs.append(ChildSpec(
            "temporal", lambda: services.temporal_command(state / "temporal.db", port=port, ui_port=ui_port),
            ready=lambda: services.port_open("127.0.0.1", port), port=("127.0.0.1", port), port_taken="external"))
    return specs


def prepare_database(state: Path) -> str:
    """Create devart's database if it is new and apply the migrations; returns the URL every process uses."""
    from devart.core.database import db
    from devart.domain.bootstrap import prepare_schema

    url = settings.DatabaseSettings().database_url
    if not url:
        embedded.create_database(state)
        url = embedded.url(state)
    os.environ["DATABASE_URL"] = url
    db.database_url.cache_clear()
    prepare_schema()
    return url


def _reachable_host() -> str:
    """The address this host's processes reach the APIs on: loopback where they listen on every interface."""
    host = settings.api().host
    return host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"


def agent_api_url() -> str | None:
    """Where ``devart up``'s agents reach the agents' API, or None when it runs none (``DEVART_API_AGENT_PORT=0``)."""
    port = settings.api().agent_port
    return f"http://{_reachable_host()}:{port}" if port else None


def processes(state: Path) -> list[ChildSpec]:
    """The API, the agents' API, the pipeline worker and the default agent pool."""
    cli = [sys.executable, "-m", "devart.cli"]
    api = settings.api()
    host = _reachable_host()
    specs = [
        ChildSpec("api", lambda: [*cli, "api", "--host", api.host, "--port", str(api.port)],
                  ready=lambda: api_healthy(api.url), port=(host, api.port), port_setting="DEVART_API_PORT"),
    ]
    agents_url = agent_api_url()
    if agents_url is not None:
        specs.append(ChildSpec(
            "agents-api", lambda: [*cli, "api", "--agents-only", "--host", api.host, "--port", str(api.agent_port)],
            ready=partial(api_healthy, agents_url), port=(host, api.agent_port),
            port_setting="DEVART_API_AGENT_PORT (0: the agents call the main API)"))
    specs.append(ChildSpec("worker", lambda: [*cli, "worker"]))
    for name, caps in DEFAULT_POOL.items():
        command = [*cli, "agent", "--name", name, "--capabilities", ",".join(caps), "--key-file",
                   str(key_file(state, name))]
        env = {"DEVART_AGENT_KEY": "", **({"DEVART_AGENT_API_URL": agents_url} if agents_url else {})}
        specs.append(ChildSpec(f"agent-{name}", partial(list, command), env=env,
                               prepare=partial(ensure_key, state, name, caps)))
    return specs


def api_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def admin_token(state: Path) -> str:
    """DEVART_ADMIN_TOKEN, or one generated once and kept (0600) in the state folder for the CLI.

    A stored token too short to be one devart generated (an older release's file, or one written by hand) is
    replaced: it becomes the first administrator's personal token, so it must be unguessable.
    """
    token = settings.AdminSettings().admin_token
    if token:
        return token
    stored = state / "admin-token"
    if not stored.exists() or len(stored.read_text().strip()) < MIN_TOKEN_LENGTH:
        write_private(stored, secrets.token_urlsafe(32))
    return stored.read_text().strip()


def key_file(state: Path, agent: str) -> Path:
    return state / "keys" / agent


def ensure_key(state: Path, name: str, capabilities: list[str]) -> None:
    """Register the agent with a key its key file holds; a new key only when the file is missing or refused."""
    path = key_file(state, name)
    stored = path.read_text().strip() if path.exists() else None
    issued = asyncio.run(_ensure_key(name, capabilities, stored))
    if issued is not None:
        write_private(path, issued + "\n")


async def _ensure_key(name: str, capabilities: list[str], stored: str | None) -> str | None:
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool
    from sqlmodel import select
    from sqlmodel.ext.asyncio.session import AsyncSession

    from devart.core.database import tenancy
    from devart.core.database.models import Agent
    from devart.core.database.tenancy import DEFAULT_ORG, system_in
    from devart.core.security import verify
    from devart.domain import agents

    # An engine of its own: the supervisor runs this on a fresh event loop each time.
    engine = create_async_engine(settings.DatabaseSettings().database_url or "", poolclass=NullPool)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            await tenancy.switch(session, system_in(DEFAULT_ORG))  # the default pool is the default organisation's
            agent = (await session.exec(select(Agent).where(Agent.name == name))).first()
            if agent is not None and stored and verify(stored, agent.key_hash):
                agent.capabilities, agent.active = sorted(set(capabilities)), True
                session.add(agent)
                issued = None
            elif agent is None:
                issued = await agents.create(session, name, capabilities, owner="system")
            else:
                agent.capabilities, agent.active = sorted(set(capabilities)), True
                issued = await agents.rotate_key(session, name, agent)
            await session.commit()
            return issued
    finally:
        await engine.dispose()
