"""Starts and stops devart's own processes (API, pipeline worker, agents), and knows a process by pid and start time.

``Supervisor`` runs them as children of one command (the test suite and the benchmark); ``ProcessRef`` is how
``devart up``'s supervisor (``core/devstack/daemon.py``) and ``devart down`` find them again from a record: a pid
alone may have been given to another process since, a pid with its start time cannot.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from devart.core import process_start
from devart.core.errors import ServiceUnavailable


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
                [sys.executable, "-m", "devart.cli", *args],
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

    def agents_api(self, host: str, port: int) -> Child:
        """The agents' API: the agent routes alone, in a process of their own (``api.main.agents_app``)."""
        return self.spawn("agents-api", "api", "--agents-only", "--host", host, "--port", str(port))

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


@dataclass(frozen=True)
class ProcessRef:
    """A process known by its pid *and* start time, so that a pid the kernel has since reused is never signalled.

    devart starts each of its processes in a session of its own, so the pid is also its process group.
    """

    pid: int
    #: Seconds from boot to its start (``core.process_start``; a wall-clock time in records of earlier versions).
    started: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        """The running process ``pid``, or None."""
        started = process_start.since_boot(pid)
        return cls(pid, started) if started is not None else None

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie, exited but not yet reaped, does not)."""
        try:
            return (process_start.is_start_of(self.pid, self.started)
                    and psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def signal(self, sig: int, *, group: bool = True) -> bool:
        """Send ``sig`` to the process (and its group when it leads one) if it is still this process."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group and os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        return True

    def leftovers(self) -> list[psutil.Process]:
        """Processes still in this process's group once it is gone (started after it, so none is a stranger)."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(proc.pid) != self.pid:  # cheap, and true of almost every process: asked first
                    continue
                started = process_start.started_like(proc.pid, self.started)
                if started is not None and started >= self.started - process_start.SAME_START:
                    found.append(proc)
        return found


def stop_refs(refs: Iterable[tuple[ProcessRef, int]], grace: float = 10.0) -> None:
    """Send each process its stop signal at once, SIGKILL whatever still runs after ``grace`` seconds, then
    whatever remains of their process groups."""
    refs = list(refs)
    for ref, sig in refs:
        ref.signal(sig)
    deadline = time.monotonic() + grace
    while any(ref.alive() for ref, _ in refs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for ref, _ in refs:
        ref.signal(signal.SIGKILL)
        for proc in ref.leftovers():
            with contextlib.suppress(psutil.Error):
                proc.kill()
    deadline = time.monotonic() + 5.0
    while any(ref.alive() for ref, _ in refs) and time.monotonic() < deadline:
        time.sleep(0.05)
