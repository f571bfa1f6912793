"""The githubkit client against the double, without the stack: App auth buys an installation token, the
double refuses what GitHub would refuse, and what devart renders stays within GitHub's limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit.exception import RequestFailed

from devart.core.contracts import AppliedRemedy, StageResult, StageStatus
from devart.core.devstack.services import free_port
from devart.github import format as fmt
from devart.github.client import GitHubNotConfigured, GitHubSettings, client, signature, verify_signature
from tests.github.double import GitHubDouble
from tests.github.rules import commentable

APP_ID = 31337


@pytest.fixture(scope="module")
def app_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture
def double(app_key: tuple[str, str]) -> Iterator[GitHubDouble]:
    server = GitHubDouble(free_port(), token="ghs_static", app_id=APP_ID, app_public_key=app_key[1]).start()
    diff = "diff --git a/x.py b/x.py\n+++ b/x.py\n@@ -0,0 +1,2 @@\n+a\n+b\n"
    server.add_pull("acme/app", 1, "c" * 40, "b" * 40, diff)
    yield server
    server.stop()


async def test_app_auth_buys_an_installation_token_and_writes_checks(double: GitHubDouble,
                                                                     app_key: tuple[str, str]) -> None:
    cfg = GitHubSettings(app_id=APP_ID, private_key=app_key[0].replace("\n", "\\n"), api_url=double.url)
    assert cfg.auth_mode == "app"
    with pytest.raises(GitHubNotConfigured):
        client(None, cfg)
    async with client(4242, cfg) as gh:
        created = await gh.rest.checks.async_create("acme", "app", data={
            "name": "devart / test", "head_sha": "c" * 40, "status": "queued", "external_id": "run-1:test"})
        done = await gh.rest.checks.async_update("acme", "app", created.parsed_data.id, data={
            "conclusion": "success", "output": {"title": "ok", "summary": "1 passed"}})
        fetched = await gh.rest.checks.async_get("acme", "app", created.parsed_data.id)
    assert done.parsed_data.conclusion == "success" and fetched.parsed_data.external_id == "run-1:test"
    assert fetched.parsed_data.pull_requests[0].number == 1  # the PR whose head the check is on
    assert len(double.installation_tokens) == 1  # bought once, then reused from githubkit's cache


async def test_the_double_refuses_what_github_refuses(double: GitHubDouble) -> None:
    cfg = GitHubSettings(token="ghs_static", api_url=double.url)
    async with client(None, cfg) as gh:
        with pytest.raises(RequestFailed) as outside_diff:
            await gh.rest.pulls.async_create_review("acme", "app", 1, data={
                "commit_id": "c" * 40, "body": "x", "event": "COMMENT",
                "comments": [{"path": "x.py", "line": 9, "side": "RIGHT", "body": "no such line"}]})
        review = await gh.rest.pulls.async_create_review("acme", "app", 1, data={
            "commit_id": "c" * 40, "body": "ok", "event": "COMMENT",
            "comments": [{"path": "x.py", "line": 2, "side": "RIGHT", "body": "fine"}]})
        updated = await gh.rest.pulls.async_update_review("acme", "app", 1, review.parsed_data.id,
                                                          data={"body": "edited"})
    assert outside_diff.value.response.status_code == 422
    assert review.parsed_data.state == "COMMENTED" and updated.parsed_data.body == "edited"
    bad = GitHubSettings(token="ghs_wrong", api_url=double.url)
    async with client(None, bad) as gh:
        with pytest.raises(RequestFailed) as unauthorized:
            await gh.rest.checks.async_get("acme", "app", 1)
    assert unauthorized.value.response.status_code == 401
    assert [r[2] for r in double.rejected] == [422]
    double.rejected.clear()


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body, secret = b'{"action":"opened"}', "s3cret-s3cret-s3cret"
    assert verify_signature(secret, body, signature(secret, body))
    assert not verify_signature(secret, body + b" ", signature(secret, body))
    assert not verify_signature(secret, body, None)
    assert not verify_signature(secret, body, signature(secret, body).replace("sha256=", "sha1="))
    with pytest.raises(ValueError, match="at least 16"):
        GitHubSettings(webhook_secret="short")


def _links() -> fmt.Links:
    return fmt.Links(run="http://devart/v1/runs/r", trace=None, trace_id="ab" * 16, history="http://ui/r")


def test_rendering_respects_github_limits() -> None:
    findings: list[dict[str, Any]] = [
        {"file": "a.py", "line": i + 1, "column": 1, "severity": ("error", "warning", "info")[i % 3],
         "rule": "F401", "message": "m" * 100, "in_diff": i % 2 == 0} for i in range(400)]
    result = StageResult(status="succeeded", summary="400 findings", output={"findings": findings},
                         log_tail="x" * 100_000)
    notes = fmt.finding_annotations(result)
    assert len(notes) == fmt.MAX_ANNOTATIONS
    assert {n["annotation_level"] for n in notes} == {"failure", "warning", "notice"}
    output = fmt.check_output("lint", StageStatus.SUCCEEDED, result, None, 3.0, _links())
    assert len(output["summary"]) <= fmt.TEXT_LIMIT and len(output["text"]) <= fmt.TEXT_LIMIT
    comments = fmt.review_comments(findings)
    assert len(comments) == fmt.MAX_REVIEW_COMMENTS and all(c["line"] % 2 == 1 for c in comments)
    assert fmt.fingerprint(comments) == fmt.fingerprint(list(reversed(comments)))
    assert [fmt.conclusion(s, e) for s, e in [(StageStatus.SUCCEEDED, None), (StageStatus.FAILED, "boom"),
                                              (StageStatus.FAILED, "timed out (heartbeat)"),
                                              (StageStatus.SKIPPED, None), (StageStatus.CANCELLED, None)]] == [
        "success", "failure", "timed_out", "skipped", "cancelled"]


def test_commentable_lines_follow_the_diff_hunks() -> None:
    diff = "+++ b/m.py\n@@ -1,2 +1,3 @@\n a\n+b\n c\n@@ -10 +11,0 @@\n-d\n"
    assert commentable(diff) == {("m.py", 1), ("m.py", 2), ("m.py", 3)}


def test_a_check_run_names_the_remedies_a_retry_had() -> None:
    remedy = AppliedRemedy(name="more_memory", attempt=2, after="OutOfMemory", entry_id=7,
                           change="memory 128 -> 256 MiB")
    result = StageResult(status="succeeded", summary="tests passed", attempt=2, remedies=[remedy])
    summary = fmt.check_output("test", StageStatus.SUCCEEDED, result, None, 3.0, _links())["summary"]
    assert ("**Self-healing**: attempt 2: `more_memory` (memory 128 -> 256 MiB) after OutOfMemory, as knowledge "
            "entry 7 suggested") in summary
    plain = fmt.check_output("test", StageStatus.SUCCEEDED, result.model_copy(update={"remedies": []}), None, 3.0,
                             _links())["summary"]
    assert "Self-healing" not in plain
