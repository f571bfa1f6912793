"""The knowledge base through the API: members of each role, and another organisation that must see nothing.

Each test makes an organisation of its own (its admin's token, then a supervisor and a viewer added by it), so the
entries it writes are the only ones it can find.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.helpers import unique
from tests.stack import Stack, sql


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Org:
    """An organisation's clients: its administrator, a supervisor and a viewer."""

    id: str
    admin: httpx.AsyncClient
    supervisor: httpx.AsyncClient
    viewer: httpx.AsyncClient


async def organisation(api: httpx.AsyncClient) -> Org:
    org = unique("kb-org")
    assert (await api.post("/v1/orgs", json={"id": org})).status_code == 201
    token = (await api.post("/v1/tokens", json={"org": org, "name": "test"})).json()["token"]
    clients = {"admin": httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(token), timeout=60.0)}
    for role in ("supervisor", "viewer"):
        added = await clients["admin"].post("/v1/users", json={"name": unique(role), "role": role})
        assert added.status_code == 201, added.text
        clients[role] = httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(added.json()["token"]),
                                          timeout=60.0)
    return Org(id=org, **clients)


@pytest.fixture
async def orgs(api: httpx.AsyncClient) -> AsyncIterator[tuple[Org, Org]]:
    pair = (await organisation(api), await organisation(api))
    yield pair
    for org in pair:
        for client in (org.admin, org.supervisor, org.viewer):
            await client.aclose()


OOM: dict[str, Any] = {"skill": "test", "error_type": "OutOfMemory", "log_tail": "E   MemoryError",
       "message": "Killed process 4242 (pytest) in /tmp/ws-1/repo: out of memory, rss 3.9GiB",
       "remedy": "more_memory", "parameters": {"memory_mb": 8192},
       "context": {"language": "python", "tools": {"pytest": "8.3.2"}, "pipeline": "build-test-review",
                   "stage": "test"}}
LINT: dict[str, Any] = {"skill": "lint", "error_type": "LintFailed", "remedy": "ruff_fix",
                        "message": "F401 'os' imported but unused, fixable with --fix"}
BACKEND: dict[str, Any] = {
    "skill": "build", "error_type": "BuildBackendMissing", "message": "No module named 'hatchling'",
    "guidance": "Offline: build with --no-isolation, or declare the backend in the build requirements."}


async def test_a_supervisor_writes_entries_members_find_them_and_a_viewer_cannot_write(orgs: tuple[Org, Org]) -> None:
    ours, _ = orgs
    ids = {}
    for body in (OOM, LINT, BACKEND):
        created = await ours.supervisor.post("/v1/knowledge", json=body)
        assert created.status_code == 201, created.text
        ids[body["error_type"]] = created.json()["id"]
    entry = (await ours.viewer.get(f"/v1/knowledge/{ids['OutOfMemory']}")).json()
    assert entry["message"] == "Killed process <n> (pytest) in <tmp>: out of memory, rss <n>GiB"
    assert entry["source"] == "written" and entry["author"].startswith("supervisor-")
    assert entry["context"]["tools"] == {"pytest": "8.3.2"} and entry["parameters"] == {"memory_mb": 8192}
    assert entry["record"] == {"suggested": 0, "applied": 0, "succeeded": 0} and entry["success_rate"] == 0.5
    # Found by a differently worded occurrence, above the unrelated entries
    found = await ours.viewer.get("/v1/knowledge/search", params={"q": "pytest killed: out of memory", "k": 3})
    assert found.status_code == 200, found.text
    assert [h["entry_id"] for h in found.json()][0] == ids["OutOfMemory"]
    assert found.json()[0]["remedy"] == "more_memory"
    listed = await ours.viewer.get("/v1/knowledge", params={"remedy": "ruff_fix"})
    assert [e["id"] for e in listed.json()] == [ids["LintFailed"]]
    assert len((await ours.viewer.get("/v1/knowledge", params={"limit": 2})).json()) == 2
    # A viewer may read and search, not write
    refused = await ours.viewer.post("/v1/knowledge", json=LINT)
    assert refused.status_code == 403 and "needs the supervisor role" in refused.json()["detail"]
    assert (await ours.supervisor.post("/v1/knowledge/reembed", json={})).status_code == 403


async def test_another_organisations_entries_are_not_found(orgs: tuple[Org, Org]) -> None:
    ours, theirs = orgs
    created = await theirs.admin.post("/v1/knowledge", json=OOM)
    assert created.status_code == 201, created.text
    their_id = created.json()["id"]
    for client in (ours.admin, ours.viewer):
        missing = await client.get(f"/v1/knowledge/{their_id}")
        assert missing.status_code == 404 and f"no knowledge entry {their_id}" in missing.json()["detail"]
        assert (await client.get("/v1/knowledge/search", params={"q": OOM["message"]})).json() == []
        assert (await client.get("/v1/knowledge")).json() == []
    assert (await theirs.viewer.get(f"/v1/knowledge/{their_id}")).status_code == 200


async def test_what_the_edge_refuses(orgs: tuple[Org, Org]) -> None:
    ours, _ = orgs
    nothing_to_do = await ours.supervisor.post("/v1/knowledge", json={**LINT, "remedy": None})
    assert nothing_to_do.status_code == 422 and "needs a remedy, guidance or both" in nothing_to_do.text
    bad_name = await ours.supervisor.post("/v1/knowledge", json={**LINT, "remedy": "Rm -rf"})
    assert bad_name.status_code == 422
    nul = await ours.supervisor.post("/v1/knowledge", json={**LINT, "message": "a\x00b"})
    assert nul.status_code == 422
    assert (await ours.viewer.get("/v1/knowledge/search", params={"q": "x", "k": 51})).status_code == 422
    assert (await ours.viewer.get("/v1/knowledge/search", params={"q": "  "})).json() == []
    assert (await ours.viewer.get("/v1/knowledge/0")).status_code == 422


async def test_reembed_reports_the_model_and_its_index(orgs: tuple[Org, Org], stack: Stack) -> None:
    ours, _ = orgs
    assert (await ours.supervisor.post("/v1/knowledge", json=BACKEND)).status_code == 201
    done = await ours.admin.post("/v1/knowledge/reembed", json={"batch": 8})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["moved"] == 0 and body["remaining"] == 0  # written under the configured model already
    assert body["dimension"] == 384 and body["index"].startswith("knowledge_hnsw_")
    assert sql("SELECT count(*) AS n FROM pg_indexes WHERE indexname = :i", i=body["index"]) == [{"n": 1}]
