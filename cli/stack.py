"""``devart up``, ``down``, ``status`` and ``doctor``: run the whole stack on one machine, and say what is wrong.

``devart up`` hands the stack to a supervisor of its own (``core/devstack/daemon.py``: the design is written there) and
returns once every process runs, each exactly once; run again, it only reports and asks the supervisor to start
whatever is missing. ``devart down`` stops everything it started, whatever happened in between.

The stack's machinery (``core.stackctl``, ``core.stackplan``, ``core.services``) is imported inside each command,
so that loading the CLI stays cheap.
"""

from __future__ import annotations

import shutil
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import typer
from rich.markup import escape
from rich.table import Table

from devart.cli.output import console, fail

if TYPE_CHECKING:
    from devart.core.devstack.stackfile import StackRecord

__all__ = ["doctor", "down", "status", "supervise", "up"]


def _broker_administration(amqp_url: str) -> None:
    """Give every agent of the stack a RabbitMQ user of its own (``core.messaging.broker_users``): on a local
    RabbitMQ, turn broker administration on with AMQP_URL's credentials unless DEVART_AMQP_ADMIN_URL is set (empty:
    off), enable the management plugin if it is off, and wait until its API answers. The supervisor and the
    processes it starts inherit the setting."""
    import os

    from devart.core import settings
    from devart.core.devstack import services
    from devart.core.devstack.stackplan import is_local

    if settings.amqp().amqp_admin_url is None and is_local(urlparse(amqp_url).hostname or ""):
        os.environ["DEVART_AMQP_ADMIN_URL"] = services.local_management_url(amqp_url)
        settings.amqp.cache_clear()
    admin_url = settings.amqp().amqp_admin_url
    if admin_url is not None and admin_url.get_secret_value():
        console.print("checking RabbitMQ's management API …")
        services.ensure_rabbitmq_management(admin_url.get_secret_value())


def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Start everything and return (stop with devart down)."),
) -> None:
    """Start the stack under a supervisor (RabbitMQ too if it is local and down): PostgreSQL, Temporal, the API,
    the pipeline worker and an agent pool, each once; a process that dies is started again."""
    from devart.core import settings
    from devart.core.devstack import services, stackctl
    from devart.core.devstack.stackplan import is_local, temporal_host_port
    from devart.core.errors import DevartError

    state = settings.state().root
    already = stackctl.supervisor_alive(state)
    amqp_url = settings.amqp().amqp_url
    try:
        if not services.amqp_reachable(amqp_url):
            if not is_local(urlparse(amqp_url).hostname or ""):
                fail(f"RabbitMQ is not reachable at {amqp_url}")
            console.print("starting RabbitMQ …")
            services.start_rabbitmq()
        _broker_administration(amqp_url)
        host, port = temporal_host_port()
        if not is_local(host) and not services.port_open(host, port):
            fail(f"Temporal is not reachable at {host}:{port}")
        if not already:
            console.print(f"starting devart's supervisor (log: {state / 'logs' / 'supervisor.log'}) …")
        record = stackctl.start(state)
    except DevartError as exc:
        fail(str(exc))
    _print_addresses(settings.api().url, state)
    _print_status(record)
    if record.status != "running":
        fail("some processes are not running: see `devart status` and their logs")
    if already:
        console.print("devart was already up: nothing was started twice (stop it with [bold]devart down[/])")
        return
    if detach:
        console.print("running in the background; [bold]devart status[/] shows it, [bold]devart down[/] stops it")
        return
    console.print("press Ctrl-C to stop")
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    console.print("stopping …")
    stackctl.stop(state)


def down() -> None:
    """Stop everything ``devart up`` started, also when its supervisor is gone, and the embedded PostgreSQL."""
    from devart.core import settings
    from devart.core.devstack import stackctl
    from devart.core.errors import DevartError

    state = settings.state().root
    supervised = stackctl.supervisor_alive(state)
    try:
        stopped = stackctl.stop(state)
    except DevartError as exc:
        fail(str(exc))
    if supervised:
        console.print("stopped devart's supervisor and the processes it ran")
    for name in stopped:
        console.print(f"stopped {name}, left running without its supervisor")
    if not supervised and not stopped:
        console.print("devart was not running")


def status() -> None:
    """Show each process of the stack: its status, pid, restarts and uptime (exit code 1 unless all run)."""
    from devart.core import settings
    from devart.core.devstack import stackctl

    record = stackctl.read(settings.state().root)
    if record is None:
        fail("devart is not running here (start it with devart up)")
    _print_status(record)
    if not record.supervisor.alive() or record.status != "running":
        raise typer.Exit(1)


