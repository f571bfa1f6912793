"""The webhook's edges: signatures, redeliveries, unmapped repositories, a push that supersedes a run in flight,
and a GitHub that refuses devart (the pipeline goes on)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.github.conftest import Webhooks, commit, new_repo, open_pull
from tests.github.double import GitHubDouble
from tests.github.payloads import PullRequest, pull_request_event
from tests.helpers import noop_stage, poll, publish, unique, wait_run, wait_stage
from tests.stack import Stack, sql


def github_runs(pr: PullRequest) -> list[dict[str, Any]]:
    return sql("SELECT g.run_id, r.status FROM github_runs g JOIN runs r ON r.id = g.run_id "
               "WHERE g.repo = :repo AND g.pr = :pr ORDER BY g.created_at", repo=pr.full_name, pr=pr.number)


async def mapped_pull(api: httpx.AsyncClient, stack: Stack, github: GitHubDouble, path: Path,
                      **inputs: Any) -> PullRequest:
    """A repository mapped to a one-stage noop pipeline served by its own agent, with a pull request on it."""
    cap = unique("ghnoop")
    stack.start_agent(unique("agent"), [cap])
    name = unique("ghnoop")
    await publish(api, {"name": name, "stages": [noop_stage("slow", cap, **inputs)]})
    repo = new_repo(path / "repo")
    base = commit(repo, {"README": "demo\n"}, "base")
    head = commit(repo, {"slow.sh": "sleep 300\n"}, "slow")
    pr = open_pull(github, repo, f"acme/{unique('noop')}", 3, base, head)
    admin = {"Authorization": f"Bearer {stack.env['DEVART_ADMIN_TOKEN']}"}
    assert (await api.put(f"/v1/github/repositories/{pr.full_name}", json={"pipeline": name},
                          headers=admin)).status_code == 200
    return pr


@pytest.fixture
async def noop_pull(api: httpx.AsyncClient, stack: Stack, github: GitHubDouble, tmp_path: Path) -> PullRequest:
    """Its stage runs ``sh slow.sh``, which sleeps at the PR's first head only."""
    return await mapped_pull(api, stack, github, tmp_path, sandbox_command="sh slow.sh")


async def test_forged_or_missing_signature_is_401_and_starts_nothing(
        hooks: Webhooks, noop_pull: PullRequest, stack: Stack) -> None:
    sent = hooks.sign("pull_request", pull_request_event(noop_pull, "opened"))
    forged = Webhooks(hooks.api, "not-the-secret-" + uuid.uuid4().hex).sign("pull_request",
                                                                           pull_request_event(noop_pull, "opened"))
    cases = [
        await hooks.post(sent, **{"X-Hub-Signature-256": ""}),  # missing
        await hooks.post(forged),  # signed with another secret
        await hooks.post(sent, **{"X-Hub-Signature-256": "sha1=" + "0" * 40}),  # not SHA-256
        await hooks.api.post("/v1/github/webhook", content=sent.body.replace(b'"opened"', b'"reopened"'),
                             headers=sent.headers),  # body changed after signing
    ]
    assert [r.status_code for r in cases] == [401, 401, 401, 401]
    assert "X-Hub-Signature-256" in cases[0].json()["detail"]
    assert github_runs(noop_pull) == []
    assert sql("SELECT id FROM github_deliveries WHERE id = :d", d=sent.headers["X-GitHub-Delivery"]) == []


async def test_the_same_delivery_twice_starts_one_run(hooks: Webhooks, noop_pull: PullRequest,
                                                      api: httpx.AsyncClient) -> None:
    sent = hooks.sign("pull_request", pull_request_event(noop_pull, "opened"))
    first, again = await hooks.post(sent), await hooks.post(sent)
    assert first.status_code == 201, first.text
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    runs = github_runs(noop_pull)
    assert [r["run_id"] for r in runs] == first.json()["runs"]
    assert sql("SELECT run_id FROM github_deliveries WHERE id = :d", d=sent.headers["X-GitHub-Delivery"]) == [
        {"run_id": runs[0]["run_id"]}]
    await wait_stage(api, runs[0]["run_id"], "slow", "running")  # past its first record: cancel it cleanly
    assert (await api.post(f"/v1/runs/{runs[0]['run_id']}/cancel")).status_code == 202
    assert (await wait_run(api, runs[0]["run_id"], deadline=60))["status"] == "cancelled"


