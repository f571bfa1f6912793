"""The CLI starts quickly: loading it, and printing any command's help, imports none of the heavy libraries; each
command imports what it needs when it runs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

#: Libraries that take a noticeable share of a second to import, and that no command's help needs.
HEAVY = ("temporalio", "sqlalchemy", "sqlmodel", "aio_pika", "fastapi", "openai", "githubkit", "alembic", "psycopg",
         "uvicorn", "kubernetes", "opentelemetry.sdk")


def imported_by(*args: str) -> set[str]:
    """Every module a ``python -X importtime`` run of ``args`` imported (importtime writes one line per module)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return {m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|(.*)$", done.stderr, re.M)}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


def test_importing_the_cli_imports_no_heavy_library() -> None:
    modules = imported_by("-c", "import devart.cli.main")
    assert "devart.cli.main" in modules
    assert heavy(modules) == []


@pytest.mark.parametrize("command", [["--help"], ["runs", "--help"], ["agent", "--help"], ["up", "--help"],
                                     ["github", "setup", "--help"]])
def test_help_imports_no_heavy_library(command: list[str]) -> None:
    assert heavy(imported_by("-m", "devart.cli", *command)) == []
