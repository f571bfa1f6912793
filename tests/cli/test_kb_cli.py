"""``devart kb`` against the real stack: add, list, show, search and reembed, as an organisation of its own.

Each command runs in a fresh process holding only that organisation's administrator's token, so what it lists and
finds is that organisation's alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import unique
from tests.stack import Stack, admin

#: Variables that would hand a command a token other than the one the test means it to use.
TOKEN_VARIABLES = ("DEVART_TOKEN", "DEVART_ADMIN_TOKEN", "DEVART_CONFIG", "DEVART_HOME")


def devart(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devart.cli", "kb", *args], capture_output=True, text=True,
                          timeout=120, env={**env, "COLUMNS": "250"})


def ok(*args: str, env: dict[str, str]) -> str:
    done = devart(*args, env=env)
    assert done.returncode == 0, f"devart kb {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture
def env(stack: Stack, tmp_path: Path) -> dict[str, str]:
    """The stack's environment with the token of a new organisation's administrator only."""
    org = unique("kb-cli")
    with httpx.Client(base_url=stack.api_url, headers=admin(stack), timeout=30.0) as client:
        assert client.post("/v1/orgs", json={"id": org}).status_code == 201
        token = client.post("/v1/tokens", json={"org": org, "name": "cli"}).json()["token"]
    base = {k: v for k, v in {**os.environ, **stack.env}.items() if k not in TOKEN_VARIABLES}
    return {**base, "DEVART_TOKEN": token, "DEVART_CONFIG": str(tmp_path / "credentials.json"),
            "DEVART_HOME": str(tmp_path / "empty-state")}


def test_add_list_show_and_search(env: dict[str, str]) -> None:
    added = json.loads(ok("add", "--skill", "test", "--error-type", "OutOfMemory", "--message",
                          "Killed process 4242 (pytest): out of memory", "--remedy", "more_memory",
                          "--param", "memory_mb=8192", "--param", "note=twice the limit", "--json", env=env))
    assert added["parameters"] == {"memory_mb": 8192, "note": "twice the limit"}
    assert "added" in ok("add", "--skill", "build", "--error-type", "BuildBackendMissing", "--message",
                         "No module named 'hatchling'", "--guidance", "build with --no-isolation", env=env)
    listed = ok("list", env=env)
    assert "OutOfMemory in test" in listed and "more_memory(memory_mb=8192" in listed
    assert "build with --no-isolation" in listed
    assert [e["id"] for e in json.loads(ok("list", "--remedy", "more_memory", "--json", env=env))] == [added["id"]]
    shown = ok("show", str(added["id"]), env=env)
    assert "message:  Killed process <n> (pytest): out of memory" in shown and "written by admin" in shown
    hints = json.loads(ok("search", "pytest was killed, out of memory", "-k", "2", "--json", env=env))
    assert hints[0]["entry_id"] == added["id"]
    assert "more_memory" in ok("search", "pytest was killed, out of memory", env=env)
    assert "every entry is under multilingual-e5-small-q4" in ok("reembed", env=env)


def test_refusals_say_what_to_do(env: dict[str, str]) -> None:
    done = devart("add", "--skill", "test", "--error-type", "X", "--message", "m", env=env)
    assert done.returncode == 1 and "give --remedy, --guidance or both" in done.stderr
    done = devart("add", "--skill", "test", "--error-type", "X", "--message", "m", "--remedy", "r", "--param",
                  "novalue", env=env)
    assert done.returncode == 1 and "key=value" in done.stderr
    done = devart("show", "999999999", env=env)
    assert done.returncode == 1 and "no knowledge entry 999999999" in done.stderr
    assert "nothing in the knowledge base is like that yet" in ok("search", "anything at all", env=env)
