"""Migrations run once, before the services: ``devart db upgrade`` takes turns under an advisory lock, and the API
and the pipeline worker refuse to start on a database nobody migrated, naming the command to run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from devart.core.database import db
from devart.core.devstack.services import free_port
from tests.stack import Stack, fresh_database

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a process may take to connect and reach the lock, or to refuse to start (imports included).
DEADLINE = 90.0
#: Prints the revisions one upgrade applied, as JSON.
UPGRADE = "import json; from devart.core.database import db; print(json.dumps(db.upgrade()))"


def _psycopg_args(url: str) -> dict[str, object]:
    parsed = make_url(url)
    return {"host": parsed.query.get("host") or parsed.host, "port": parsed.port, "user": parsed.username,
            "password": parsed.password, "dbname": parsed.database}


def _waiting_on_the_lock(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Sessions of this database blocked on the migration lock (an advisory lock not granted)."""
    row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                       "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


def test_concurrent_upgrades_both_succeed_and_migrate_once(stack: Stack) -> None:
    with fresh_database("upgrade") as url:
        env = {**os.environ, **stack.env, "DATABASE_URL": url}
        with psycopg.connect(**_psycopg_args(url), autocommit=True) as holder:  # type: ignore[arg-type]
            # Given the migration lock held, as by an upgrade already running
            holder.execute("SELECT pg_advisory_lock(%s)", [db.MIGRATION_LOCK])
            upgrades = [subprocess.Popen([sys.executable, "-c", UPGRADE], cwd=ROOT, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
            try:
                # When two upgrades start on the fresh database, both wait for the lock
                end = time.monotonic() + DEADLINE
                while _waiting_on_the_lock(holder) < 2:
                    finished = [u.args for u in upgrades if u.poll() is not None]
                    assert not finished, f"an upgrade ran without waiting for the migration lock: {finished}"
                    assert time.monotonic() < end, "the upgrades never waited for the migration lock"
                    time.sleep(0.1)
                # and once it is released they take turns
                holder.execute("SELECT pg_advisory_unlock(%s)", [db.MIGRATION_LOCK])
                outcomes = [u.communicate(timeout=DEADLINE) for u in upgrades]
            finally:
                for u in upgrades:
                    u.kill()
                    u.wait()
        # Then both succeed, and only one of them migrated
        assert [u.returncode for u in upgrades] == [0, 0], outcomes
        applied = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outcomes), key=len)
        assert applied[0] == [] and applied[1][0] == "0001", applied
        db.require_current_schema(url)


@pytest.mark.parametrize("command", [["api", "--host", "127.0.0.1", "--port", "{port}"], ["worker"]])
def test_a_service_on_an_unmigrated_database_refuses_to_start(stack: Stack, command: list[str]) -> None:
    with fresh_database("unmigrated") as url:
        port = str(free_port())
        env = {**os.environ, **stack.env, "DATABASE_URL": url, "DEVART_API_PORT": port,
               "TEMPORAL_TASK_QUEUE": f"unmigrated-{port}", "DEVART_WORKER_METRICS_PORT": "0",
               "DEVART_WORKER_SDK_METRICS_PORT": "0"}
        # When the service starts on a database nobody migrated, it exits at once rather than serving
        done = subprocess.run([sys.executable, "-m", "devart.cli", *(a.format(port=port) for a in command)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=DEADLINE)
        assert done.returncode != 0, done.stdout + done.stderr
        assert "no devart schema" in done.stderr and "devart db upgrade" in done.stderr, done.stderr
        # and it migrated nothing: the schema is still for `devart db upgrade` to create
        with pytest.raises(db.SchemaNotCurrent, match="devart db upgrade"):
            db.require_current_schema(url)
