"""The built-in remedies on the real stack, one stage each: the failure a first attempt meets, the remedy its retry
gets (shown on the stage), and the verdict the retry reaches. Out of memory is in ``test_self_heal.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import noop_stage, poll, publish, start, unique, wait_run
from tests.stack import Stack, sql


def attempts(stage: dict[str, Any]) -> list[tuple[str, str]]:
    """Each attempt's status and error type."""
    return [(a["status"], (a.get("error") or "").partition(":")[0]) for a in stage["attempt_log"]]


def remedies(stage: dict[str, Any]) -> list[tuple[str, int, str, str]]:
    return [(r["name"], r["attempt"], r["after"], r["change"]) for r in (stage["result"] or {}).get("remedies", [])]


async def test_a_command_outliving_its_limit_gets_a_longer_one(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    # Given a stage whose command takes 3 s under a sandbox command limit of 2 s (the stage itself may take 120 s)
    cap = unique("slow")
    stack.start_agent(unique("agent"), [cap])
    name = unique("timeout")
    stage = {**noop_stage("slow", cap, sandbox_command="sleep 3"), "sandbox": {"timeout": 2}}
    await publish(api, {"name": name, "stages": [stage]})
    # When it runs
    run = await wait_run(api, await start(api, name, tmp_path), deadline=120)
    # Then the first attempt failed as a command timeout, and the retry had twice the limit and succeeded
    found = run["stages"][0]
    assert run["status"] == "succeeded", found["attempt_log"]
    assert attempts(found) == [("failed", "CommandTimeout"), ("succeeded", "")]
    assert "outlived the sandbox's command time limit (2s)" in found["attempt_log"][0]["error"]
    assert remedies(found) == [("longer_timeout", 2, "CommandTimeout", "command time limit 2 -> 4 s")]


FLAKY = '''from pathlib import Path

MARK = Path(__file__).with_name(".ran-once")


def test_flaky():
    first = not MARK.exists()
    MARK.touch()  # the workspace outlives the attempt: the next run finds it
    assert not first, "fails on its first run only"


def test_steady():
    assert sum([1, 2]) == 3
'''
BROKEN = "def test_broken():\n    assert 1 + 1 == 3, 'wrong on every run'\n"


def skill_stage(skill: str, cap: str, **extra: Any) -> dict[str, Any]:
    """A stage of a built-in skill (named after it) with three quick attempts; ``extra`` adds or replaces fields."""
    return {"name": skill, "skill": skill, "requires": [cap], "timeout": 300, "heartbeat_timeout": 30,
            "retry": {"initial_interval": 1, "maximum_interval": 2, "maximum_attempts": 3}, **extra}


async def skill_pipeline(api: httpx.AsyncClient, stack: Stack, skill: str, **extra: Any) -> str:
    """A pipeline of one ``skill_stage``, served by an agent of its own; its name."""
    cap, name = unique(skill), unique(skill)
    stack.start_agent(unique("agent"), [cap])
    await publish(api, {"name": name, "stages": [skill_stage(skill, cap, **extra)]})
    return name


def project(folder: Path, *files: tuple[str, str]) -> Path:
    """Plain test modules with no packaging: the skill tests them in place."""
    folder.mkdir()
    for name, text in files:
        (folder / name).write_text(text)
    return folder


async def test_failed_tests_are_rerun_alone_and_told_flaky_or_broken(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    # Given a project whose one failing test passes on its second run, and one whose other test always fails
    name = await skill_pipeline(api, stack, "test", sandbox={"network": "packages"})
    flaky = project(tmp_path / "flaky", ("test_flaky.py", FLAKY))
    both = project(tmp_path / "both", ("test_flaky.py", FLAKY), ("test_broken.py", BROKEN))
    # When each runs
    ids = [await start(api, name, repo) for repo in (flaky, both)]
    first, second = await asyncio.gather(*(wait_run(api, run_id, deadline=300) for run_id in ids))
    # Then the flaky project's retry re-ran only the failed test, which passed: the stage succeeds, naming it flaky
    stage = first["stages"][0]
    assert first["status"] == "succeeded", stage["attempt_log"]
    assert attempts(stage) == [("failed", "TestsFailed"), ("succeeded", "")]
    assert remedies(stage) == [("rerun_failed_tests", 2, "TestsFailed", "re-run only the 1 failed test, up to 2 times")]
    out = stage["result"]["output"]
    assert out["flaky"] == ["test_flaky.py::test_flaky"] and out["broken"] == []
    assert out["rerun"]["runs"] == [{"run": 1, "tests": 1, "failed": 0}]  # test_steady was not run again
    assert (out["passed"], out["failed"], out["total"]) == (2, 0, 2)  # the suite's figures: the flaky one passed
    assert stage["result"]["summary"].startswith("flaky: test_flaky.py::test_flaky failed, then passed")
    # And the other project's broken test failed every re-run: the stage fails, naming it broken (and the flaky one)
    stage = second["stages"][0]
    assert second["status"] == "failed", stage["attempt_log"]
    assert attempts(stage) == [("failed", "TestsFailed"), ("failed", "TestsFailed")]  # the diagnosis is final
    assert "broken: test_broken.py::test_broken; flaky: test_flaky.py::test_flaky" in stage["error"]
    out = stage["result"]["output"]
    assert [b["test"] for b in out["broken"]] == ["test_broken.py::test_broken"]
    assert "wrong on every run" in out["broken"][0]["message"]
    assert [r["tests"] for r in out["rerun"]["runs"]] == [2, 1]  # the broken one alone, the second time
    assert (out["passed"], out["failed"], out["total"]) == (2, 1, 3)  # steady and flaky passed, broken failed


async def test_a_failed_test_is_not_retried_without_self_healing(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    name = await skill_pipeline(api, stack, "test", sandbox={"network": "packages"}, self_heal="suggest")
    run = await wait_run(api, await start(api, name, project(tmp_path / "p", ("test_flaky.py", FLAKY))),
                         deadline=300)
    assert attempts(run["stages"][0]) == [("failed", "TestsFailed")]  # never a blind full re-run


def packaged(folder: Path, requires: str, backend: str) -> Path:
    """A one-module project built by ``backend``."""
    folder.mkdir()
    (folder / "pyproject.toml").write_text(f'[build-system]\nrequires = ["{requires}"]\nbuild-backend = "{backend}"\n'
                                           '\n[project]\nname = "tinyproj"\nversion = "1.0"\ndescription = "tiny"\n')
    (folder / "tinyproj").mkdir()
    (folder / "tinyproj" / "__init__.py").write_text('"""tiny."""\n\nANSWER = 42\n')
    return folder


async def test_an_offline_build_is_retried_without_isolation_with_the_declared_backend(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    # Given offline build stages: one project declares hatchling (which the agent's environment holds), one
    # flit_core (which it does not)
    name = await skill_pipeline(api, stack, "build", sandbox={"network": "none"})
    hatch = packaged(tmp_path / "hatch", "hatchling", "hatchling.build")
    flit = packaged(tmp_path / "flit", "flit_core>=3.2,<4", "flit_core.buildapi")
    # When each runs
    ids = [await start(api, name, repo) for repo in (hatch, flit)]
    built, refused = await asyncio.gather(*(wait_run(api, run_id, deadline=300) for run_id in ids))
    # Then the isolated build could not fetch hatchling; the retry built without isolation with it, and says so
    stage = built["stages"][0]
    assert built["status"] == "succeeded", stage["attempt_log"]
    assert attempts(stage) == [("failed", "BuildFailed"), ("succeeded", "")]
    assert "needs the package index" in stage["attempt_log"][0]["error"]
    assert remedies(stage) == [("build_without_isolation", 2, "BuildFailed",
                                "build without isolation, with the declared backend from the agent's environment")]
    out = stage["result"]["output"]
    assert out["build_isolation"] is False and out["backend"]["backend"] == "hatchling.build"
    assert out["wheel"].startswith("tinyproj-1.0-") and "without build isolation" in stage["result"]["summary"]
    # And without the declared backend in the agent's environment the retry fails for good, naming it
    stage = refused["stages"][0]
    assert refused["status"] == "failed"
    assert attempts(stage) == [("failed", "BuildFailed"), ("failed", "BuildFailed")]
    assert "the agent's environment lacks flit_core>=3.2,<4" in stage["error"]


LINTED = '''import os
import sys


def main():
    try:
        return sys.argv
    except:
        return None
'''


async def test_fixable_lint_findings_get_a_proposed_patch_and_the_stage_still_fails(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    # Given a module with an unused import (ruff fixes it) and a bare except (it does not), linted strictly
    name = await skill_pipeline(api, stack, "lint", inputs={"fail_on_findings": True})
    repo = project(tmp_path / "lint", ("app.py", LINTED))
    # When it runs
    run = await wait_run(api, await start(api, name, repo), deadline=120)
    # Then the retry proposed ruff's fix as a patch, applied nowhere, and the stage failed on the repository as given
    stage = run["stages"][0]
    assert run["status"] == "failed"
    assert attempts(stage) == [("failed", "LintFailed"), ("failed", "LintFailed")]
    assert remedies(stage) == [("ruff_fix", 2, "LintFailed",
                                "propose ruff --fix for 1 fixable findings as a patch (not applied)")]
    out = stage["result"]["output"]
    assert (out["total"], out["fixable"]) == (2, 1)
    patch = out["proposed_patch"]
    assert (patch["files"], patch["remaining"], patch["applied"]) == (["app.py"], 1, False)
    assert "--- a/app.py\n+++ b/app.py\n" in patch["diff"] and "\n-import os\n" in patch["diff"]
    assert "ruff --fix proposes a patch to 1 files leaving 1 findings (not applied)" in stage["error"]
    assert (repo / "app.py").read_text() == LINTED
    # And the knowledge base learned the pair for the next such failure, counting no success that did not happen
    async def entries() -> list[dict[str, Any]] | None:
        return sql("SELECT remedy, applied, succeeded FROM knowledge_entries WHERE run_id = :r AND remedy IS NOT "
                   "NULL", r=run["run_id"]) or None

    learned = await poll(entries, deadline=30, what="the diagnosis to be learned")
    assert [(e["remedy"], e["applied"], e["succeeded"]) for e in learned] == [("ruff_fix", 0, 0)]
