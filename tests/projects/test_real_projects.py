"""Verdicts on projects devart was not written for: each real project's counts equal pytest's, run directly.

Each project goes through a build → test pipeline on the real stack (agents, sandboxes in ``network: packages``
mode, the package index proxy), then pytest runs directly on the same source in a fresh virtualenv holding the
packages devart's test stage recorded. The two sets of counts must be equal, and the run's verdict must follow
them: a failing test fails the run, its workflow and names the test, and so does a suite of no tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from tests.helpers import publish, unique, wait_run
from tests.projects.sources import Project, describe, fetch_sdist, run_pytest_directly, selected, unpack
from tests.stack import Stack

#: The projects this session runs: the test command's, or all of them under ``scripts/projects``.
SELECTED = selected()


def build_test_pipeline(name: str) -> dict:
    """build → test, both with the package index and nothing else; the index date comes from a parameter."""
    packages = {"network": "packages", "memory_mb": 2048}
    return {
        "name": name, "version": 1, "params": {"exclude_newer": ""},
        "stages": [
            {"name": "build", "skill": "build", "requires": ["python", "build"], "timeout": 600,
             "heartbeat_timeout": 60, "inputs": {"exclude_newer": "${exclude_newer}"}, "sandbox": packages},
            {"name": "test", "skill": "test", "requires": ["python", "test"], "depends_on": ["build"],
             "timeout": 900, "heartbeat_timeout": 60, "inputs": {"exclude_newer": "${exclude_newer}"},
             "sandbox": packages},
        ],
    }


@pytest.fixture
async def pipeline(api: httpx.AsyncClient, stack: Stack, pool: dict) -> str:
    name = unique("real-projects")
    await publish(api, build_test_pipeline(name))
    return name


@pytest.mark.timeout(900)
@pytest.mark.parametrize("project", SELECTED, ids=[p.id for p in SELECTED])
async def test_counts_equal_pytest_run_directly(project: Project, pipeline: str, api: httpx.AsyncClient,
                                                temporal: Client, tmp_path: Path) -> None:
    source = unpack(fetch_sdist(project), tmp_path)
    response = await api.post("/v1/runs", json={"pipeline": pipeline, "repo": str(source),
                                                "params": {"exclude_newer": project.exclude_newer}})
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    run = await wait_run(api, run_id, deadline=800)
    stages = {s["name"]: s for s in run["stages"]}
    build, test = stages["build"], stages["test"]
    assert build["status"] == "succeeded", describe(run)
    assert test["result"] is not None, describe(run)
    report = test["result"]["output"]
    environment = report["environment"]
    assert environment["tested"].startswith("wheel "), environment  # the build's wheel, not the checkout
    assert tuple(environment["sources"]) == project.sources, environment

    direct = run_pytest_directly(source, environment["installed"], project.exclude_newer,
                                 getattr(sys, "_base_executable", sys.executable))
    devart = {key: report[key] for key in direct}
    assert devart == direct, f"{project.id}: devart {devart} vs pytest {direct}"

    status = (await temporal.get_workflow_handle(run_id).describe()).status
    if project.no_tests:  # nothing ran, directly or in devart: a failed run, not a green one on nothing
        assert not any(devart.values()) and report["exit_code"] == 5, report
        assert run["status"] == "failed" and test["status"] == "failed", describe(run)
        assert status == WorkflowExecutionStatus.FAILED
        assert test["error"].startswith("NoTestsCollected: no tests were collected"), describe(run)
        return
    assert devart["passed"] > 0
    if direct["failed"] or direct["errors"]:
        assert run["status"] == "failed" and test["status"] == "failed", describe(run)
        assert status == WorkflowExecutionStatus.FAILED
        assert "tests failed" in test["error"], describe(run)
        named = [f["test"] for f in report["failures"]]
        assert project.failing and any(project.failing in test_id for test_id in named), named
    else:
        assert run["status"] == "succeeded" and test["status"] == "succeeded", describe(run)
        assert status == WorkflowExecutionStatus.COMPLETED
        assert not project.failing
