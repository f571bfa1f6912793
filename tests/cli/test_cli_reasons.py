"""Why a run failed, as a person sees it: the failing test and the reason in the CLI's tables, the log tail in
``runs show``, the same in ``GET /v1/runs/{id}``; links and run ids never cut by a narrow terminal.

One real run of build-test-review on the sample repository with ``--runxfail`` (its known-bug test then fails)
serves every test here. The assertions are on presentation only: the failing test's name, that a reason and a log
tail are shown, not how the skills or the workflow produce them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devart.core.temporal import ui_link
from tests.helpers import wait_run
from tests.stack import SAMPLE_REPO, Stack, admin, sql

#: The sample's xfail test, which fails under --runxfail (examples/sample-app/tests/test_slug.py).
FAILING_TEST = "test_slugify_transliterates_accented_letters"
RUN_ID = re.compile(r"build-test-review-[0-9a-f]{12}")


def devart(stack: Stack, *args: str, columns: int = 200, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "devart.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def run_view(stack: Stack, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.api_url}/v1/runs/{run_id}", headers=admin(stack), timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def failed_run(stack: Stack, pool: dict) -> Iterator[tuple[subprocess.CompletedProcess[str], str]]:
    """``devart run build-test-review --wait`` with a failing test: its output and the run id."""
    done = devart(stack, "run", "build-test-review", "--repo", str(SAMPLE_REPO), "-p", "pytest_args=--runxfail",
                  "--wait", timeout=420)
    found = RUN_ID.search(done.stdout)
    assert found, done.stdout + done.stderr
    yield done, found.group(0)


def stage(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in view["stages"] if s["name"] == name)


def test_run_wait_names_the_failing_test_and_the_reason(failed_run: tuple[subprocess.CompletedProcess[str], str],
                                                        stack: Stack) -> None:
    done, run_id = failed_run
    assert done.returncode == 1, done.stdout + done.stderr
    test = stage(run_view(stack, run_id), "test")
    assert test["status"] == "failed", done.stdout
    assert FAILING_TEST in done.stdout
    assert test["reason"] and test["reason"] in done.stdout  # the reason line, whole
    assert "skipped because" in done.stdout  # review did not run, and the table says why
    assert f"devart runs show {run_id}" in done.stdout  # where the log tail is


def test_runs_show_has_reasons_failing_tests_and_log_tail(failed_run: tuple[subprocess.CompletedProcess[str], str],
                                                          stack: Stack) -> None:
    _, run_id = failed_run
    test = stage(run_view(stack, run_id), "test")
    shown = devart(stack, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert FAILING_TEST in shown.stdout and test["reason"] in shown.stdout
    assert "test · log tail" in shown.stdout
    tail = [line for line in test["result"]["log_tail"].splitlines() if line.strip()]
    assert tail and tail[-1].strip() in shown.stdout
    # Succeeded stages show their log tail only when asked.
    build_tail = [line for line in (stage(run_view(stack, run_id), "build")["result"] or {}).get("log_tail", "")
                  .splitlines() if line.strip()]
    if build_tail:
        assert "build · log tail" not in shown.stdout
        assert "build · log tail" in devart(stack, "runs", "show", run_id, "--logs").stdout


def test_api_run_view_carries_reason_failures_and_log_tail(
    failed_run: tuple[subprocess.CompletedProcess[str], str], stack: Stack
) -> None:
    _, run_id = failed_run
    view = run_view(stack, run_id)
    test = stage(view, "test")
    assert test["status"] == "failed" and test["error"]
    assert test["reason"] == test["error"].strip().splitlines()[0]
    assert any(f["test"].endswith(FAILING_TEST) and f["outcome"] for f in test["failures"]), test["failures"]
    assert test["failures"] == [
        {"test": f["test"], "outcome": f["outcome"], "message": (f["message"].splitlines() or [""])[0]}
        for f in test["result"]["output"]["failures"]
    ]
    assert test["result"]["log_tail"].strip()
    review = stage(view, "review")
    assert review["status"] == "skipped" and "skipped because" in review["reason"] and review["failures"] == []
    assert all(s["reason"] is None for s in view["stages"] if s["status"] == "succeeded")
    schema = httpx.get(f"{stack.api_url}/openapi.json", timeout=30).json()["components"]["schemas"]
    stage_schema = next(v for k, v in schema.items() if k.startswith("StageView"))["properties"]
    assert all(stage_schema[f].get("description") for f in ("reason", "failures", "error", "result"))


async def test_web_ui_link_is_whole_on_one_line_at_60_columns(
    failed_run: tuple[subprocess.CompletedProcess[str], str], stack: Stack, api: httpx.AsyncClient
) -> None:
    _, run_id = failed_run
    shown = devart(stack, "runs", "show", run_id, columns=60)
    assert shown.returncode == 0, shown.stderr
    assert f"Web UI: {ui_link(run_id)}" in shown.stdout.splitlines()
    started = devart(stack, "run", "lint-test", "--repo", str(SAMPLE_REPO), columns=60)
    assert started.returncode == 0, started.stderr
    new_id = re.search(r"lint-test-[0-9a-f]{12}", started.stdout)
    assert new_id, started.stdout
    assert started.stdout.splitlines()[0].endswith(f"Web UI: {ui_link(new_id.group(0))}")
    await wait_run(api, new_id.group(0), deadline=300)  # nothing left running for the other tests


def test_runs_list_shows_whole_run_ids_at_80_columns(
    failed_run: tuple[subprocess.CompletedProcess[str], str], stack: Stack
) -> None:
    listed = devart(stack, "runs", "list", "--limit", "10", columns=80)
    assert listed.returncode == 0, listed.stderr
    ids = [r["run_id"] for r in httpx.get(f"{stack.api_url}/v1/runs", params={"limit": 10}, headers=admin(stack),
                                          timeout=30).json()]
    assert failed_run[1] in ids
    lines = listed.stdout.splitlines()
    assert all(any(line.split() and line.split()[0] == run_id for line in lines) for run_id in ids), listed.stdout
    assert "…" not in listed.stdout


def test_unknown_run_is_one_error_line(stack: Stack) -> None:
    for args in (("runs", "show", "no-such-run"), ("runs", "show", "no-such-run", "--logs")):
        done = devart(stack, *args)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == ["error: run 'no-such-run' not found"], done.stderr
        assert not done.stdout


def test_a_failed_stage_without_a_result_gets_its_agents_report(
    failed_run: tuple[subprocess.CompletedProcess[str], str], stack: Stack
) -> None:
    """If the run's record lost a failed stage's result, the API and CLI take the agent's report from its attempt."""
    _, run_id = failed_run
    before = next(s for s in run_view(stack, run_id)["stages"] if s["status"] == "failed" and s["result"])
    recorded = sql("SELECT stages::text AS stages FROM runs WHERE id = :id", id=run_id)[0]["stages"]
    bare = [{**s, "result": None} if s["name"] == before["name"] else s for s in json.loads(recorded)]
    sql("UPDATE runs SET stages = CAST(:stages AS json) WHERE id = :id", stages=json.dumps(bare), id=run_id)
    try:
        after = stage(run_view(stack, run_id), before["name"])
        assert after["result"] and after["result"]["log_tail"] == before["result"]["log_tail"]
        assert after["failures"] == before["failures"] and after["reason"] == before["reason"]
        shown = devart(stack, "runs", "show", run_id).stdout
        assert f"{before['name']} · log tail" in shown
        assert all(f["test"] in shown for f in before["failures"][:5])
    finally:
        sql("UPDATE runs SET stages = CAST(:stages AS json) WHERE id = :id", stages=recorded, id=run_id)
