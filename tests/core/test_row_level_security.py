"""Row-level security, checked with direct SQL as the services' role: PostgreSQL itself keeps organisations apart.

No devart code runs between the statements and the database here: each one is what any query of the API, the
worker or the agents' routes would get, whatever its WHERE clause says.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from devart.core.database import db
from tests.stack import Stack, sql

APP_ROLE = "devart_app"


@pytest.fixture(scope="module")
def app(stack: Stack) -> Iterator[Engine]:
    """Connections as the services make them: logged in as the application role."""
    engine = create_engine(db.app_database_url(), pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def runs(stack: Stack) -> dict[str, str]:
    """A run in the default organisation and one in another."""
    other = f"rls-{uuid.uuid4().hex[:6]}"
    sql("INSERT INTO organisations (id, name) VALUES (:o, :o)", o=other)
    ids = {"default": f"rls-run-{uuid.uuid4().hex[:8]}", other: f"rls-run-{uuid.uuid4().hex[:8]}"}
    for org, run_id in ids.items():
        sql("INSERT INTO runs (id, org_id, pipeline, pipeline_version, repository, trigger, params, stages, status, "
            "created_at) "
            "VALUES (:id, :org, 'p', 1, 'r', 'test', '{}', '[]', 'running', now())", id=run_id, org=org)
        sql("INSERT INTO events (org_id, run_id, kind, message, data, created_at) "
            "VALUES (:org, :id, 'test.rls', '', '{}', now())", id=run_id, org=org)
    return ids


def acting(conn: Connection, org: str | None, role: str | None) -> None:
    if org is not None:
        conn.execute(text("SELECT set_config('devart.org_id', :o, true)"), {"o": org})
    if role is not None:
        conn.execute(text("SELECT set_config('devart.role', :r, true)"), {"r": role})


def visible(conn: Connection, table: str, ids: list[str]) -> list[Any]:
    column = "id" if table == "runs" else "run_id"
    return sorted(conn.execute(text(f"SELECT {column} FROM {table} WHERE {column} = ANY(:ids)"), {"ids": ids})
                  .scalars())


def test_the_application_role_owns_nothing_and_bypasses_nothing(stack: Stack) -> None:
    role = sql("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r", r=APP_ROLE)
    assert role == [{"rolsuper": False, "rolbypassrls": False}]
    assert sql("SELECT count(*) AS n FROM pg_tables WHERE tableowner = :r", r=APP_ROLE) == [{"n": 0}]
    tenant_tables = {r["table_name"] for r in sql(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'org_id'")}
    assert {"runs", "task_attempts", "events", "pipeline_versions", "agents", "lanes", "budgets", "dead_letters",
            "github_repositories", "github_runs", "github_checks", "github_reviews", "agent_skill_stats",
            "memberships", "api_tokens", "audit_log"} <= tenant_tables
    guarded = sql("SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity AND relname = ANY(:t)",
                  t=sorted(tenant_tables))
    assert {r["relname"] for r in guarded} == tenant_tables


def test_another_organisations_rows_are_invisible_and_untouchable(app: Engine, runs: dict[str, str]) -> None:
    (other,) = [org for org in runs if org != "default"]
    ids = list(runs.values())
    for org in runs:
        with app.begin() as conn:
            acting(conn, org, "admin")
            for table in ("runs", "events"):
                assert visible(conn, table, ids) == [runs[org]], (org, table)
    with app.begin() as conn:
        acting(conn, other, "admin")
        changed = conn.execute(text("UPDATE runs SET status = 'cancelled' WHERE id = :id"), {"id": runs["default"]})
        removed = conn.execute(text("DELETE FROM events WHERE run_id = :id"), {"id": runs["default"]})
        assert (changed.rowcount, removed.rowcount) == (0, 0)
    assert sql("SELECT status FROM runs WHERE id = :id", id=runs["default"]) == [{"status": "running"}]
    with app.connect() as conn, pytest.raises(DBAPIError, match="row-level security"), conn.begin():
        acting(conn, other, "admin")  # an insert naming another organisation
        conn.execute(text("INSERT INTO events (org_id, kind, message, data, created_at) "
                          "VALUES ('default', 'test.rls', '', '{}', now())"))


def test_a_viewers_writes_are_refused_by_postgresql(app: Engine, runs: dict[str, str]) -> None:
    run_id = runs["default"]
    with app.connect() as conn, pytest.raises(DBAPIError, match="row-level security"), conn.begin():
        acting(conn, "default", "viewer")
        conn.execute(text("INSERT INTO events (kind, message, data, created_at) VALUES ('test.rls', '', '{}', now())"))
    with app.begin() as conn:
        acting(conn, "default", "viewer")
        assert visible(conn, "runs", [run_id]) == [run_id]  # reading is what a viewer may do
        assert conn.execute(text("UPDATE runs SET status = 'cancelled' WHERE id = :id"), {"id": run_id}).rowcount == 0
        assert conn.execute(text("DELETE FROM events WHERE run_id = :id"), {"id": run_id}).rowcount == 0
    assert sql("SELECT status FROM runs WHERE id = :id", id=run_id) == [{"status": "running"}]
    assert sql("SELECT count(*) AS n FROM events WHERE run_id = :id", id=run_id) == [{"n": 1}]


def test_a_transaction_that_names_no_organisation_sees_nothing(app: Engine, runs: dict[str, str]) -> None:
    ids = list(runs.values())
    with app.begin() as conn:
        acting(conn, "default", "admin")
        assert visible(conn, "runs", ids) == [runs["default"]]
    # The same pooled connection (pool of one), next transaction: the settings ended with the last one
    with app.begin() as conn:
        assert conn.execute(text("SELECT current_setting('devart.org_id', true)")).scalar() in ("", None)
        assert visible(conn, "runs", ids) == [] and visible(conn, "events", ids) == []
        assert conn.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 0
    with app.connect() as conn, pytest.raises(DBAPIError, match="row-level security|org_id"), conn.begin():
        conn.execute(text("INSERT INTO events (kind, message, data, created_at) VALUES ('test.rls', '', '{}', now())"))
    with app.connect() as conn, pytest.raises(DBAPIError, match="(permission denied|must be)"), conn.begin():
        conn.execute(text("SET ROLE postgres"))  # the role cannot leave itself


async def test_the_services_log_in_as_the_application_role(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/runs")).status_code == 200  # the API has connections open
    users = sql("SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
    assert users == [{"usename": APP_ROLE}]
