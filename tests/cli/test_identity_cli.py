"""Identity through the CLI against the real stack: logging in, members and roles, tokens, organisations, audit.

Each command runs in a fresh process with an environment built here (not the test process's, which holds the first
administrator's token), so what authenticates a command is exactly the token under test.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import unique
from tests.stack import SAMPLE_REPO, Stack

#: Variables that would hand a command a token other than the one a test means it to use.
TOKEN_VARIABLES = ("DEVART_TOKEN", "DEVART_ADMIN_TOKEN", "DEVART_CONFIG", "DEVART_HOME")


def devart(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devart.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "COLUMNS": "250"}, input=stdin)


def ok(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = devart(*args, env=env)
    assert done.returncode == 0, f"devart {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture
def bare(stack: Stack, tmp_path: Path) -> dict[str, str]:
    """The stack's environment with no token at all: no DEVART_TOKEN or DEVART_ADMIN_TOKEN, a credentials file not
    yet written, and an empty state folder (so its admin-token is not found either)."""
    env = {k: v for k, v in {**os.environ, **stack.env}.items() if k not in TOKEN_VARIABLES}
    return {**env, "DEVART_CONFIG": str(tmp_path / "config" / "credentials.json"),
            "DEVART_HOME": str(tmp_path / "empty-state")}


@pytest.fixture
def admin(stack: Stack, bare: dict[str, str]) -> dict[str, str]:
    """``bare`` with the first administrator's token."""
    return {**bare, "DEVART_TOKEN": stack.env["DEVART_ADMIN_TOKEN"]}


def add_member(admin: dict[str, str], role: str) -> tuple[str, str]:
    """A new member of the default organisation with ``role``, and their first token."""
    name = unique(role)
    created = json.loads(ok("users", "add", name, "--role", role, "--json", env=admin).stdout)
    assert created["role"] == role and created["token"]
    return name, created["token"]


def test_without_any_token_the_cli_says_how_to_get_one(bare: dict[str, str]) -> None:
    done = devart("runs", "list", env=bare)
    assert done.returncode == 1 and "no token" in done.stderr and "devart login" in done.stderr


def test_login_saves_the_token_0600_and_later_commands_use_only_it(stack: Stack, bare: dict[str, str]) -> None:
    done = devart("login", env=bare, stdin=stack.env["DEVART_ADMIN_TOKEN"] + "\n")
    assert done.returncode == 0, done.stderr
    assert "admin" in done.stdout and "default" in done.stdout
    credentials = Path(bare["DEVART_CONFIG"])
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    assert json.loads(credentials.read_text())["tokens"] == {stack.api_url.rstrip("/"): stack.env["DEVART_ADMIN_TOKEN"]}
    me = json.loads(ok("whoami", "--json", env=bare).stdout)
    assert me["user"] == "admin" and me["role"] == "admin"
    ok("runs", "list", env=bare)
    assert "logged out" in ok("logout", env=bare).stdout
    done = devart("runs", "list", env=bare)
    assert done.returncode == 1 and "devart login" in done.stderr


def test_login_with_a_refused_token_saves_nothing(bare: dict[str, str]) -> None:
    done = devart("login", "--token", "not-a-token", env=bare)
    assert done.returncode == 1 and "refused" in done.stderr and "devart login" in done.stderr
    assert not Path(bare["DEVART_CONFIG"]).exists()


def test_a_viewer_reads_but_every_write_names_the_role_it_needs(admin: dict[str, str]) -> None:
    name, token = add_member(admin, "viewer")
    viewer = {**admin, "DEVART_TOKEN": token}
    assert json.loads(ok("whoami", "--json", env=viewer).stdout)["role"] == "viewer"
    ok("runs", "list", env=viewer)
    started = devart("run", "lint-test", "--repo", str(SAMPLE_REPO), env=viewer)
    assert started.returncode == 1 and "needs the supervisor role" in started.stderr, started.stderr
    registered = devart("agents", "create", unique("agent"), "--capabilities", "python", env=viewer)
    assert registered.returncode == 1 and "needs the admin role" in registered.stderr, registered.stderr
    listed = devart("users", "list", env=viewer)
    assert listed.returncode == 1 and "needs the admin role" in listed.stderr
    assert name in ok("users", "list", env=admin).stdout


