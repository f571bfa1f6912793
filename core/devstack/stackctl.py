"""Bring the stack up, ask for its status and take it down, from outside its supervisor (``core/devstack/daemon.py``).

``devart up``, ``down`` and ``status`` call these, and so can a test or a tool that wants a supervised stack of its
own (any state folder, any environment)::

    record = stackctl.start(state, env)          # returns once every process runs (or raises, saying why)
    pid = record.children["worker"].pid          # who runs; stackctl.read(state) reads it again later
    os.kill(pid, signal.SIGKILL)
    stackctl.wait_running(state, "worker", not_pid=pid)   # the supervisor started it again
    stackctl.stop(state)                         # nothing of it is left running
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from devart.core import settings
from devart.core.devstack import embedded, stackfile, stackplan
from devart.core.devstack.stackfile import ChildRecord, StackRecord
from devart.core.devstack.statedir import PRIVATE_UMASK, open_private, write_private
from devart.core.devstack.supervisor import stop_refs, tail
from devart.core.errors import ServiceUnavailable

read = stackfile.read


def supervisor_alive(state: Path) -> bool:
    record = stackfile.read(state)
    return record is not None and record.supervisor.alive() and _locked(state)


def _locked(state: Path) -> bool:
    fd = stackfile.try_lock(state)
    if fd is None:
        return True
    os.close(fd)
    return False


def start(state: Path, env: Mapping[str, str] | None = None, timeout: float | None = None) -> StackRecord:
    """Bring the stack of ``state`` to "every process running, each once", whatever runs now.

    With no supervisor alive, one is started (in the environment ``env``, default this process's) and adopts
    whatever an earlier one left running; with one alive, it is asked to start what is missing and to try again
    what it gave up on. Returns its record once it has done so; raises ``ServiceUnavailable`` with the reason when
    the stack could not come up. A record with status ``degraded`` says which process failed, in its message.
    """
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + (timeout or settings.supervisor().ready_timeout)
    request = uuid.uuid4().hex
    write_private(state / stackfile.REQUEST, request)
    while True:
        fd = stackfile.try_lock(state)
        if fd is not None:
            try:
                _spawn_supervisor(state, env, fd)
            finally:
                os.close(fd)
            break
        record = stackfile.read(state)
        if record is not None and record.supervisor.ref and record.status not in ("stopping", "stopped", "failed"):
            if record.supervisor.ref.signal(signal.SIGHUP, group=False):
                break
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"{state / stackfile.LOCK} stays locked: a `devart up` or `down` is running")
        time.sleep(0.1)
    return _wait_answer(state, request, deadline)


def _spawn_supervisor(state: Path, env: Mapping[str, str] | None, lock_fd: int) -> None:
    out = open_private(state / "logs" / "supervisor.log")
    try:
        subprocess.run([sys.executable, "-m", "devart.cli", "supervise", "--lock-fd", str(lock_fd)], check=True,
                       env={**(env if env is not None else os.environ), "DEVART_HOME": str(state)},
                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(lock_fd,),
                       start_new_session=True, umask=PRIVATE_UMASK)
    except subprocess.CalledProcessError as exc:
        raise ServiceUnavailable(f"the supervisor did not start:\n{tail(state / 'logs' / 'supervisor.log')}") from exc
    finally:
        os.close(out)


def _wait_answer(state: Path, request: str, deadline: float) -> StackRecord:
    while True:
        record = stackfile.read(state)
        if record is not None and record.answered == request:
            if record.status == "failed":
                raise ServiceUnavailable(f"devart could not start: {record.message}")
            return record
        if not _locked(state):
            raise ServiceUnavailable(f"the supervisor exited:\n{tail(state / 'logs' / 'supervisor.log')}")
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the stack is not up yet; see `devart status` and {state / 'logs'}")
        time.sleep(0.1)


def wait_running(state: Path, name: str, not_pid: int | None = None, timeout: float = 90.0) -> ChildRecord:
    """Wait until the supervisor reports ``name`` running (as a process other than ``not_pid``); return it."""
    deadline = time.monotonic() + timeout
    while True:
        record = stackfile.read(state)
        child = record.children.get(name) if record else None
        if child and child.status == "running" and child.pid != not_pid and child.alive():
            return child
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"{name} is not running after {timeout:.0f}s: {child}")
        time.sleep(0.1)


#: Seconds ``stop`` gives the supervisor beyond its three rounds of the grace period before killing it.
STOP_MARGIN = 30.0
#: Seconds ``stop`` waits for the lock after killing the supervisor, before it says what holds the stack.
KILLED_SECONDS = 10.0


def stop(state: Path, grace: float | None = None) -> list[str]:
    """Stop the stack of ``state``: its supervisor, then whatever a dead supervisor left running (pid and start
    time checked), then an embedded PostgreSQL started outside it. Returns the names of what this call stopped
    itself, beyond what the supervisor stopped."""
    grace = settings.supervisor().stop_grace if grace is None else grace
    if not state.exists():
        return []
    fd = stackfile.try_lock(state)
    if fd is None:
        record = stackfile.read(state)
        if record is not None and record.supervisor.ref:
            record.supervisor.ref.signal(signal.SIGTERM, group=False)
        # The supervisor stops its processes in at most three rounds of the grace period (devart's, then each server).
        deadline = time.monotonic() + 3 * grace + STOP_MARGIN
        while (fd := stackfile.try_lock(state)) is None:
            if time.monotonic() > deadline:
                if record is not None and record.supervisor.ref:
                    record.supervisor.ref.signal(signal.SIGKILL, group=False)
                if time.monotonic() > deadline + KILLED_SECONDS:  # not the process recorded, or not ours to kill
                    pid = record.supervisor.pid if record is not None else None
                    raise ServiceUnavailable(
                        f"the stack's supervisor{f' (pid {pid})' if pid else ''} still holds {state} after "
                        f"{3 * grace + STOP_MARGIN + KILLED_SECONDS:.0f}s and is not the process its record names: "
                        f"stop it by hand{f' (kill {pid})' if pid else ''}, then run devart down again")
            time.sleep(0.1)
    try:
        return _stop_orphans(state, grace)
    finally:
        os.close(fd)


def _stop_orphans(state: Path, grace: float) -> list[str]:
    stopped = []
    record = stackfile.read(state)
    if record is not None:
        for batch in stackplan.stop_order(list(record.children)):
            alive = [record.children[n] for n in batch if record.children[n].alive()]
            stop_refs([(c.ref, c.stop_signal) for c in alive if c.ref], grace)
            stopped += [c.name for c in alive]
        for child in record.children.values():
            if child.status != "external":
                child.status, child.pid, child.started = "stopped", None, None
        record.status = record.supervisor.status = "stopped"
        stackfile.write(state, record)
    if embedded.stop_postgres(state):  # one started outside the supervisor (a lone `devart api`, `devart doctor`)
        stopped.append("postgres")
    return stopped