def supervise(lock_fd: int = typer.Option(None, help="Descriptor of the held supervisor lock.")) -> None:
    """Run the stack's supervisor (started by devart up)."""
    from devart.core import settings
    from devart.core.devstack import daemon

    raise typer.Exit(daemon.main(settings.state().root, lock_fd))


def _uptime(started: float | None) -> str:
    if not started:
        return "-"
    from devart.core import process_start

    seconds = int(process_start.age(started))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _print_status(record: StackRecord) -> None:
    alive = record.supervisor.alive()
    title = f"devart: {record.status if alive else 'supervisor not running'}"
    table = Table(title=title)
    for col in ("process", "status", "pid", "restarts", "uptime", "detail"):
        table.add_column(col)
    sup = record.supervisor
    table.add_row("supervisor", "running" if alive else "gone", str(sup.pid if alive else "-"), "",
                  _uptime(sup.started if alive else None), record.message if record.status == "failed" else "")
    colours = {"running": "green", "external": "cyan", "failed": "red", "backoff": "yellow"}
    for child in record.children.values():
        state = child.status if child.status in ("external", "stopped") or child.alive() else "gone"
        detail = child.message or (f"last exit {child.last_exit}" if child.last_exit is not None else "")
        table.add_row(child.name, f"[{colours.get(state, 'white')}]{state}[/]", str(child.pid or "-"),
                      str(child.restarts), _uptime(child.started if state == "running" else None), escape(detail))
    console.print(table)


def _print_addresses(api_url: str, state: object) -> None:
    from devart.core import settings
    from devart.core.devstack.stackplan import DEFAULT_POOL, agent_api_url

    table = Table(title="devart is up", show_header=False)
    table.add_row("API", f"{api_url}  (OpenAPI: {api_url}/docs)")
    if agents_url := agent_api_url():
        table.add_row("Agents' API", f"{agents_url}  (/v1/agent/… alone: the agents call it)")
    table.add_row("Temporal Web UI", settings.temporal().ui_url)
    table.add_row("Temporal", settings.temporal().address)
    table.add_row(
        "RabbitMQ",
        urlparse(settings.amqp().amqp_url)._replace(netloc=urlparse(settings.amqp().amqp_url).hostname or "").geturl()
        + "  (management UI on :15672 if enabled)",
    )
    table.add_row("Agents", escape(", ".join(f"{n} [{','.join(c)}]" for n, c in DEFAULT_POOL.items())))
    table.add_row("Logs", f"{state}/logs")
    console.print(table)


def doctor() -> None:
    """Check every service devart needs and say exactly how to fix what is wrong (it starts nothing)."""
    from devart.core import settings
    from devart.core.devstack import services
    from devart.core.devstack.stackplan import temporal_host_port
    from devart.core.errors import DevartError

    checks: list[tuple[str, bool, str]] = []
    try:
        checks.append(("temporal CLI", True, services.temporal_binary()))
    except DevartError as exc:
        checks.append(("temporal CLI", False, str(exc)))
    host, port = temporal_host_port()
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
    """Whether the database serves now: the configured server, or the embedded one only if it already runs.

    Resolving the URL through ``core.db`` would start the embedded server, and then report it healthy while the
    stack is down.
    """
    from sqlalchemy import create_engine, text

    from devart.core import settings

    configured = settings.DatabaseSettings().database_url
    try:
        url = configured or _running_embedded(settings.state().root)
        if url is None:
            return ("PostgreSQL", False, f"the embedded server is not running (state folder {settings.state().root}): "
                                         "start the stack with `devart up`, or set DATABASE_URL")
        with create_engine(url).connect() as conn:
            has_vector = conn.execute(
                text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar_one()
    except Exception as exc:  # any driver error is reported, not raised
        hint = "check DATABASE_URL" if configured else "it runs but refuses: see .devart/logs/postgres.log"
        return ("PostgreSQL", False, f"{type(exc).__name__}: {str(exc)[:200]} ({hint})")
    if not has_vector:
        return (
            "PostgreSQL",
            False,
            "pgvector is not installed on that server: use a server with pgvector, "
            "or unset DATABASE_URL to use the embedded one",
        )
    return ("PostgreSQL", True, "configured server" if configured else "embedded server (pgvector available)")


def _running_embedded(state: Path) -> str | None:
    """The URL of this state folder's embedded server if it runs; None when it does not."""
    from devart.core.devstack import embedded

    return embedded.url(state) if embedded.running(state) is not None else None
