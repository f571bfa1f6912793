"""CLI errors are one clear line on stderr and a non-zero exit; success exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devart.core.devstack import embedded
from devart.core.devstack.services import free_port
from tests.stack import ROOT, SAMPLE_REPO, Stack


def devart(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devart.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_validate_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstages:\n  - {name: a, skill: shell, depends_on: [b]}\n  - {name: c, skill: tset}\n")
    done = devart("pipelines", "validate", str(bad))
    assert done.returncode == 1
    assert "depends on unknown stage 'b'" in done.stderr and "did you mean 'test'" in done.stderr


def test_validate_builtin_and_yaml_errors(tmp_path: Path) -> None:
    assert devart("pipelines", "validate", "pipelines/build-test-review.yaml").returncode == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    done = devart("pipelines", "validate", str(broken))
    assert done.returncode == 1 and "not valid YAML" in done.stderr


def test_unreachable_api_is_exit_2_with_the_fix() -> None:
    done = devart("runs", "list", env={"DEVART_API_URL": f"http://127.0.0.1:{free_port()}"})
    assert done.returncode == 2
    assert "not reachable" in done.stderr and "devart up" in done.stderr


def test_bad_arguments(stack: Stack) -> None:
    done = devart("run", "lint-test", "--repo", str(SAMPLE_REPO), "--param", "novalue", env=stack.env)
    assert done.returncode == 1 and "key=value" in done.stderr
    done = devart("run", "lint-test", "--repo", "/no/such/repo", env=stack.env)
    assert done.returncode == 1 and "does not exist" in done.stderr
    done = devart("run", "lint-tset", "--repo", str(SAMPLE_REPO), env=stack.env)
    assert done.returncode == 1 and "did you mean 'lint-test'" in done.stderr
    done = devart("runs", "show", "missing-run", env=stack.env)
    assert done.returncode == 1 and "not found" in done.stderr


def test_pipelines_list(stack: Stack) -> None:
    done = devart("pipelines", "list", "--json", env=stack.env)
    assert done.returncode == 0 and "build-test-review" in done.stdout


def test_doctor_names_the_broken_service(stack: Stack) -> None:
    ok = devart("doctor", env=stack.env)
    assert ok.returncode == 0, ok.stdout
    broken = devart("doctor", env={**stack.env, "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/"})
    assert broken.returncode == 1
    assert "rabbitmq-server -detached" in broken.stdout


def test_doctor_reports_the_embedded_postgres_down_and_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    try:
        done = subprocess.run([sys.executable, "-m", "devart.cli", "doctor"], capture_output=True, text=True,
                              timeout=120, env={**env, "DEVART_HOME": str(state), "COLUMNS": "300"})
        row = next(line for line in done.stdout.splitlines() if "PostgreSQL" in line)
        assert done.returncode == 1 and "FAIL" in row and "not running" in row and "devart up" in row, done.stdout
        assert embedded.running(state) is None, "doctor started the embedded PostgreSQL"
    finally:
        embedded.stop_postgres(state)


def test_agent_module_is_found_from_the_current_directory(stack: Stack, tmp_path: Path) -> None:
    # Given the README's example, run as the README says: the installed `devart` command, from the repository root
    devart_command = Path(sys.executable).parent / "devart"
    done = subprocess.run([str(devart_command), "agent", "--name", "auditor", "--key", "dvt_not-a-key",
                           "--module", "examples.agents.dependency_audit"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **stack.env, "COLUMNS": "200"})
    # Then the module loads, and the agent goes on to the next step: the API refuses the made-up key
    assert "cannot load agent module" not in done.stderr, done.stderr
    assert done.returncode == 1 and "the API refused agent auditor" in done.stderr, done.stderr
