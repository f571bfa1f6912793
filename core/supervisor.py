"""Starts and stops devart's own processes (API, pipeline worker, agents) as children of one command.

Used by ``devart up`` and by the test suite, so the tests run exactly the processes a user runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.errors import ServiceUnavailable


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Supervisor:
    """Owns child processes; every child gets its own log file and process group."""

    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"DEVART_LOG_FORMAT": "json", **os.environ, **self.env, **(env or {})},
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def api(self, host: str, port: int) -> Child:
        return self.spawn("api", "api", "--host", host, "--port", str(port))

    def worker(self) -> Child:
        return self.spawn("worker", "worker")

    def agent(self, name: str, capabilities: list[str], key: str, *args: str, **extra_env: str) -> Child:
        return self.spawn(
            f"agent-{name}",
            "agent",
            "--name",
            name,
            "--capabilities",
            ",".join(capabilities),
            *args,
            env={"DEVART_AGENT_KEY": key, **extra_env},
        )

    def wait_healthy(self, url: str, child: Child, deadline_seconds: float = 60.0) -> None:
        """Poll the API's health route until it answers; fail with the child's log tail if it died."""
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise ServiceUnavailable(f"{child.name} exited ({child.proc.returncode}):\n{tail(child.log)}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise ServiceUnavailable(f"{child.name} not healthy after {deadline_seconds:.0f}s:\n{tail(child.log)}")

    def stop(self, child: Child, grace: float = 10.0) -> None:
        """SIGTERM the child's group, then SIGKILL after ``grace`` seconds."""
        stop_child(child.proc, grace)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self, grace: float = 10.0) -> None:
        """Signal every child at once, then give them one shared grace period."""
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        for child in reversed(list(self.children)):
            self.stop(child, grace)

    def save(self, path: Path) -> None:
        """Remember the children so a later ``devart down`` can stop them."""
        path.write_text(json.dumps({c.name: c.proc.pid for c in self.children}))


def stop_child(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a child we started (and its process group), reaping it so it does not linger as a zombie."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # grandchildren left in the group


def stop_process(pid: int, grace: float = 10.0) -> None:
    """Stop a process group we did not start ourselves (e.g. from ``devart down``)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
