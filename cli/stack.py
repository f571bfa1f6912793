"""``devart up``, ``down`` and ``doctor``: run the whole stack on one machine, and say what is wrong if it can't."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path
from urllib.parse import urlparse

import typer
from rich.markup import escape
from rich.table import Table

from cli.output import console, fail
from core import db, services, settings
from core.errors import DevartError
from core.supervisor import Supervisor, stop_child, stop_process

#: The default agent pool: together they serve every built-in pipeline, each lane by at least one agent.
DEFAULT_POOL = {
    "builder": ["python", "build", "test", "lint", "shell"],
    "tester": ["python", "test", "lint"],
    "reviewer": ["python", "code-review", "lint"],
}


def _temporal_host_port() -> tuple[str, int]:
    host, _, port = settings.temporal().address.rpartition(":")
    return host or "127.0.0.1", int(port or 7233)


def _is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


async def _register_pool() -> dict[str, str]:
    from core.agents import create_or_rotate

    async with db.session() as s:
        return {name: await create_or_rotate(s, name, caps) for name, caps in DEFAULT_POOL.items()}


def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Start everything and return (stop with devart down)."),
) -> None:
    """Start what is missing (RabbitMQ, Temporal, PostgreSQL), then the API, the pipeline worker and an agent pool."""
    state = settings.state().root
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_cfg = settings.api()
    if _api_healthy(api_cfg.url):
        console.print(f"devart is already up at {api_cfg.url} (stop it with devart down)")
        _print_addresses(api_cfg.url, logs)
        return
    started_temporal = None
    try:
        amqp_url = settings.amqp().amqp_url
        if not services.amqp_reachable(amqp_url):
            if not _is_local(urlparse(amqp_url).hostname or ""):
                fail(f"RabbitMQ is not reachable at {amqp_url}")
            console.print("starting RabbitMQ …")
            services.start_rabbitmq()
        host, port = _temporal_host_port()
        if not services.port_open(host, port):
            if not _is_local(host):
                fail(f"Temporal is not reachable at {host}:{port}")
            console.print("starting the Temporal dev server …")
            started_temporal = services.start_temporal(state / "temporal.db", port=port, log_file=logs / "temporal.log")
        url = db.database_url()
        db.upgrade()
        keys = asyncio.run(_register_pool())
    except DevartError as exc:
        fail(str(exc))
    sup = Supervisor(
        logs, env={"DATABASE_URL": url, "DEVART_HOME": str(state), "DEVART_ADMIN_TOKEN": _admin_token(state)}
    )
    try:
        api_child = sup.api(api_cfg.host, api_cfg.port)
        sup.wait_healthy(api_cfg.url, api_child)
        sup.worker()
        for name, caps in DEFAULT_POOL.items():
            sup.agent(name, caps, keys[name])
    except DevartError as exc:
        sup.stop_all()
        fail(str(exc))
    _print_addresses(api_cfg.url, logs)
    if detach:
        pids = {c.name: c.proc.pid for c in sup.children}
        if started_temporal is not None:
            pids["temporal"] = started_temporal.pid
        (state / "up.json").write_text(json.dumps(pids))
        console.print("running in the background; stop with [bold]devart down[/]")
        return
    console.print("press Ctrl-C to stop")
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    console.print("stopping …")
    sup.stop_all()
    if started_temporal is not None:
        stop_child(started_temporal)


def _admin_token(state: Path) -> str:
    """DEVART_ADMIN_TOKEN, or one generated once and kept (mode 0600) in the state folder for the CLI."""
    token = settings.admin().admin_token
    if token:
        return token
    stored = state / "admin-token"
    if not stored.exists():
        stored.touch(mode=0o600)
        stored.write_text(secrets.token_urlsafe(32))
    return stored.read_text().strip()


def _api_healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def _print_addresses(api_url: str, logs: os.PathLike[str]) -> None:
    table = Table(title="devart is up", show_header=False)
    table.add_row("API", f"{api_url}  (OpenAPI: {api_url}/docs)")
    table.add_row("Temporal Web UI", settings.temporal().ui_url)
    table.add_row("Temporal", settings.temporal().address)
    table.add_row(
        "RabbitMQ",
        urlparse(settings.amqp().amqp_url)._replace(netloc=urlparse(settings.amqp().amqp_url).hostname or "").geturl()
        + "  (management UI on :15672 if enabled)",
    )
    table.add_row("Agents", escape(", ".join(f"{n} [{','.join(c)}]" for n, c in DEFAULT_POOL.items())))
    table.add_row("Logs", str(logs))
    console.print(table)


def down() -> None:
    """Stop what ``devart up --detach`` started, and the embedded PostgreSQL."""
    state = settings.state().root
    record = state / "up.json"
    if record.exists():
        for name, pid in json.loads(record.read_text()).items():
            stop_process(int(pid))
            console.print(f"stopped {name}")
        record.unlink()
    from core.embedded import stop_postgres

    if not settings.DatabaseSettings().database_url and stop_postgres(state):
        console.print("stopped the embedded PostgreSQL")


def doctor() -> None:
    """Check every service devart needs and say exactly how to fix what is wrong."""
    checks: list[tuple[str, bool, str]] = []
    try:
        checks.append(("temporal CLI", True, services.temporal_binary()))
    except DevartError as exc:
        checks.append(("temporal CLI", False, str(exc)))
    host, port = _temporal_host_port()
    checks.append(
        (
            "Temporal",
            services.port_open(host, port),
            f"{host}:{port}"
            if services.port_open(host, port)
            else f"nothing listens on {host}:{port}: run `devart up` (it starts the dev server)",
        )
    )
    amqp_url = settings.amqp().amqp_url
    ok = services.amqp_reachable(amqp_url)
    checks.append(
        (
            "RabbitMQ",
            ok,
            "reachable"
            if ok
            else f"not reachable at {urlparse(amqp_url).hostname}:{urlparse(amqp_url).port or 5672}: "
            "start it with `rabbitmq-server -detached` (as root) or set AMQP_URL",
        )
    )
    checks.append(_check_postgres())
    bwrap = shutil.which("bwrap")
    isolation = settings.sandbox().isolation
    checks.append(
        (
            "bubblewrap",
            bool(bwrap) or isolation == "none",
            bwrap or "missing: `apt-get install -y bubblewrap` (or DEVART_SANDBOX_ISOLATION=none, unisolated)",
        )
    )
    checks.append(("git", bool(shutil.which("git")), shutil.which("git") or "missing: `apt-get install -y git`"))
    table = Table(title="devart doctor")
    for col in ("check", "ok", "detail"):
        table.add_column(col)
    for name, passed, detail in checks:
        table.add_row(name, "[green]ok[/]" if passed else "[red]FAIL[/]", detail)
    console.print(table)
    if not all(passed for _, passed, _ in checks):
        raise typer.Exit(1)


def _check_postgres() -> tuple[str, bool, str]:
    from sqlalchemy import create_engine, text

    configured = settings.DatabaseSettings().database_url
    try:
        url = db.database_url()
        with create_engine(url).connect() as conn:
            has_vector = conn.execute(
                text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar_one()
    except Exception as exc:  # any driver error is reported, not raised
        hint = "check DATABASE_URL" if configured else "the embedded server failed to start; see its log"
        return ("PostgreSQL", False, f"{type(exc).__name__}: {str(exc)[:200]} ({hint})")
    if not has_vector:
        return (
            "PostgreSQL",
            False,
            "pgvector is not installed on that server: use a server with pgvector, "
            "or unset DATABASE_URL to use the embedded one",
        )
    return ("PostgreSQL", True, "configured server" if configured else "embedded server (pgvector available)")
