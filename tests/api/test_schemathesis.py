"""Schemathesis against the live API: no generated request gets a server error or an answer the document omits.

The API under test is a second API process of the session's stack, on a database of its own (so the generated
budgets, agents and purges touch nothing other tests see) and a task queue no worker polls (so nothing it
accepts ever runs). The campaign is derandomized: the same cases on every run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.fuzz_api import campaign
from devart.core.database import db
from devart.core.devstack.services import free_port
from tests.stack import Stack

#: Cases per operation: over about 40 operations, well over the 1,000 cases the suite promises (about 1,450), in under a
#: minute on a quiet 2-CPU machine and under three on a busy one.
PER_OPERATION = 50
MINIMUM_CASES = 1000


def _admin_sql(statement: str) -> None:
    engine = create_engine(db.database_url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def fuzz_api(stack: Stack) -> Iterator[str]:
    """A second API on a fresh database of the session's PostgreSQL; its URL."""
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"DATABASE_URL": make_url(db.database_url()).set(database=name).render_as_string(hide_password=False),
           "TEMPORAL_TASK_QUEUE": f"fuzz-{uuid.uuid4().hex[:8]}", "DEVART_API_PORT": str(port),
           "DEVART_API_URL": url, "DEVART_LOG_LEVEL": "WARNING"}
    db.upgrade(url=env["DATABASE_URL"])  # the API checks the schema, it no longer migrates
    child = stack.supervisor.spawn("api-fuzz", "api", "--host", "127.0.0.1", "--port", str(port), env=env)
    try:
        stack.supervisor.wait_healthy(url, child)
        yield url
    finally:
        stack.supervisor.stop(child, grace=5)
        _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.timeout(600)
def test_generated_requests_get_declared_answers_and_no_server_error(fuzz_api: str, stack: Stack) -> None:
    admin_token = stack.env["DEVART_ADMIN_TOKEN"]
    created = httpx.post(f"{fuzz_api}/v1/agents", headers={"Authorization": f"Bearer {admin_token}"},
                         json={"name": "fuzz-agent", "capabilities": ["fuzz"]}, timeout=30.0)
    assert created.status_code == 201, created.text

    report = campaign(fuzz_api, admin_token=admin_token, agent_key=created.json()["key"],
                      per_operation=PER_OPERATION)

    print(report.summary())  # noqa: T201 - the figures the README quotes
    assert report.cases >= MINIMUM_CASES, report.summary()
    assert report.server_errors == 0, report.summary()
    assert not report.failures, "\n\n".join(f"--- {where}\n{failure}" for where, failure in report.failures.items())
