"""Bad input gets a 4xx naming the problem, starts nothing, and never a 500."""

from __future__ import annotations

import httpx
from temporalio.client import Client

from tests.helpers import unique
from tests.stack import SAMPLE_REPO, Stack, admin, register_agent, sql


async def _workflow_count(temporal: Client, stack: Stack) -> int:
    return (await temporal.count_workflows()).count


async def test_unknown_pipeline_is_404_with_suggestion(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/runs", json={"pipeline": "build-test-reveiw", "repo": str(SAMPLE_REPO)})
    assert r.status_code == 404
    assert "did you mean 'build-test-review'" in r.json()["detail"]


async def test_bad_requests_start_nothing(api: httpx.AsyncClient, temporal: Client, stack: Stack) -> None:
    before_runs = sql("SELECT count(*) AS n FROM runs")[0]["n"]
    before = await _workflow_count(temporal, stack)
    cases = [
        ({"pipeline": "lint-test", "repo": "relative/path"}, 422, "must be absolute"),
        ({"pipeline": "lint-test", "repo": "/no/such/dir"}, 422, "does not exist"),
        ({"pipeline": "lint-test", "repo": str(SAMPLE_REPO), "params": {"pytest_arg": "-x"}}, 422,
         "did you mean 'pytest_args'"),
        ({"pipeline": "lint-test"}, 422, "repo"),
        ({"pipeline": "lint-test", "repo": str(SAMPLE_REPO), "version": 0}, 422, "version"),
        # Sources: only the folders runs may use, and nothing git could read as an option
        ({"pipeline": "lint-test", "repo": "/etc"}, 422, "'/etc' is outside the folders runs may use"),
        ({"pipeline": "lint-test", "repo": "file:///etc"}, 422, "is outside the folders runs may use"),
        ({"pipeline": "lint-test", "repo": "--upload-pack=touch /tmp/pwned"}, 422, "starts with '-'"),
        ({"pipeline": "lint-test", "repo": str(SAMPLE_REPO), "ref": "-oProxyCommand=id"}, 422, "starts with '-'"),
    ]
    for body, status, needle in cases:
        r = await api.post("/v1/runs", json=body)
        assert r.status_code == status, (body, r.text)
        assert needle in r.text, r.text
    assert sql("SELECT count(*) AS n FROM runs")[0]["n"] == before_runs
    assert await _workflow_count(temporal, stack) == before


async def test_invalid_pipeline_publish_and_validate(api: httpx.AsyncClient) -> None:
    bad = {"name": "cyclic", "stages": [
        {"name": "a", "skill": "noop", "depends_on": ["b"]},
        {"name": "b", "skill": "noop", "depends_on": ["a"]},
        {"name": "c", "skill": "tset"},
    ]}
    report = (await api.post("/v1/pipelines/validate", json=bad)).json()
    assert report["valid"] is False
    assert any("cycle" in p for p in report["problems"])
    assert any("did you mean 'test'" in p for p in report["problems"])
    r = await api.post("/v1/pipelines", json=bad)
    assert r.status_code == 422 and len(r.json()["problems"]) == 2
    assert (await api.get("/v1/pipelines/cyclic")).status_code == 404


async def test_publish_creates_new_versions(api: httpx.AsyncClient) -> None:
    name = unique("pub")
    doc = {"name": name, "stages": [{"name": "only", "skill": "noop"}]}
    assert (await api.post("/v1/pipelines", json=doc)).json()["version"] == 1
    assert (await api.post("/v1/pipelines", json=doc)).json()["version"] == 2
    listed = {p["name"]: p for p in (await api.get("/v1/pipelines")).json()}
    assert listed[name]["version"] == 2 and listed["build-test-review"]["builtin"] is True


async def test_unknown_run_and_cancel(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/runs/nope")).status_code == 404
    assert (await api.post("/v1/runs/nope/cancel")).status_code == 404


async def test_agent_routes_need_a_valid_active_key(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/agent/lanes")).status_code == 401
    assert (await api.get("/v1/agent/lanes", headers={"Authorization": "Bearer dva_0123456789_x"})).status_code == 401
    name = unique("inactive")
    key = register_agent(name, ["python"])
    auth = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/v1/agent/me", headers=auth)).status_code == 200
    sql("UPDATE agents SET active = false WHERE name = :n", n=name)
    assert (await api.get("/v1/agent/me", headers=auth)).json()["active"] is False
    r = await api.get("/v1/agent/lanes", headers=auth)
    assert r.status_code == 403 and "deactivated" in r.json()["detail"]
    assert (await api.post("/v1/agent/tasks/whatever/claim", headers=auth)).status_code == 403


def test_keys_are_not_stored_in_clear(stack: Stack) -> None:
    key = register_agent(unique("clear"), ["python"])
    dump = str(sql("SELECT * FROM agents")) + str(sql("SELECT * FROM events"))
    assert key not in dump and key.split("_", 2)[2] not in dump


async def test_an_agent_with_a_capability_that_cannot_name_a_lane_is_refused(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    name = unique("odd")
    r = await api.post("/v1/agents", headers=admin(stack), json={"name": name, "capabilities": ["python", "c++"]})
    assert r.status_code == 422 and "invalid capability 'c++'" in r.text, r.text
    assert sql("SELECT name FROM agents WHERE name = :n", n=name) == []