def test_roles_change_and_members_are_removed(admin: dict[str, str]) -> None:
    name, token = add_member(admin, "viewer")
    member = {**admin, "DEVART_TOKEN": token}
    ok("users", "role", name, "supervisor", env=admin)
    assert json.loads(ok("whoami", "--json", env=member).stdout)["role"] == "supervisor"
    bad = devart("users", "role", name, "owner", env=admin)
    assert bad.returncode != 0 and "owner" in bad.stderr
    ok("users", "remove", name, env=admin)
    refused = devart("runs", "list", env=member)
    assert refused.returncode == 1 and "refused" in refused.stderr


def test_users_add_prints_the_first_token_once(admin: dict[str, str]) -> None:
    done = ok("users", "add", unique("sup"), "--role", "supervisor", "--no-expiry", env=admin)
    assert "not be shown again" in done.stdout
    both = devart("users", "add", unique("sup"), "--role", "supervisor", "--no-expiry", "--token-days", "3", env=admin)
    assert both.returncode == 1 and "not both" in both.stderr


def test_tokens_create_list_and_revoke(admin: dict[str, str]) -> None:
    _, first = add_member(admin, "supervisor")
    member = {**admin, "DEVART_TOKEN": first}
    label = unique("laptop")
    created = json.loads(ok("tokens", "create", "--name", label, "--days", "7", "--json", env=member).stdout)
    assert created["expires_at"] and created["token"].startswith(created["prefix"])
    forever = ok("tokens", "create", "--name", unique("ci"), "--no-expiry", env=member).stdout
    assert "never expires" in forever and "not be shown again" in forever
    second = {**admin, "DEVART_TOKEN": created["token"]}
    listed = json.loads(ok("tokens", "list", "--json", env=second).stdout)
    assert {t["name"] for t in listed} >= {"first token", label}
    assert label in ok("tokens", "list", "--all", env=admin).stdout
    ok("tokens", "revoke", str(created["id"]), env=member)
    refused = devart("runs", "list", env=second)
    assert refused.returncode == 1 and "refused" in refused.stderr and "devart login" in refused.stderr
    revoked = next(t for t in json.loads(ok("tokens", "list", "--json", env=member).stdout) if t["id"] == created["id"])
    assert revoked["revoked_at"] and not revoked["active"]


def test_orgs_create_makes_the_creator_its_admin(admin: dict[str, str]) -> None:
    org = unique("team")
    ok("orgs", "create", org, "--name", "A team", env=admin)
    assert org in ok("orgs", "list", env=admin).stdout
    there = json.loads(ok("tokens", "create", "--org", org, "--json", env=admin).stdout)
    me = json.loads(ok("whoami", "--json", env={**admin, "DEVART_TOKEN": there["token"]}).stdout)
    assert me["org"] == org and me["role"] == "admin"
    taken = devart("orgs", "create", org, env=admin)
    assert taken.returncode == 1 and "already exists" in taken.stderr
    # An organisation of its own Temporal namespace says so
    isolated, namespace = unique("team"), unique("devart-ns")
    made = ok("orgs", "create", isolated, "--temporal-namespace", namespace, env=admin).stdout
    assert f"in Temporal namespace {namespace}" in made
    listed = {o["id"]: o for o in json.loads(ok("orgs", "list", "--json", env=admin).stdout)}
    assert listed[isolated]["temporal_namespace"] == namespace and listed[org]["temporal_namespace"] is None
    bad = devart("orgs", "create", unique("team"), "--temporal-namespace", "no spaces", env=admin)
    assert bad.returncode == 1 and "Temporal namespace" in bad.stderr


def test_audit_shows_the_writes_by_user_and_route(admin: dict[str, str]) -> None:
    name, token = add_member(admin, "viewer")
    ok("tokens", "create", "--name", unique("audited"), env={**admin, "DEVART_TOKEN": token})
    devart("run", "lint-test", "--repo", str(SAMPLE_REPO), env={**admin, "DEVART_TOKEN": token})
    mine = json.loads(ok("audit", "--user", name, "--json", env=admin).stdout)
    assert [(e["method"], e["route"], e["status"]) for e in mine] == [("POST", "/v1/runs", 403),
                                                                       ("POST", "/v1/tokens", 201)]
    table = ok("audit", "--limit", "20", env=admin).stdout
    assert "/v1/users" in table and name in table
    refused = devart("audit", env={**admin, "DEVART_TOKEN": token})
    assert refused.returncode == 1 and "needs the admin role" in refused.stderr
