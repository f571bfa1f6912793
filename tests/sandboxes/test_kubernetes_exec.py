"""The exec wrapper and stream pump of the Kubernetes backend, without a cluster.

The wrapper is a shell script, so it runs here for real under ``sh`` (dash on this machine, as in Debian-based
images) with GNU ``timeout``: the same argv the backend sends to the API server, with the workspace pointed at a
temporary folder. What only a real container shows (its cgroup counters, the kubelet) is the cluster test's part.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from devart.core.errors import SandboxError
from devart.sandboxes.k8s_exec import exec_argv, kill_argv, parse_status, parse_usage, pump


def run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False)


def marker() -> str:
    return f"300.{uuid.uuid4().int % 10**9:09d}"


def sleepers(duration: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["cmdline"] == ["sleep", duration] and p.info["status"] != psutil.STATUS_ZOMBIE]


def test_argv_passes_variables_and_command_as_separate_arguments() -> None:
    argv = exec_argv(["pytest", "-q", "a b"], {"GREETING": "hi; rm -rf /"}, timeout=2.5, workdir="/workspace",
                     pidfile="/tmp/p.pid")
    assert argv[:4] == ["env", "GREETING=hi; rm -rf /", "sh", "-c"]
    assert argv[5:] == ["devart", "/tmp/p.pid", "3", "/workspace", "pytest", "-q", "a b"]
    with pytest.raises(SandboxError, match="empty command"):
        exec_argv([], {}, timeout=1, workdir="/w", pidfile="/p")


def test_wrapper_runs_in_the_workdir_merges_stderr_and_reports_usage(tmp_path: Path) -> None:
    pidfile = tmp_path / "cmd.pid"
    done = run(exec_argv(["sh", "-c", 'pwd; echo "$GREETING"; echo oops >&2; exit 3'], {"GREETING": "hi there"},
                         timeout=10, workdir=str(tmp_path), pidfile=str(pidfile)))
    assert done.returncode == 3
    assert done.stdout.decode() == f"{tmp_path}\nhi there\noops\n"  # stderr merged, in order
    rest, cpu, oom = parse_usage(done.stderr)
    assert rest == b""
    assert cpu >= 0.0
    assert oom in (False, None)  # no OOM kill here (None where the cgroup has no counter)
    assert not pidfile.exists()


def test_wrapper_kills_the_whole_tree_on_timeout(tmp_path: Path) -> None:
    duration = marker()
    started = time.monotonic()
    done = run(exec_argv(["sh", "-c", f"sleep {duration} & sleep {duration}; echo never"], {}, timeout=1,
                         workdir=str(tmp_path), pidfile=str(tmp_path / "p")))
    assert done.returncode == 137
    assert time.monotonic() - started < 5
    assert b"never" not in done.stdout
    time.sleep(0.2)
    assert sleepers(duration) == []


def test_kill_script_kills_a_running_command_tree(tmp_path: Path) -> None:
    duration, pidfile = marker(), tmp_path / "p"
    proc = subprocess.Popen(exec_argv(["sh", "-c", f"sleep {duration} & sleep {duration}"], {}, timeout=60,
                                      workdir=str(tmp_path), pidfile=str(pidfile)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(50):
            if len(sleepers(duration)) == 2 and pidfile.exists():
                break
            time.sleep(0.1)
        assert run(kill_argv(str(pidfile))).returncode == 0
        assert proc.wait(timeout=10) == 137
        time.sleep(0.2)
        assert sleepers(duration) == []
    finally:
        for process in sleepers(duration):
            process.kill()
        proc.kill()
        proc.communicate()
    assert run(kill_argv(str(tmp_path / "missing"))).returncode == 0  # nothing to kill is fine


def test_a_missing_workdir_is_reported(tmp_path: Path) -> None:
    done = run(exec_argv(["true"], {}, timeout=5, workdir=str(tmp_path / "gone"), pidfile=str(tmp_path / "p")))
    assert done.returncode == 126
    assert b"gone" in done.stderr


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"metadata":{},"status":"Success"}', (0, "")),
    (json.dumps({"status": "Failure", "message": "command terminated with non-zero exit code",
                 "reason": "NonZeroExitCode",
                 "details": {"causes": [{"reason": "ExitCode", "message": "42"}]}}).encode(),
     (42, "command terminated with non-zero exit code")),
    (b'{"status":"Failure","message":"container not found"}', (None, "container not found")),
    (b"", (None, "")),
    (b"not json", (None, "not json")),
])
def test_parse_status(raw: bytes, expected: tuple[int | None, str]) -> None:
    assert parse_status(raw) == expected


def test_parse_usage() -> None:
    assert parse_usage(b"warning\ndevart:usage 1000000 0 3500000 1\n") == (b"warning\n", 2.5, True)
    assert parse_usage(b"devart:usage 10 2 20 2\n") == (b"", 0.0, False)
    assert parse_usage(b"devart:usage - - - -\n") == (b"", 0.0, None)
    assert parse_usage(b"sh: timeout: not found\n") == (b"sh: timeout: not found\n", 0.0, None)


class FakeStream:
    """The part of ``WSClient`` that ``pump`` uses, fed from a list of frames."""

    def __init__(self, frames: list[tuple[int, bytes]], close_after: bool = True) -> None:
        self.frames, self.close_after = frames, close_after
        self.channels: dict[int, bytes] = {}
        self.open, self.closed = True, False

    def is_open(self) -> bool:
        return self.open

    def update(self, timeout: float = 0) -> None:
        if self.frames:
            channel, data = self.frames.pop(0)
            self.channels[channel] = self.channels.get(channel, b"") + data
        elif self.close_after:
            self.open = False
        else:
            time.sleep(timeout)

    def read_channel(self, channel: int, timeout: float = 0) -> bytes:
        return self.channels.pop(channel, b"")

    def close(self) -> None:
        self.open, self.closed = False, True


def test_pump_emits_stdout_and_collects_stderr_and_status() -> None:
    ws = FakeStream([(1, b"a\n"), (2, b"devart:usage "), (1, b"b\n"), (2, b"1 0 2 0\n"), (3, b'{"status":"Success"}')])
    out: list[bytes] = []
    got = pump(ws, deadline=time.monotonic() + 5, stop=threading.Event(), emit=out.append)
    assert out == [b"a\n", b"b\n"]
    assert got.stderr == b"devart:usage 1 0 2 0\n" and got.status == b'{"status":"Success"}'
    assert not got.stopped and not got.expired and ws.closed


def test_pump_stops_when_asked_and_at_the_deadline() -> None:
    stop = threading.Event()
    stop.set()
    ws = FakeStream([], close_after=False)
    assert pump(ws, deadline=time.monotonic() + 5, stop=stop, emit=lambda _: None).stopped and ws.closed
    ws = FakeStream([], close_after=False)
    started = time.monotonic()
    assert pump(ws, deadline=started + 0.3, stop=threading.Event(), emit=lambda _: None).expired
    assert time.monotonic() - started < 2 and ws.closed

