"""A run's verdict is the truth: every way a run can go wrong ends it failed (or cancelled), with the reason.

Each case checks the three places a verdict is read: the API (the run and every stage in a final state), the
CLI's exit code (``devart run … --wait``) and the Temporal workflow's own status, which the Web UI shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from devart.core.contracts import RunResult
from devart.core.devstack.services import free_port
from devart.core.devstack.supervisor import Child
from tests.helpers import closed_status, noop_stage, poll, publish, unique, wait_stage
from tests.stack import ROOT, Stack, admin, sql

FINAL = {"succeeded", "failed", "skipped", "cancelled"}


def devart(stack: Stack, *args: str, **env: str) -> subprocess.Popen[str]:
    """``devart …`` as an operator types it, from the repository root, against the suite's stack."""
    return subprocess.Popen([sys.executable, "-m", "devart.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **stack.env, "COLUMNS": "200", **env})


async def run_cli(stack: Stack, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    """``devart run … --wait --json``: its exit code and the final run it printed."""
    proc = devart(stack, "run", *args, "--wait", "--json", **env)
    out, err = await asyncio.to_thread(proc.communicate, timeout=180)
    assert out.strip(), f"devart printed nothing (exit {proc.returncode}): {err}"
    return proc.returncode, json.loads(out)


async def assert_verdict(api: httpx.AsyncClient, temporal: Client, run_id: str, status: str) -> dict[str, Any]:
    """The API and Temporal agree the run ended ``status``; no stage is left running or pending."""
    run = (await api.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == status, json.dumps(run, indent=1, default=str)[:3000]
    assert all(s["status"] in FINAL for s in run["stages"]), [(s["name"], s["status"]) for s in run["stages"]]
    assert run["finished_at"] is not None
    expected = {"succeeded": WorkflowExecutionStatus.COMPLETED, "failed": WorkflowExecutionStatus.FAILED,
                "cancelled": WorkflowExecutionStatus.CANCELED}[status]
    assert await closed_status(temporal, run_id) == expected
    if status != "succeeded":
        assert run["error"], run
    return dict(run)


async def failed_run(stack: Stack, api: httpx.AsyncClient, temporal: Client, *args: str,
                     **env: str) -> dict[str, Any]:
    """Start a run through the CLI, which must exit 1, and check its verdict is ``failed`` everywhere."""
    code, printed = await run_cli(stack, *args, **env)
    assert code == 1, printed
    assert printed["status"] == "failed"
    return await assert_verdict(api, temporal, printed["run_id"], "failed")


async def two_noop_stages(api: httpx.AsyncClient, cap: str, **inputs: Any) -> str:
    """A pipeline whose second stage depends on the first; no agent is needed unless a stage is dispatched."""
    name = unique("verdict")
    await publish(api, {"name": name, "stages": [
        noop_stage("first", cap, **inputs), {**noop_stage("second", cap), "depends_on": ["first"]},
    ]})
    return name


def git_repo(path: Path) -> Path:
    """A one-commit git repository."""
    path.mkdir()
    (path / "README.md").write_text("hello\n")
    for args in (["init", "-q"], ["add", "README.md"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


async def test_a_successful_run_is_a_completed_workflow(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    cap = unique("ok")
    stack.start_agent(unique("agent"), [cap])
    name = await two_noop_stages(api, cap)
    code, printed = await run_cli(stack, name, "--repo", str(tmp_path))
    assert code == 0, printed
    run = await assert_verdict(api, temporal, printed["run_id"], "succeeded")
    assert [s["status"] for s in run["stages"]] == ["succeeded", "succeeded"] and run["error"] is None
    result = await temporal.get_workflow_handle(printed["run_id"], result_type=RunResult).result()
    assert result.status == "succeeded"


async def test_a_ref_that_does_not_exist(api: httpx.AsyncClient, temporal: Client, stack: Stack) -> None:
    # The command from the issue: the ref is missing in the repository holding the sample
    run = await failed_run(stack, api, temporal, "build-test-review", "--repo", "examples/sample-app",
                           "--ref", "nope-branch")
    stages = {s["name"]: s for s in run["stages"]}
    assert stages["build"]["status"] == "failed"
    assert "SandboxProvisionFailed: ref 'nope-branch' not found in" in stages["build"]["error"]
    assert {stages[n]["status"] for n in ("test", "lint", "review")} == {"skipped"}
    assert "stage 'build' failed: SandboxProvisionFailed: ref 'nope-branch' not found" in run["error"]
    # The workflow failed with the run's reason, and carries the per-stage result
    with pytest.raises(WorkflowFailureError) as failure:
        await temporal.get_workflow_handle(run["run_id"]).result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "RunFailed" and cause.non_retryable
    assert "ref 'nope-branch' not found" in cause.message
    assert RunResult.model_validate(cause.details[0]).stages[0].status == "failed"
    # The feed says so too
    events = sql("SELECT message FROM events WHERE kind = 'run.finished' AND run_id = :r", r=run["run_id"])
    assert events and "run failed" in events[0]["message"] and "nope-branch" in events[0]["message"]


async def test_a_project_without_tests_fails_its_test_stage_unless_the_run_accepts_it(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, pool: dict[str, Child], tmp_path: Path
) -> None:
    # Given a package with no test at all (as iniconfig's sdist is)
    repo = tmp_path / "untested"
    (repo / "untested").mkdir(parents=True)
    (repo / "untested" / "__init__.py").write_text('"""Nothing here is tested."""\n\nANSWER = 42\n')
    # When lint-test runs on it, the run fails on its test stage: a green verdict on nothing tested would mislead
    run = await failed_run(stack, api, temporal, "lint-test", "--repo", str(repo))
    stages = {s["name"]: s for s in run["stages"]}
    assert stages["lint"]["status"] == "succeeded"
    assert stages["test"]["status"] == "failed" and len(stages["test"]["attempt_log"]) == 1  # not retried
    assert stages["test"]["error"].startswith("NoTestsCollected: no tests were collected"), stages["test"]
    assert "allow_no_tests" in run["error"]
    events = sql("SELECT message FROM events WHERE kind = 'run.finished' AND run_id = :r", r=run["run_id"])
    assert len(events) == 1 and "no tests were collected" in events[0]["message"]
    # And a run told that a project without tests is fine passes, saying what it found
    code, printed = await run_cli(stack, "lint-test", "--repo", str(repo), "-p", "allow_no_tests=true")
    assert code == 0, printed
    run = await assert_verdict(api, temporal, printed["run_id"], "succeeded")
    assert {s["name"]: s["result"]["summary"] for s in run["stages"]}["test"] == "no tests were collected"


async def test_a_repository_that_does_not_exist(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    missing = f"file://{tmp_path}/missing.git"
    run = await failed_run(stack, api, temporal, await two_noop_stages(api, unique("cap")), "--repo", missing)
    first, second = run["stages"]
    assert first["status"] == "failed" and f"repository {missing} not found" in first["error"]
    assert "SandboxProvisionFailed" in first["error"] and first["attempt_log"] == []
    assert second["status"] == "skipped"
    assert await _provision_attempts(temporal, run["run_id"]) == 1  # not found is not retried


async def test_an_unreachable_repository_is_retried_then_fails(
    api: httpx.AsyncClient, temporal: Client, stack: Stack
) -> None:
    # A name that never resolves (RFC 2606): loopback URLs are refused outright, not retried (source_hosts.py)
    url = f"http://{unique('unreachable')}.invalid/x.git"
    run = await failed_run(stack, api, temporal, await two_noop_stages(api, unique("cap")), "--repo", url)
    first, second = run["stages"]
    assert first["status"] == "failed" and second["status"] == "skipped"
    assert first["error"].startswith(f"SourceUnreachable: cannot reach repository {url}")
    assert "could not resolve host" in first["error"]
    assert await _provision_attempts(temporal, run["run_id"]) == 3  # PROVISION_RETRY's maximum_attempts


async def test_a_provisioning_error(api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path) -> None:
    # A plain directory cannot be checked out at a ref
    plain = tmp_path / "plain"
    plain.mkdir()
    run = await failed_run(stack, api, temporal, await two_noop_stages(api, unique("cap")), "--repo", str(plain),
                           "--ref", "main")
    first, second = run["stages"]
    assert first["status"] == "failed" and "is not inside a git repository" in first["error"]
    assert second["status"] == "skipped" and "stage 'first' failed" in run["error"]


async def test_a_bad_ref_in_a_local_repository(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "repo")
    run = await failed_run(stack, api, temporal, await two_noop_stages(api, unique("cap")), "--repo", str(repo),
                           "--ref", "nope-branch")
    assert f"ref 'nope-branch' not found in {repo}" in run["stages"][0]["error"]


@pytest.fixture
def short_approval_api(stack: Stack) -> Iterator[str]:
    """A second API whose runs wait only two seconds for an approval."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child: Child = stack.supervisor.spawn("api-short-approval", "api", "--host", "127.0.0.1", "--port", str(port),
                                          env={"DEVART_APPROVAL_TIMEOUT": "2", "DEVART_API_URL": url})
    try:
        stack.supervisor.wait_healthy(url, child)
        yield url
    finally:
        stack.supervisor.stop(child, grace=5)


async def test_an_approval_never_given(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path, short_approval_api: str
) -> None:
    # Given a pipeline over its soft budget from the start, and nobody to approve
    name = await two_noop_stages(api, unique("cap"))
    r = await api.put(f"/v1/budgets/pipeline/{name}", json={"soft_limit": 0.0}, headers=admin(stack))
    assert r.status_code == 200, r.text
    # When a run waits longer than the approval timeout
    run = await failed_run(stack, api, temporal, name, "--repo", str(tmp_path), DEVART_API_URL=short_approval_api)
    # Then its first stage fails for it, and the second never runs
    first, second = run["stages"]
    assert first["status"] == "failed" and first["error"].startswith("approval timed out")
    assert "soft limit" in first["error"] and first["attempt_log"] == []
    assert second["status"] == "skipped"
    assert "stage 'first' failed: approval timed out" in run["error"]


async def test_an_error_in_a_stage(api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path) -> None:
    # Given a worker whose database lacks the budgets table (as when it runs ahead of its migration)
    name = await two_noop_stages(api, unique("cap"))
    sql("ALTER TABLE budgets RENAME TO budgets_away")
    try:
        # When a run checks its budget, Then the stage fails with PostgreSQL's reason, at once
        run = await failed_run(stack, api, temporal, name, "--repo", str(tmp_path))
    finally:
        sql("ALTER TABLE budgets_away RENAME TO budgets")
    first, second = run["stages"]
    assert first["status"] == "failed" and first["attempt_log"] == []
    assert first["error"].startswith("BudgetCheckFailed: the budget check failed:") and "budgets" in first["error"]
    assert second["status"] == "skipped"


async def test_cancel(api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path) -> None:
    # Given a run followed by the CLI, busy in its first stage
    cap = unique("cancel")
    stack.start_agent(unique("agent"), [cap])
    name = await two_noop_stages(api, cap, sleep=120)
    proc = devart(stack, "run", name, "--repo", str(tmp_path), "--wait", "--json")
    try:
        async def started() -> str | None:
            runs = (await api.get("/v1/runs", params={"pipeline": name})).json()
            return str(runs[0]["run_id"]) if runs else None

        run_id = await poll(started, deadline=30, what="the CLI to start the run")
        await wait_stage(api, run_id, "first", "running")
        # When it is cancelled
        assert (await api.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
        out, err = await asyncio.to_thread(proc.communicate, timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Then the CLI exits 1, and the run and its workflow are cancelled
    assert proc.returncode == 1, err
    assert json.loads(out)["status"] == "cancelled"
    run = await assert_verdict(api, temporal, run_id, "cancelled")
    assert [s["status"] for s in run["stages"]] == ["cancelled", "cancelled"]


#: The step that provisions a stage's sandbox: from engine 9 together with the budget check.
_PROVISIONS = ("provision_sandbox", "prepare_stage")


async def _provision_attempts(temporal: Client, run_id: str) -> int:
    """Attempts of the run's first provision: a regular activity's started event holds its last attempt (a remote
    source is fetched over the network), a local activity's marker its own."""
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    scheduled: set[int] = set()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_type.name in _PROVISIONS:
                scheduled.add(event.event_id)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            if event.activity_task_started_event_attributes.scheduled_event_id in scheduled:
                return int(event.activity_task_started_event_attributes.attempt)
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            data = json.loads(event.marker_recorded_event_attributes.details["data"].payloads[0].data)
            if data.get("activity_type") in _PROVISIONS:
                return int(data["attempt"])
    raise AssertionError(f"no provision in {run_id}'s history")
