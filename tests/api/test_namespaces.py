"""An organisation in a Temporal namespace of its own: its runs' workflows, histories and task tokens live there,
the worker polls it without a restart, and nothing of them is reachable from the deployment's namespace."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from devart.core.temporal import ORG
from devart.core.temporal_namespaces import Namespaces
from tests.api.test_organisations import agent, bearer
from tests.helpers import noop_stage, poll, unique, wait_run
from tests.stack import Stack


def in_namespace(temporal: Client, namespace: str) -> Client:
    return Namespaces(temporal).client(namespace)


async def test_an_organisation_runs_in_its_own_namespace_and_nowhere_else(
    api: httpx.AsyncClient, stack: Stack, temporal: Client, tmp_path: Path
) -> None:
    # Given an organisation made with a namespace of its own, and its agent
    org, namespace, capability = unique("ns-org"), unique("devart-ns"), unique("ns-cap")
    created = await api.post("/v1/orgs", json={"id": org, "temporal_namespace": namespace})
    assert created.status_code == 201, created.text
    assert created.json()["temporal_namespace"] == namespace
    token = (await api.post("/v1/tokens", json={"org": org, "name": "test"})).json()["token"]
    async with httpx.AsyncClient(base_url=str(api.base_url), headers=bearer(token), timeout=30.0) as client:
        name, child = await agent(stack, client, capability)
        stages = [noop_stage("one", capability), noop_stage("held", capability, sleep=120)]
        stages[1]["depends_on"] = ["one"]
        assert (await client.post("/v1/pipelines", json={"name": "iso", "stages": stages[:1]})).status_code == 201
        assert (await client.post("/v1/pipelines", json={"name": "iso-held", "stages": stages})).status_code == 201

        # When it starts a run: the worker polls the new namespace without a restart, and the run succeeds
        started = await client.post("/v1/runs", json={"pipeline": "iso", "repo": str(tmp_path)})
        assert started.status_code == 201, started.text
        run_id = started.json()["run_id"]
        assert f"/namespaces/{namespace}/workflows/{run_id}" in started.json()["ui_url"]
        run = await wait_run(client, run_id, deadline=120)
        assert run["status"] == "succeeded", run
        assert f"/namespaces/{namespace}/" in run["ui_url"]

        # Then its workflow is in its namespace, tagged with its organisation, and unknown to the deployment's
        own = in_namespace(temporal, namespace)
        described = await own.get_workflow_handle(run_id).describe()
        assert described.typed_search_attributes.get(ORG) == org
        with pytest.raises(RPCError) as missing:
            await temporal.get_workflow_handle(run_id).describe()
        assert missing.value.status == RPCStatusCode.NOT_FOUND
        listed = [w.id async for w in temporal.list_workflows(f'DevartOrg = "{org}"')]
        assert listed == []

        # And a cancel reaches the workflow in its namespace (the stage's claim and heartbeats went there too)
        held = (await client.post("/v1/runs", json={"pipeline": "iso-held", "repo": str(tmp_path)})).json()["run_id"]

        async def holding() -> bool:
            stages = (await client.get(f"/v1/runs/{held}")).json()["stages"]
            return any(s["name"] == "held" and s["status"] == "running" for s in stages)

        await poll(holding, deadline=60, what="the held stage to run")
        assert (await client.post(f"/v1/runs/{held}/cancel")).status_code == 202
        assert (await wait_run(client, held, deadline=60))["status"] == "cancelled"

        async def closed() -> WorkflowExecutionStatus | None:
            status = (await own.get_workflow_handle(held).describe()).status
            return status if status != WorkflowExecutionStatus.RUNNING else None

        assert await poll(closed, deadline=30, what="the held run's workflow to close") in (
            WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.COMPLETED)

        # And another organisation's caller finds neither run
        assert (await api.get(f"/v1/runs/{run_id}")).status_code == 404
        stack.supervisor.stop(child, grace=5)
        assert name


async def test_a_namespace_is_one_organisations_and_must_be_a_namespace_name(api: httpx.AsyncClient) -> None:
    namespace = unique("devart-ns")
    assert (await api.post("/v1/orgs", json={"id": unique("ns-a"), "temporal_namespace": namespace})).status_code == 201
    # Another organisation cannot share it, and nothing of the refused one is written
    taken_id = unique("ns-b")
    taken = await api.post("/v1/orgs", json={"id": taken_id, "temporal_namespace": namespace})
    assert taken.status_code == 409 and namespace in taken.json()["detail"]
    assert taken_id not in {o["id"] for o in (await api.get("/v1/orgs")).json()}
    # A name Temporal would not take is a 422 naming it, before Temporal is asked
    for bad in ("-dash-first", "has space", "x", "semi;colon"):
        refused = await api.post("/v1/orgs", json={"id": unique("ns-c"), "temporal_namespace": bad})
        assert refused.status_code == 422, (bad, refused.text)
    # The deployment's own namespace means no namespace of its own
    plain = await api.post("/v1/orgs", json={"id": unique("ns-d"), "temporal_namespace": "default"})
    assert plain.status_code == 201 and plain.json()["temporal_namespace"] is None
