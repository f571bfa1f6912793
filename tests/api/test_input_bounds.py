"""Every attack of the input-bounds pass gets a 4xx naming the limit, stores nothing, and keeps the connection open.

"Keeps the connection open" is checked on the wire: the next request on the same client goes over the same
keep-alive connection (the same network stream) and succeeds; uvicorn used to close it after each 500.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import pytest
from temporalio.client import Client

from devart.core import bounds
from devart.core.bounds import MAX_DEPTH
from devart.core.database import db
from tests.helpers import noop_stage, publish, unique
from tests.stack import SAMPLE_REPO, Stack, admin, register_agent, sql


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


def counts() -> dict[str, int]:
    """Rows of every table a refused request could have written to."""
    tables = ("runs", "pipeline_versions", "budgets", "agents", "events", "github_repositories", "github_deliveries")
    return {t: sql(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables}


async def refused(api: httpx.AsyncClient, method: str, url: str, status: int, *needles: str, **kw: Any) -> None:
    """``method url`` answers ``status`` with a JSON detail holding every needle, and the connection stays usable."""
    response = await api.request(method, url, **kw)
    assert response.status_code == status, (url, response.status_code, response.text[:500])
    assert response.headers["content-type"] == "application/json"
    detail = json.dumps(response.json())
    for needle in needles:
        assert needle in detail, (url, needle, detail[:1000])
    assert response.headers.get("connection") != "close"
    stream = response.extensions["network_stream"]
    after = await api.get("/healthz")
    assert after.status_code == 200
    assert after.extensions["network_stream"] is stream, "the connection was closed after the refusal"


async def test_nul_bytes_in_paths_and_queries_are_400(api: httpx.AsyncClient) -> None:
    before = counts()
    for url in ("/v1/runs/%00", "/v1/pipelines/a%00b", "/v1/github/repositories/a%00/b"):
        await refused(api, "GET", url, 400, "URL path contains a NUL byte")
    await refused(api, "POST", "/v1/runs/x%00/cancel", 400, "NUL byte")
    for url, name in (("/v1/events?kind=%00", "kind"), ("/v1/analytics?pipeline=a%00", "pipeline"),
                      ("/v1/runs?pipeline=%00&limit=5", "pipeline"), ("/v1/costs?run_id=%00", "run_id")):
        await refused(api, "GET", url, 400, f"query parameter '{name}' contains a NUL byte")
    assert counts() == before


async def test_nul_bytes_and_surrogates_in_bodies_are_422_naming_the_field(api: httpx.AsyncClient,
                                                                          stack: Stack) -> None:
    before = counts()
    run = {"pipeline": "lint-test", "repo": str(SAMPLE_REPO)}
    await refused(api, "POST", "/v1/runs", 422, "repo", "NUL byte", json={**run, "repo": f"{SAMPLE_REPO}\x00"})
    await refused(api, "POST", "/v1/runs", 422, "pytest_args", "NUL byte",
                  json={**run, "params": {"pytest_args": "-x\x00"}})
    await refused(api, "POST", "/v1/runs", 422, "pipeline", "unicode",
                  content=b'{"pipeline": "\\ud800", "repo": "/"}', headers={"content-type": "application/json"})
    await refused(api, "POST", "/v1/runs", 400, "not UTF-8", content=b'{"pipeline": "\xff", "repo": "/"}',
                  headers={"content-type": "application/json"})
    doc = {"name": unique("nul"), "stages": [{"name": "a", "skill": "noop", "inputs": {"script": "a\x00b"}}]}
    await refused(api, "POST", "/v1/pipelines", 422, "stages[0].inputs.script contains a NUL byte", json=doc)
    await refused(api, "POST", "/v1/agents", 422, "owner", "NUL byte", headers=admin(stack),
                  json={"name": unique("nul"), "capabilities": ["python"], "owner": "a\x00"})
    assert counts() == before


async def test_integers_out_of_range_are_422_naming_the_limit(api: httpx.AsyncClient, stack: Stack) -> None:
    before = counts()
    await refused(api, "GET", "/v1/pipelines/lint-test?version=99999999999999999999", 422, "version",
                  str(bounds.INT4_MAX))
    await refused(api, "POST", "/v1/runs", 422, "version", str(bounds.INT4_MAX),
                  json={"pipeline": "lint-test", "repo": str(SAMPLE_REPO), "version": 99999999999999999999})
    await refused(api, "GET", "/v1/dlq/99999999999999999999", 422, "letter_id", str(bounds.INT8_MAX),
                  headers=admin(stack))
    assert counts() == before


async def test_budgets_must_be_finite_and_in_range(api: httpx.AsyncClient, stack: Stack) -> None:
    before, name = counts(), unique("budget")
    await refused(api, "PUT", f"/v1/budgets/pipeline/{name}", 422, "soft_limit", "1000000000000",
                  json={"soft_limit": 1e300}, headers=admin(stack))
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        await refused(api, "PUT", f"/v1/budgets/pipeline/{name}", 422, "hard_limit", "finite",
                      content=b'{"hard_limit": ' + literal + b"}",
                      headers={**admin(stack), "content-type": "application/json"})
    await refused(api, "PUT", f"/v1/budgets/pipeline/{'b' * (bounds.MAX_KEY_CHARS + 1)}", 422, "name",
                  json={"soft_limit": 1.0}, headers=admin(stack))
    assert counts() == before


async def test_a_body_past_the_limit_is_413_by_length_or_by_chunks(api: httpx.AsyncClient) -> None:
    before = counts()
    doc = {"name": unique("huge"), "description": "x" * (10 * bounds.MiB), "stages": [{"name": "a", "skill": "noop"}]}
    await refused(api, "POST", "/v1/pipelines", 413, "larger than 1 MiB", json=doc)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit counts what arrives
        yield b'{"name": "chunked", "description": "'
        for _ in range(4):
            yield b"x" * bounds.MiB
        yield b'", "stages": [{"name": "a", "skill": "noop"}]}'

    await refused(api, "POST", "/v1/pipelines", 413, "larger than 1 MiB", content=chunks(),
                  headers={"content-type": "application/json"})
    assert counts() == before


async def test_an_unsigned_200_mb_webhook_is_refused_before_it_is_read(api: httpx.AsyncClient, stack: Stack) -> None:
    api_process = psutil.Process(next(c for c in stack.supervisor.children if c.name == "api").proc.pid)
    rss_before, before = api_process.memory_info().rss, counts()
    total = 200 * bounds.MiB

    async def body() -> AsyncIterator[bytes]:
        block = b"x" * bounds.MiB
        for _ in range(total // bounds.MiB):
            yield block

    headers = {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": unique("d"), "content-type": "application/json"}
    started = time.monotonic()
    # Declared: refused on the Content-Length alone, not with 401 after reading and checking the signature.
    await refused(api, "POST", "/v1/github/webhook", 413, "larger than 1 MiB", content=body(),
                  headers={**headers, "content-length": str(total)})
    # Chunked: refused at the first chunk past the limit.
    await refused(api, "POST", "/v1/github/webhook", 413, "larger than 1 MiB", content=body(), headers=headers)
    assert time.monotonic() - started < 30.0
    assert api_process.memory_info().rss - rss_before < 32 * bounds.MiB, "the API held the body in memory"
    assert counts() == before


async def test_json_nested_past_the_limit_is_refused(api: httpx.AsyncClient, stack: Stack) -> None:
    before, name = counts(), unique("deep")
    # The attack: 200 levels of stage inputs used to be stored, then stall every run in the worker.
    doc = {"name": name, "stages": [{"name": "a", "skill": "noop", "inputs": nested(200)}]}
    await refused(api, "POST", "/v1/pipelines", 422, f"nested deeper than {MAX_DEPTH} levels", json=doc)
    report = (await api.post("/v1/pipelines/validate", json=doc)).json()
    assert report["valid"] is False and f"nested deeper than {MAX_DEPTH}" in report["problems"][0]
    # Past what Python's JSON parser can read: refused while reading, with the limit named.
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    await refused(api, "POST", "/v1/pipelines", 400, f"at most {MAX_DEPTH} levels", content=deep,
                  headers={"content-type": "application/json"})
    # Heartbeat details are free-form too.
    key = register_agent(unique("deep"), ["python"])
    await refused(api, "POST", "/v1/agent/tasks/none/heartbeat", 422, "details", f"deeper than {MAX_DEPTH}",
                  json={"claim_id": "c", "details": nested(40)}, headers={"Authorization": f"Bearer {key}"})
    assert (await api.get(f"/v1/pipelines/{name}")).status_code == 404
    assert {k: v for k, v in counts().items() if k not in ("agents", "events")} == \
        {k: v for k, v in before.items() if k not in ("agents", "events")}


async def test_sizes_past_the_limits_are_422_naming_them(api: httpx.AsyncClient) -> None:
    name = unique("sizes")
    await publish(api, {"name": name, "params": {"p": ""},
                        "stages": [noop_stage("a", "python", text="${p}" * 5)]})
    before = counts()
    doc = {"name": name, "description": "d" * (bounds.MAX_DESCRIPTION_CHARS + 1), "stages": [{"name": "a",
                                                                                               "skill": "noop"}]}
    await refused(api, "POST", "/v1/pipelines", 422, f"at most {bounds.MAX_DESCRIPTION_CHARS}", json=doc)
    many = {"name": name, "stages": [{"name": f"s{i}", "skill": "noop"} for i in range(bounds.MAX_STAGES + 1)]}
    await refused(api, "POST", "/v1/pipelines", 422, f"at most {bounds.MAX_STAGES}", json=many)
    run = {"pipeline": name, "repo": str(SAMPLE_REPO)}
    await refused(api, "POST", "/v1/runs", 422, "params", str(bounds.MAX_PARAMS_BYTES // bounds.KiB),
                  json={**run, "params": {f"p{i}": "v" * 1000 for i in range(70)}})
    # 60 KiB is a fine parameter, but the stage's input repeats it five times: past what one task carries.
    await refused(api, "POST", "/v1/runs", 422, "stage 'a'", "MAX_STAGE_INPUT_BYTES",
                  json={**run, "params": {"p": "v" * (60 * bounds.KiB)}})
    await refused(api, "GET", f"/v1/runs/{'r' * (bounds.MAX_NAME_CHARS + 1)}", 422, "run_id")
    assert counts() == before
    listed = (await api.get("/v1/pipelines")).json()
    assert [p["version"] for p in listed if p["name"] == name] == [1]


async def test_a_stored_definition_temporal_or_the_worker_could_not_take_never_reaches_temporal(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    # Given versions stored before the limits existed: one nested as the attack left it, one of 1.5 MiB
    deep, big = unique("legacy"), unique("legacy")
    for name, inputs in ((deep, nested(200)), (big, {"text": "x" * (3 * bounds.MiB // 2)})):
        definition = {"name": name, "version": 1, "stages": [{"name": "a", "skill": "noop", "inputs": inputs}]}
        sql("INSERT INTO pipeline_versions (name, version, definition, created_at) VALUES (:n, 1, :d, now())",
            n=name, d=json.dumps(definition))
    before, workflows = counts(), (await temporal.count_workflows()).count
    # When runs of them are asked for, then they are refused naming why, and nothing is recorded or started
    await refused(api, "POST", "/v1/runs", 422, "cannot be encoded and read back",
                  json={"pipeline": deep, "repo": str(SAMPLE_REPO)})
    await refused(api, "POST", "/v1/runs", 422, "Temporal takes at most 1 MiB", "MAX_STAGE_INPUT_BYTES",
                  json={"pipeline": big, "repo": str(SAMPLE_REPO)})
    assert counts() == before
    assert (await temporal.count_workflows()).count == workflows


async def test_a_workflow_that_cannot_start_fails_its_run_with_the_reason(
    api: httpx.AsyncClient, temporal: Client, stack: Stack
) -> None:
    from devart.api.schemas import RunRequest
    from devart.domain import runs
    from devart.domain.runs import RunConflict

    # Given a workflow that already holds the run's id (nothing polls its task queue)
    run_id = unique("taken")
    handle = await temporal.start_workflow("NoSuchWorkflow", id=run_id, task_queue=unique("nobody"))
    try:
        db.engine.cache_clear()
        db._sessions.cache_clear()
        # When the run is started under that id, Temporal refuses the start
        async with db.session() as session:
            with pytest.raises(RunConflict, match="already exists"):
                await runs.start(session, temporal, RunRequest(pipeline="lint-test", repo=str(SAMPLE_REPO)),
                                 run_id=run_id)
    finally:
        await db.engine().dispose()
        db.engine.cache_clear()
        db._sessions.cache_clear()
        await handle.terminate()
    # Then the run is failed with the reason, not left 'running' without a workflow
    view = (await api.get(f"/v1/runs/{run_id}")).json()
    assert view["status"] == "failed" and view["finished_at"] is not None
    assert view["error"] == f"could not start: a workflow with id '{run_id}' already exists"
    kinds = [e["kind"] for e in (await api.get("/v1/events", params={"run_id": run_id})).json()]
    assert kinds == ["run.requested", "run.finished"]
