"""Schemathesis against the live API: no generated request gets a server error or an answer the document omits.

The API under test is a second API process of the session's stack on a database of its own (``tests.api.isolated``).
The campaign is derandomized: the same cases on every run.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.fuzz_api import campaign
from tests.api.isolated import isolated_api
from tests.stack import Stack

#: Cases per operation: over about 40 operations, well over the 1,000 cases the suite promises (about 1,450), in under a
#: minute on a quiet 2-CPU machine and under three on a busy one.
PER_OPERATION = 50
MINIMUM_CASES = 1000


@pytest.fixture(scope="module")
def fuzz_api(stack: Stack) -> Iterator[str]:
    """A second API on a fresh database of the session's PostgreSQL; its URL."""
    with isolated_api(stack, "fuzz") as url:
        yield url


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
