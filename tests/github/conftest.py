"""GitHub fixtures: the REST double on the URL the stack's API and worker were given, signed webhook posting,
and a tiny git repository with a pull request (two commits) for the real skills to check."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.github.double import GitHubDouble
from tests.github.payloads import Delivery, PullRequest, delivery
from tests.stack import Stack


@pytest.fixture(scope="session")
def github(stack: Stack) -> Iterator[GitHubDouble]:
    port = urlparse(stack.env["DEVART_GITHUB_API_URL"]).port
    assert port is not None
    double = GitHubDouble(port, token=stack.env["DEVART_GITHUB_TOKEN"]).start()
    yield double
    double.stop()


@pytest.fixture(autouse=True)
def _no_rejections(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test did, devart never sent GitHub a request GitHub's schema or rules refuse."""
    yield
    if "github" in request.fixturenames:
        double: GitHubDouble = request.getfixturevalue("github")
        assert double.rejected == [], double.rejected


@dataclass
class Webhooks:
    api: httpx.AsyncClient
    secret: str

    def sign(self, event: str, payload: dict[str, Any], delivery_id: str | None = None) -> Delivery:
        return delivery(event, payload, self.secret, delivery_id)

    async def post(self, sent: Delivery, **header_overrides: str) -> httpx.Response:
        headers = {**sent.headers, **header_overrides}
        return await self.api.post("/v1/github/webhook", content=sent.body,
                                   headers={k: v for k, v in headers.items() if v})

    async def send(self, event: str, payload: dict[str, Any]) -> httpx.Response:
        return await self.post(self.sign(event, payload))


@pytest.fixture
def hooks(api: httpx.AsyncClient, stack: Stack) -> Webhooks:
    return Webhooks(api, stack.env["DEVART_GITHUB_WEBHOOK_SECRET"])


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
           "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    """Write ``files``, commit them, return the new commit's sha."""
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    return path


def open_pull(github: GitHubDouble, repo: Path, full_name: str, number: int, base: str, head: str) -> PullRequest:
    """The pull request ``base..head`` of the local ``repo``, known to the double with its real diff."""
    github.add_pull(full_name, number, head, base, git(repo, "diff", base, head))
    return PullRequest(full_name, number, head, base, str(repo))
