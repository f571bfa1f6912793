"""Reports to GitHub are durable: the workflow sends them as activities that Temporal retries, so a stage's end
reaches GitHub even when GitHub was down as the stage ended and the API restarted before it came back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.github.conftest import Webhooks, commit, new_repo, open_pull
from tests.github.double import CheckRun, GitHubDouble
from tests.github.payloads import pull_request_event
from tests.helpers import noop_stage, poll, publish, unique, wait_stage
from tests.stack import Stack, sql


async def test_a_stage_end_reaches_github_across_an_outage_and_an_api_restart(
        hooks: Webhooks, api: httpx.AsyncClient, stack: Stack, github: GitHubDouble, tmp_path: Path) -> None:
    # Given a pull request whose pipeline runs 'first' (an agent serves it), then 'second' (no agent can: the run
    # stays in it, so nothing at the run's end can conclude 'first' in its place)
    cap = unique("ghfirst")
    stack.start_agent(unique("agent"), [cap])
    name = unique("ghdurable")
    await publish(api, {"name": name, "stages": [
        noop_stage("first", cap), {**noop_stage("second", unique("nobody")), "depends_on": ["first"]}]})
    repo = new_repo(tmp_path / "repo")
    base = commit(repo, {"README": "demo\n"}, "base")
    pr = open_pull(github, repo, f"acme/{unique('durable')}", 5, base, commit(repo, {"a.txt": "a\n"}, "a"))
    mapped = await api.put(f"/v1/github/repositories/{pr.full_name}", json={"pipeline": name},
                           headers={"Authorization": f"Bearer {stack.env['DEVART_ADMIN_TOKEN']}"})
    assert mapped.status_code == 200, mapped.text

    def first() -> CheckRun | None:
        return github.checks_for(pr.full_name, pr.head_sha).get("devart / first")

    # ... and GitHub goes down for the repository once the checks are queued
    reply = await hooks.send("pull_request", pull_request_event(pr, "opened"))
    assert reply.status_code == 201, reply.text
    run_id = reply.json()["runs"][0]

    async def queued() -> bool:
        found = github.checks_for(pr.full_name, pr.head_sha)
        return {"devart / first", "devart / second"} <= set(found)

    await poll(queued, deadline=60, what="the queued check runs")
    github.outage(pr.full_name)
    # When 'first' ends while GitHub is down, and the API is killed and started again before GitHub is back
    await wait_stage(api, run_id, "first", "succeeded", deadline=120)
    stack.sigkill("api")
    stack.revive("api")
    github.outage(pr.full_name, down=False)

    # Then the check run of 'first' is completed with its conclusion, while the run still waits in 'second'
    async def concluded() -> CheckRun | None:
        check = first()
        return check if check is not None and check.data["status"] == "completed" else None

    check = await poll(concluded, deadline=90, what="the check run of 'first' to complete")
    assert check.data["conclusion"] == "success"
    run: dict[str, Any] = (await api.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "running" and run["stages"][1]["status"] == "running", run
    failures = sql("SELECT message FROM events WHERE run_id = :r AND kind = 'github.report_failed'", r=run_id)
    assert failures == []  # GitHub was down for a while, and nothing was given up
    # (the run is cancelled, so its agent task stops waiting)
    assert (await api.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
