"""The repository → pipeline mapping through the admin API and the CLI, and the App manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from tests.helpers import unique
from tests.stack import Stack


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devart.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **stack.env})


async def test_mapping_needs_the_admin_token_and_an_existing_pipeline(api: httpx.AsyncClient, stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {stack.env['DEVART_ADMIN_TOKEN']}"}
    repo = f"Acme/{unique('Svc')}"
    path = f"/v1/github/repositories/{repo}"
    assert (await api.put(path, json={"pipeline": "lint-test"}, headers={"Authorization": ""})).status_code == 401
    assert (await api.put(path, json={"pipeline": "lint-test"},
                          headers={"Authorization": "Bearer wrong"})).status_code == 401
    missing = await api.put(path, json={"pipeline": "lint-tset"}, headers=admin)
    assert missing.status_code == 404 and "did you mean 'lint-test'" in missing.json()["detail"]
    bad_url = await api.put(path, json={"pipeline": "lint-test", "clone_url": "relative/dir"}, headers=admin)
    assert bad_url.status_code == 422
    put = await api.put(path, json={"pipeline": "lint-test"}, headers=admin)
    assert put.status_code == 200 and put.json()["repository"] == repo.lower()
    got = await api.get(path.lower(), headers=admin)  # GitHub names are case-insensitive
    assert got.json()["pipeline"] == "lint-test"
    assert repo.lower() in [m["repository"] for m in (await api.get("/v1/github/repositories", headers=admin)).json()]
    assert (await api.delete(path, headers=admin)).status_code == 204
    assert (await api.get(path, headers=admin)).status_code == 404


def test_cli_maps_shows_lists_and_unmaps(stack: Stack) -> None:
    repo = f"acme/{unique('cli')}"
    mapped = cli(stack, "github", "map", repo, "lint-test", "--clone-url", "https://git.example/acme/cli.git")
    assert mapped.returncode == 0, mapped.stderr
    assert f"{repo} pull requests run pipeline lint-test" in mapped.stdout
    shown = cli(stack, "github", "show", repo, "--json")
    assert json.loads(shown.stdout)["clone_url"] == "https://git.example/acme/cli.git"
    assert repo in cli(stack, "github", "list").stdout
    assert cli(stack, "github", "unmap", repo).returncode == 0
    gone = cli(stack, "github", "show", repo)
    assert gone.returncode == 1 and "not mapped" in gone.stderr
    assert cli(stack, "github", "map", "not-a-repo", "lint-test").returncode == 1


def test_setup_prints_the_app_manifest(stack: Stack) -> None:
    done = cli(stack, "github", "setup", "--url", "https://devart.example.com")
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["default_permissions"] == {"checks": "write", "pull_requests": "write", "contents": "read"}
    assert manifest["default_events"] == ["pull_request", "check_run", "issue_comment"]
    assert manifest["hook_attributes"] == {"url": "https://devart.example.com/v1/github/webhook", "active": True}
    assert "DEVART_GITHUB_WEBHOOK_SECRET" in done.stderr
