"""Long-running processes (``devart api``, ``worker``, ``agent``) and administration (``db``, ``agents``).

What each command needs (the database, Temporal, the agent runtime) is imported inside it, so ``devart --help``
and every other command start without loading them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from devart.cli.output import console, fail

if TYPE_CHECKING:
    from devart.workers.skills.base import Skill

db_app = typer.Typer(no_args_is_help=True, help="Database administration.")


#: How long the API keeps an idle client connection open (uvicorn's default is 5 s, httpx's client-side expiry too).
KEEP_ALIVE_SECONDS = 65


def api(
    host: str = typer.Option(None, help="Listen address (default DEVART_API_HOST)."),
    port: int = typer.Option(None, help="Listen port (default DEVART_API_PORT)."),
    agents_only: bool = typer.Option(False, "--agents-only", help=(
        "Serve the agents' routes alone (/v1/agent/…, with /healthz and /metrics): the agents' API, which agents "
        "reach through DEVART_AGENT_API_URL.")),
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs); refuses to start unless `devart db upgrade` migrated the database."""
    import uvicorn

    from devart.core import settings
    from devart.core.database import db

    cfg = settings.api()
    db.database_url()  # resolve (and start, if embedded) before uvicorn's workers import the app
    try:
        db.require_current_schema()  # the app checks again at start; this says it in one line, before uvicorn
    except db.SchemaNotCurrent as exc:
        fail(str(exc))
    # Idle keep-alive connections stay open longer than a client keeps them (httpx: 5 s), so the client always closes
    # first: with equal timeouts a request sent on a connection the server is closing fails with a ReadError.
    target = "devart.api.main:agents_app" if agents_only else "devart.api.main:app"
    uvicorn.run(target, factory=agents_only, host=host or cfg.host, port=port or cfg.port, log_level="warning",
                timeout_keep_alive=KEEP_ALIVE_SECONDS)


def worker() -> None:
    """Run the pipeline worker (workflows and activities); refuses to start on a database not migrated."""
    from devart.core import eventloop
    from devart.core.errors import DevartError
    from devart.workers.pipeline_worker import serve

    try:
        eventloop.run(serve())
    except DevartError as exc:
        fail(str(exc))


def agent(
    name: str = typer.Option(..., help="The agent's registered name."),
    capabilities: str = typer.Option("", help="Comma-separated capabilities, e.g. python,test."),
    key: str = typer.Option(None, envvar="DEVART_AGENT_KEY", help="The agent's API key."),
    key_file: Path = typer.Option(
        None, envvar="DEVART_AGENT_KEY_FILE", help="File holding the agent's API key (read at start; wins over --key)."
    ),
    concurrency: int = typer.Option(1, min=1, help="Tasks run at once."),
    module: list[str] = typer.Option(
        [], "--module", envvar="DEVART_AGENT_MODULES",
        help="Python module with an AgentApp of custom skills (found from the current directory too); "
        "DEVART_AGENT_MODULES lists them separated by spaces.",
    ),
) -> None:
    """Run an agent that consumes every lane its capabilities can serve."""
    from devart.core import eventloop
    from devart.core.contracts import check_capabilities
    from devart.core.errors import DevartError
    from devart_sdk import load

    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            fail(f"cannot read the agent key file {key_file}: {exc.strerror}")
    if not key:
        fail("no agent key: pass --key, --key-file or set DEVART_AGENT_KEY (`devart agents create NAME` prints one)")
    caps = [c.strip() for c in capabilities.split(",") if c.strip()]
    custom: dict[str, Skill] = {}
    if module and os.getcwd() not in sys.path:
        # As `python -m` does: a module of the project the agent is started from is found without installing it.
        sys.path.insert(0, os.getcwd())
    for module_name in module:
        try:
            app = load(module_name)
        except (ImportError, ValueError) as exc:
            fail(f"cannot load agent module {module_name!r}: {exc}")
        custom.update(app.runners())
        caps += app.capabilities
    if not caps:
        fail("the agent has no capabilities: pass --capabilities or --module")
    try:
        check_capabilities(caps)
    except ValueError as exc:
        fail(str(exc))
    try:
        eventloop.run(_run_agent(name, sorted(set(caps)), key, concurrency, custom))
    except DevartError as exc:
        fail(str(exc))


async def _run_agent(name: str, caps: list[str], key: str, concurrency: int, custom: dict[str, Skill]) -> None:
    import asyncio
    import signal

    from devart.core import settings
    from devart.core.messaging.broker_users import agent_amqp_url, broker_password
    from devart.core.messaging.topology import Topology
    from devart.core.orgs import DEFAULT_ORG
    from devart.core.telemetry import tracing as telemetry
    from devart.sandboxes.factory import get_sandbox
    from devart.workers.agent import Agent
    from devart.workers.agent_client import AgentClient, Refused

    telemetry.setup("devart-agent")
    client = AgentClient(settings.agent().api_url or settings.api().url, key)
    try:
        me = await client.me()
        broker = await client.broker()
    except Refused as exc:
        fail(f"the API refused agent {name}: {exc.detail}")
    amqp_url = settings.amqp().amqp_url
    if broker.get("enforced"):
        # RabbitMQ itself limits this user to the organisation's queues; AMQP_URL gives only the host and vhost.
        amqp_url = agent_amqp_url(amqp_url, str(broker["user"]), broker_password(key))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker_agent = Agent(
        name,
        caps,
        client,
        get_sandbox(),
        amqp_url,
        Topology.from_settings().for_org(str(me.get("org", DEFAULT_ORG))),
        concurrency=concurrency,
        heartbeat_interval=settings.agent().heartbeat_interval,
        keepalive_interval=settings.agent().keepalive_interval,
        drain_grace=settings.agent().drain_grace,
        skills=custom,
        own_broker_user=bool(broker.get("enforced")),
    )
    try:
        await worker_agent.run(stop)
    finally:
        await client.close()
        telemetry.shutdown()


@db_app.command("upgrade")
def upgrade() -> None:
    """Apply the schema migrations (run once before the services start; concurrent runs take turns)."""
    from devart.domain.bootstrap import prepare_schema

    applied = prepare_schema()
    if applied:
        console.print(f"database schema migrated: {', '.join(applied)}; it is up to date", highlight=False)
    else:
        console.print("database schema is up to date: nothing to migrate")
