"""A pull request runs its pipeline with the real skills, and GitHub (the double) ends up with one check run per
stage, with the right conclusions and figures, and one review whose line comments are the review's findings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.github.conftest import Webhooks, commit, new_repo, open_pull
from tests.github.double import CheckRun, GitHubDouble
from tests.github.payloads import PullRequest, check_run_event, issue_comment_event, pull_request_event
from tests.helpers import poll, publish, unique, wait_run
from tests.stack import Stack, sql

CALC_BASE = '"""A tiny calculator."""\n\n\ndef add(a, b):\n    return a + b\n'
CALC_HEAD = ('"""A tiny calculator."""\nimport os\n\n\ndef add(a, b):\n    return a + b\n\n\n'
             'def mul(a, b):\n    print("multiplying", a, b)\n    return a * b + 1\n')
TESTS_BASE = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
TESTS_HEAD = TESTS_BASE + "\n\ndef test_mul():\n    from calc import mul\n\n    assert mul(2, 3) == 6\n"
STAGES = ("lint", "test", "review", "package")


def pipeline(name: str) -> dict[str, Any]:
    """lint ∥ test; review after lint; package after test (so it is skipped: the PR breaks a test)."""
    return {"name": name, "params": {"base": "", "pr_number": ""}, "stages": [
        {"name": "lint", "skill": "lint", "requires": ["python", "lint"], "timeout": 300},
        {"name": "test", "skill": "test", "requires": ["python", "test"], "timeout": 300,
         "sandbox": {"network": "packages"}},
        {"name": "review", "skill": "review", "requires": ["code-review"], "depends_on": ["lint"],
         "inputs": {"base": "${base}"}, "timeout": 300, "heartbeat_timeout": 60},
        {"name": "package", "skill": "build", "requires": ["python", "build"], "depends_on": ["test"],
         "timeout": 300, "sandbox": {"network": "packages"}},
    ]}


@dataclass
class Scenario:
    pr: PullRequest
    run_id: str
    run: dict[str, Any]
    admin: dict[str, str]


def checks(github: GitHubDouble, pr: PullRequest) -> dict[str, CheckRun]:
    return {name.removeprefix("devart / "): c for name, c in github.checks_for(pr.full_name, pr.head_sha).items()}


async def settled(github: GitHubDouble, pr: PullRequest, reviews: int = 1) -> dict[str, CheckRun]:
    """Wait until every stage's check run is completed and the review(s) posted (the run's last record)."""
    async def done() -> dict[str, CheckRun] | None:
        found = checks(github, pr)
        complete = len(found) == len(STAGES) and all(c.data["status"] == "completed" for c in found.values())
        return found if complete and len(github.reviews_for(pr.full_name, pr.number)) >= reviews else None

    return await poll(done, deadline=60, what="the check runs to complete and the review to be posted")


@pytest.fixture(scope="module")
async def scenario(stack: Stack, pool: dict, github: GitHubDouble,
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scenario]:
    admin = {"Authorization": f"Bearer {stack.env['DEVART_ADMIN_TOKEN']}"}
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30.0, headers=admin) as api:
        # Given a repository mapped to a pipeline, and a pull request that adds an unused import, a print()
        # and a failing test
        name = unique("gh")
        await publish(api, pipeline(name))
        repo = new_repo(tmp_path_factory.mktemp("pr") / "widgets")
        base = commit(repo, {"calc.py": CALC_BASE, "test_calc.py": TESTS_BASE}, "base")
        head = commit(repo, {"calc.py": CALC_HEAD, "test_calc.py": TESTS_HEAD}, "feature")
        pr = open_pull(github, repo, f"acme/{unique('widgets')}", 7, base, head)
        mapped = await api.put(f"/v1/github/repositories/{pr.full_name}", json={"pipeline": name}, headers=admin)
        assert mapped.status_code == 200, mapped.text
        # When GitHub delivers the signed pull_request event
        reply = await Webhooks(api, stack.env["DEVART_GITHUB_WEBHOOK_SECRET"]).send(
            "pull_request", pull_request_event(pr, "opened"))
        assert reply.status_code == 201, reply.text
        run_id = reply.json()["runs"][0]
        run = await wait_run(api, run_id, deadline=240)
        await settled(github, pr)
        yield Scenario(pr, run_id, run, admin)


async def test_the_webhook_starts_the_mapped_pipeline_on_the_head(scenario: Scenario) -> None:
    run, pr = scenario.run, scenario.pr
    assert run["trigger"] == "github" and run["ref"] == pr.head_sha and run["repository"] == pr.clone_url
    assert run["params"] == {"base": pr.base_sha, "pr_number": "7"}  # only what the pipeline declares
    assert {s["name"]: s["status"] for s in run["stages"]} == {
        "lint": "succeeded", "test": "failed", "review": "succeeded", "package": "skipped"}


async def test_one_check_run_per_stage_with_conclusions_and_figures(scenario: Scenario, github: GitHubDouble,
                                                                    stack: Stack) -> None:
    found = checks(github, scenario.pr)
    assert sorted(found) == sorted(STAGES)
    assert {s: c.data["conclusion"] for s, c in found.items()} == {
        "lint": "success", "test": "failure", "review": "success", "package": "skipped"}
    for stage, check in found.items():
        assert check.data["external_id"] == f"{scenario.run_id}:{stage}"
        assert check.data["details_url"].endswith(f"/v1/runs/{scenario.run_id}")
        assert f"/v1/runs/{scenario.run_id}" in check.data["output"]["summary"]
    # queued at run start → in progress when an agent claimed it → completed; a skipped stage never ran
    statuses = {s: [h.get("status") or ("completed" if h.get("conclusion") else None) for h in c.history]
                for s, c in found.items()}
    assert statuses["test"] == ["queued", "in_progress", "completed"]
    assert statuses["package"] == ["queued", "completed"]
    test_summary = found["test"].data["output"]["summary"]
    assert "| passed | failed | errors | skipped | xfailed | total | duration |" in test_summary
    assert "| 1 | 1 | 0 | 0 | 0 | 2 |" in test_summary and "test_mul" in test_summary
    assert "sandbox CPU-seconds" in test_summary  # the cost line
    assert "skipped because 'test' did not succeed" in found["package"].data["output"]["summary"]
    lint = found["lint"]
    assert "**1 findings**" in lint.data["output"]["summary"]
    assert [(a["path"], a["start_line"], a["annotation_level"]) for a in lint.annotations] == [
        ("calc.py", 2, "warning")]
    assert "F401" in lint.annotations[0]["title"]
    # the summary names the run's trace, the one the OTLP receiver got from the API, worker and agents
    trace_id = test_summary.split("trace id `")[1].split("`")[0]

    async def traced() -> bool:
        return bool(stack.receiver.trace(trace_id))

    await poll(traced, deadline=20, what=f"spans of trace {trace_id}")


async def test_one_review_with_the_findings_as_line_comments(scenario: Scenario, github: GitHubDouble) -> None:
    reviews = github.reviews_for(scenario.pr.full_name, scenario.pr.number)
    assert len(reviews) == 1
    review = reviews[0]
    assert review.data["state"] == "COMMENTED" and review.data["commit_id"] == scenario.pr.head_sha
    stage = next(s for s in scenario.run["stages"] if s["name"] == "review")
    findings = stage["result"]["output"]["findings"]
    expected = {(f["file"], f["line"], f["rule"]) for f in findings if f["in_diff"]}
    assert {("calc.py", 2, "F401"), ("calc.py", 10, "debug-print")} <= expected
    got = {(c["path"], c["line"], c["body"].split("`")[1]) for c in review.comments}
    assert got == expected
    assert all(c["side"] == "RIGHT" for c in review.comments)


async def test_rerequested_check_reruns_only_that_stage_into_the_same_check(
        scenario: Scenario, github: GitHubDouble, hooks: Webhooks, api: httpx.AsyncClient) -> None:
    # Given the review stage's completed check run
    pr, before = scenario.pr, checks(github, scenario.pr)
    review_check = before["review"]
    history = {s: len(c.history) for s, c in before.items()}
    review_id = github.reviews_for(pr.full_name, pr.number)[0].id
    # When someone presses "Re-run" on it
    reply = await hooks.send("check_run", check_run_event(pr, github_json(github, review_check)))
    assert reply.status_code == 201, reply.text
    rerun_id = reply.json()["runs"][0]
    rerun = await wait_run(api, rerun_id, deadline=180)
    # Then a run of that stage alone ran, on the same commit with the same inputs
    assert [s["name"] for s in rerun["stages"]] == ["review"] and rerun["status"] == "succeeded"
    assert rerun["ref"] == pr.head_sha and rerun["params"] == scenario.run["params"]

    async def reported() -> dict[str, CheckRun] | None:
        now = checks(github, pr)
        again = now["review"]
        return now if again.data["external_id"] == f"{rerun_id}:review" and again.data["status"] == "completed" \
            and len(github.reviews_for(pr.full_name, pr.number)[0].history) > 1 else None

    after = await poll(reported, deadline=30, what="the re-run to report into the review check")
    # ... and it reported into the same check run: no new one, the others untouched
    assert {s: c.id for s, c in after.items()} == {s: c.id for s, c in before.items()}
    assert after["review"].data["conclusion"] == "success"
    assert [h.get("status") for h in after["review"].history[history["review"]:]][:2] == ["queued", "in_progress"]
    assert {s: len(c.history) for s, c in after.items() if s != "review"} == {
        s: n for s, n in history.items() if s != "review"}
    # ... and the same findings updated the PR's review instead of posting a second one
    reviews = github.reviews_for(pr.full_name, pr.number)
    assert [r.id for r in reviews] == [review_id] and "body" in reviews[0].history[-1]


async def test_rerun_comment_from_a_member_reruns_the_pipeline(
        scenario: Scenario, github: GitHubDouble, hooks: Webhooks, api: httpx.AsyncClient) -> None:
    pr = scenario.pr
    before = {s: c.id for s, c in checks(github, pr).items()}
    runs_before = sql("SELECT count(*) AS n FROM github_runs WHERE repo = :r", r=pr.full_name)[0]["n"]
    # A contributor may not ...
    refused = await hooks.send("issue_comment", issue_comment_event(pr, "/devart rerun", "CONTRIBUTOR"))
    assert refused.status_code == 202 and "may not re-run" in refused.json()["message"]
    assert sql("SELECT count(*) AS n FROM github_runs WHERE repo = :r", r=pr.full_name)[0]["n"] == runs_before
    # ... a member may
    reply = await hooks.send("issue_comment", issue_comment_event(pr, "/devart rerun please", "MEMBER"))
    assert reply.status_code == 201, reply.text
    rerun = await wait_run(api, reply.json()["runs"][0], deadline=240)
    assert [s["name"] for s in rerun["stages"]] == list(STAGES) and rerun["ref"] == pr.head_sha

    async def reported() -> dict[str, CheckRun] | None:
        now = checks(github, pr)
        return now if all(c.data["external_id"].startswith(rerun["run_id"]) and c.data["status"] == "completed"
                          for c in now.values()) else None

    after = await poll(reported, deadline=60, what="the re-run's check runs to complete")
    assert {s: c.id for s, c in after.items()} == before  # the same check runs, reported again
    assert len(github.reviews_for(pr.full_name, pr.number)) == 1


def github_json(github: GitHubDouble, check: CheckRun) -> dict[str, Any]:
    """The check run as GitHub's API shows it (what a check_run delivery carries)."""
    with github.lock:
        return github._check_json(check)
