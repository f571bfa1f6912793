"""A process recorded by pid and start time is still recognised after the wall clock steps, and no other is.

The kernel reports a boot time that moves with the wall clock (a time sync, a virtual machine resumed from a
snapshot); psutil's ``create_time`` adds it to the process's start. A step is simulated here by moving the boot
time psutil reads, which is what such a step does to it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from psutil import _pslinux

from devart.core import process_start
from devart.core.devstack import stackctl, stackfile
from devart.core.devstack.stackfile import ChildRecord, StackRecord
from devart.core.devstack.supervisor import ProcessRef
from devart.core.errors import ServiceUnavailable
from devart.sandboxes.processes import create_time, kill_group


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall clock steps 10 s forward."""
    real = _pslinux.boot_time()
    monkeypatch.setattr(_pslinux, "boot_time", lambda: real + 10.0)


def test_a_recorded_process_is_still_itself_after_the_clock_steps(child: subprocess.Popen[bytes]) -> None:
    ref = ProcessRef.of(child.pid)
    old_style = ProcessRef(child.pid, psutil.Process(child.pid).create_time())  # a record of an earlier version
    assert ref is not None and ref.alive() and old_style.alive()
    with pytest.MonkeyPatch.context() as patch:
        step(patch)
        # Then the supervisor's record still names it, so `devart status` shows it and `devart down` stops it
        assert ref.alive()
        assert ref.signal(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
    assert not ref.alive()


def test_a_sandbox_command_recorded_before_the_step_is_still_killed(child: subprocess.Popen[bytes],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = create_time(child.pid)
    step(monkeypatch)
    kill_group(child.pid, recorded)
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_another_process_is_never_taken_for_the_recorded_one(child: subprocess.Popen[bytes]) -> None:
    started = process_start.since_boot(child.pid)
    assert started is not None
    assert not process_start.is_start_of(child.pid, started - 1.0)  # the number, reused by a later process
    assert not process_start.is_start_of(child.pid, None)
    kill_group(child.pid, started - 1.0)  # left alone
    assert child.poll() is None
    child.kill()
    child.wait()
    assert process_start.since_boot(child.pid) is None and not process_start.is_start_of(child.pid, started)


def test_an_age_is_counted_from_the_start(child: subprocess.Popen[bytes]) -> None:
    began = time.monotonic()
    started = process_start.since_boot(child.pid)
    assert started is not None
    assert 0.0 <= process_start.age(started) < time.monotonic() - began + 5.0
    assert abs(process_start.age(psutil.Process(child.pid).create_time()) - process_start.age(started)) < 1.0


def test_down_says_what_holds_the_stack_rather_than_wait_for_ever(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a state folder whose lock a process holds that is not the supervisor its record names
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDWR | os.O_CREAT, 0o600); fcntl.flock(fd, fcntl.LOCK_EX); print(1, flush=True); "
                               "time.sleep(60)", str(state / stackfile.LOCK)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"1"
        started = process_start.since_boot(holder.pid)
        assert started is not None
        stackfile.write(state, StackRecord(supervisor=ChildRecord(name="supervisor", pid=holder.pid,
                                                                  started=started - 5.0)))
        monkeypatch.setattr(stackctl, "STOP_MARGIN", 0.5)
        monkeypatch.setattr(stackctl, "KILLED_SECONDS", 0.5)
        # When the stack is stopped, it gives up with the pid to stop by hand, and signals nothing it cannot name
        held = rf"supervisor \(pid {holder.pid}\) still holds .*kill {holder.pid}"
        with pytest.raises(ServiceUnavailable, match=held):
            stackctl.stop(state, grace=0.1)
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
