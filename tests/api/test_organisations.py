"""Two organisations on one devart: agents with identical capabilities, pipelines with the same name, and neither
ever gets or sees the other's tasks, runs, events (live feed included), costs or agents."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from devart.core.devstack.supervisor import Child
from tests.helpers import noop_stage, poll, unique, wait_run
from tests.stack import Stack, sql

#: Tasks per organisation: runs × parallel stages.
RUNS, STAGES = 20, 10


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def organisation(api: httpx.AsyncClient) -> httpx.AsyncClient:
    """A new organisation, and a client holding its admin's token (the first administrator's, issued there)."""
    org = unique("org")
    assert (await api.post("/v1/orgs", json={"id": org})).status_code == 201
    token = (await api.post("/v1/tokens", json={"org": org, "name": "test"})).json()["token"]
    return httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(token), timeout=30.0)


async def agent(stack: Stack, client: httpx.AsyncClient, capability: str) -> tuple[str, Child]:
    """An agent of the client's organisation, started, with its skills announced there."""
    name = unique("org-agent")
    created = await client.post("/v1/agents", json={"name": name, "capabilities": [capability]})
    assert created.status_code == 201, created.text
    child = stack.supervisor.agent(name, [capability], created.json()["key"], "--concurrency", "8")

    async def announced() -> bool:
        listed = (await client.get(f"/v1/agents/{name}")).json()
        return "noop" in listed.get("skills", [])

    await poll(announced, deadline=60, what=f"agent {name} to announce its skills")
    return name, child


async def feed(client: httpx.AsyncClient, pipeline: str, runs: int, seen: list[dict[str, Any]]) -> None:
    """Read the client's live feed of ``pipeline`` until ``runs`` runs have finished."""
    finished = 0
    async with client.stream("GET", "/v1/events/stream", params={"pipeline": pipeline}, timeout=None) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                seen.append(event)
                finished += event["kind"] == "run.finished"
                if finished == runs:
                    return


async def test_two_organisations_never_share_a_task_or_a_view(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    capability, pipeline = unique("same-cap"), unique("same-name")
    first, second = await organisation(api), await organisation(api)
    async with first, second:
        orgs = {"first": first, "second": second}
        agents = {key: await agent(stack, client, capability) for key, client in orgs.items()}
        # Generous timeouts: the point is where 400 tasks go on two CPUs, not how fast
        stages = [{**noop_stage(f"s{i}", capability), "heartbeat_timeout": 60, "timeout": 600} for i in range(STAGES)]
        for client in orgs.values():
            published = await client.post("/v1/pipelines", json={"name": pipeline, "stages": stages})
            assert published.status_code == 201, published.text
        seen: dict[str, list[dict[str, Any]]] = {key: [] for key in orgs}
        readers = [asyncio.create_task(feed(client, pipeline, RUNS, seen[key])) for key, client in orgs.items()]
        runs: dict[str, list[str]] = {key: [] for key in orgs}
        for _ in range(RUNS):
            for key, client in orgs.items():
                started = await client.post("/v1/runs", json={"pipeline": pipeline, "repo": str(tmp_path)})
                assert started.status_code == 201, started.text
                runs[key].append(started.json()["run_id"])
        for key, client in orgs.items():
            for run_id in runs[key]:
                run = await wait_run(client, run_id, deadline=300)
                assert run["status"] == "succeeded", (key, run.get("error"), [s.get("error") for s in run["stages"]])
        async with asyncio.timeout(60):
            await asyncio.gather(*readers)
        # Then every task was claimed by its own organisation's agent: no delivery crossed over
        for key, (name, _) in agents.items():
            rows = sql("SELECT status, claimed_by, error FROM task_attempts WHERE run_id = ANY(:ids)", ids=runs[key])
            # (An attempt may have been retried before any agent took it, on a loaded machine: no one claimed it.)
            assert {r["claimed_by"] for r in rows if r["claimed_by"]} == {name}, key
            assert sum(r["status"] == "succeeded" for r in rows) == RUNS * STAGES, key
        # And each sees only its own runs, events (live ones too), agents and costs; the other's are not found
        for key, client in orgs.items():
            other = "second" if key == "first" else "first"
            listed = {r["run_id"] for r in (await client.get("/v1/runs", params={"limit": 500})).json()}
            assert listed == set(runs[key])
            assert (await client.get(f"/v1/runs/{runs[other][0]}")).status_code == 404
            assert (await client.get("/v1/events", params={"run_id": runs[other][0]})).json() == []
            assert {e["run_id"] for e in seen[key]} == set(runs[key])
            assert [a["name"] for a in (await client.get("/v1/agents")).json()] == [agents[key][0]]
            assert (await client.get(f"/v1/agents/{agents[other][0]}")).status_code == 404
            costs = (await client.get("/v1/costs", params={"group": "run"})).json()
            assert costs and {row["key"] for row in costs} <= set(runs[key])
            assert (await client.post(f"/v1/runs/{runs[other][0]}/cancel")).status_code == 404
        for _, child in agents.values():
            stack.supervisor.stop(child, grace=5)