async def test_a_push_cancels_the_run_in_flight(hooks: Webhooks, noop_pull: PullRequest, api: httpx.AsyncClient,
                                                github: GitHubDouble, tmp_path: Path) -> None:
    # Given a run of the PR busy in its stage
    first = await hooks.send("pull_request", pull_request_event(noop_pull, "opened"))
    assert first.status_code == 201, first.text
    old = first.json()["runs"][0]
    await wait_stage(api, old, "slow", "running")
    # When the author pushes a commit that makes the stage quick
    repo = Path(noop_pull.clone_url)
    pushed = open_pull(github, repo, noop_pull.full_name, noop_pull.number, noop_pull.base_sha,
                       commit(repo, {"slow.sh": "true\n"}, "quick"))
    second = await hooks.send("pull_request", pull_request_event(pushed, "synchronize", before=noop_pull.head_sha))
    assert second.status_code == 201, second.text
    # Then the old run is cancelled, the new one runs to the end, and each commit's check says so
    assert second.json()["cancelled"] == [old]
    assert (await wait_run(api, old, deadline=60))["status"] == "cancelled"
    assert (await wait_run(api, second.json()["runs"][0], deadline=120))["status"] == "succeeded"

    async def concluded() -> tuple[str, str] | None:
        old_check = github.checks_for(noop_pull.full_name, noop_pull.head_sha).get("devart / slow")
        new_check = github.checks_for(pushed.full_name, pushed.head_sha).get("devart / slow")
        found = (old_check and old_check.data["conclusion"], new_check and new_check.data["conclusion"])
        return found if all(found) else None  # type: ignore[return-value]

    assert await poll(concluded, deadline=30, what="both commits' checks to conclude") == ("cancelled", "success")


async def test_unmapped_repository_and_other_events_start_nothing(hooks: Webhooks, noop_pull: PullRequest) -> None:
    stranger = PullRequest(f"acme/{unique('unmapped')}", 1, noop_pull.head_sha, noop_pull.base_sha,
                           noop_pull.clone_url)
    unmapped = await hooks.send("pull_request", pull_request_event(stranger, "opened"))
    assert unmapped.status_code == 202 and "not mapped" in unmapped.json()["message"]
    sent = hooks.sign("pull_request", pull_request_event(noop_pull, "closed"))
    closed = await hooks.post(sent)
    assert closed.status_code == 202 and closed.json()["status"] == "ignored"
    assert sql("SELECT id FROM github_deliveries WHERE id = :d", d=sent.headers["X-GitHub-Delivery"]) == []
    ping = await hooks.post(hooks.sign("ping", {"zen": "Keep it logically awesome.", "hook_id": 1}))
    assert ping.status_code == 202 and ping.json()["message"] == "pong"
    assert github_runs(noop_pull) == [] and github_runs(stranger) == []


async def test_a_github_that_refuses_devart_does_not_break_the_run(
        hooks: Webhooks, noop_pull: PullRequest, github: GitHubDouble, api: httpx.AsyncClient,
        tmp_path: Path) -> None:
    repo = Path(noop_pull.clone_url)
    quick = open_pull(github, repo, noop_pull.full_name, noop_pull.number, noop_pull.base_sha,
                      commit(repo, {"slow.sh": "true\n"}, "quick"))
    github.refuse(quick.full_name)  # every call answers 403, as for an App that lost access
    reply = await hooks.send("pull_request", pull_request_event(quick, "synchronize"))
    run = await wait_run(api, reply.json()["runs"][0], deadline=120)
    assert run["status"] == "succeeded"

    async def recorded() -> list[dict[str, Any]]:
        return sql("SELECT message FROM events WHERE run_id = :r AND kind = 'github.report_failed'",
                   r=run["run_id"])

    failures = await poll(recorded, deadline=30, what="the failed GitHub reports in the feed")
    assert all("403" in f["message"] for f in failures)
    assert github.checks_for(quick.full_name, quick.head_sha) == {}


async def test_a_retried_stage_reports_into_one_check_run(hooks: Webhooks, api: httpx.AsyncClient, stack: Stack,
                                                          github: GitHubDouble, tmp_path: Path) -> None:
    pr = await mapped_pull(api, stack, github, tmp_path, fail_attempts=1)  # attempt 1 fails, Temporal retries
    reply = await hooks.send("pull_request", pull_request_event(pr, "opened"))
    run = await wait_run(api, reply.json()["runs"][0], deadline=120)
    assert run["status"] == "succeeded" and run["stages"][0]["attempts"] == 2

    async def concluded() -> Any:
        check = github.checks_for(pr.full_name, pr.head_sha).get("devart / slow")
        return check if check and check.data["status"] == "completed" else None

    check = await poll(concluded, deadline=30, what="the check run to complete")
    assert list(github.checks_for(pr.full_name, pr.head_sha)) == ["devart / slow"]
    # the workflow reports the stage's start and end; Temporal's retry of its task happens in between
    steps = [h.get("status") or h.get("conclusion") for h in check.history]
    assert steps == ["queued", "in_progress", "success"]
    assert "2 attempts" in check.data["output"]["summary"]
