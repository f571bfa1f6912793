"""One child of ``devart up``'s supervisor: its record and process, how it starts, and what an exit means.

Split from ``core/devstack/daemon.py``, which keeps the loop that watches every child (bring-up, ticks, stop): this
module holds what concerns a single child, its process started in a session of its own under a private umask, and
the restart policy an exit goes through (a backoff that doubles, or giving up after a crash loop).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devart.core import process_start
from devart.core.devstack.stackfile import ChildRecord
from devart.core.devstack.stackplan import ChildSpec
from devart.core.devstack.statedir import PRIVATE_UMASK, open_private
from devart.core.devstack.supervisor import ProcessRef, stop_refs
from devart.core.settings import SupervisorSettings

log = logging.getLogger("devart.supervisor")


@dataclass
class Child:
    spec: ChildSpec
    record: ChildRecord
    proc: subprocess.Popen[bytes] | None = None
    began: float = 0.0  # monotonic time of its latest start
    streak: int = 0  # exits in a row, each within ``stable_after`` of its start
    due: float = 0.0  # monotonic time of its next start, in backoff
    starts: int = 0


def popen(child: Child) -> subprocess.Popen[bytes]:
    """Prepare and start the child's process, writing to its log; raises whatever stopped the start."""
    spec, record = child.spec, child.record
    if spec.prepare is not None:
        spec.prepare()
    record.argv = spec.command()
    out = open_private(Path(record.log))
    ids = {"user": spec.user.pw_uid, "group": spec.user.pw_gid, "extra_groups": []} if spec.user else {}
    try:
        return subprocess.Popen(record.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **spec.env}, start_new_session=True,
                                umask=PRIVATE_UMASK, **ids)  # type: ignore[call-overload]
    finally:
        os.close(out)


def started(child: Child, proc: subprocess.Popen[bytes]) -> None:
    """Record a process just started for the child, counting it as a restart unless it is the first start."""
    spec, record = child.spec, child.record
    ref = ProcessRef.of(proc.pid)
    child.proc, child.began = proc, time.monotonic()
    record.pid, record.started = proc.pid, ref.started if ref else process_start.now()
    record.restarts += 1 if child.starts else 0
    child.starts += 1
    record.status, record.message = ("starting" if spec.ready else "running"), ""
    again = f", restart {record.restarts}" if record.restarts else ""
    log.info("started %s (pid %d)%s", spec.name, proc.pid, again)


def exited(child: Child, code: int | None, why: str, cfg: SupervisorSettings) -> None:
    """Clear what is left of the child's process, then put it in backoff, or give up on it after a crash loop."""
    record = child.record
    ran = time.monotonic() - child.began
    if record.ref is not None:
        stop_refs([(record.ref, signal.SIGKILL)], grace=0)  # only what is left of its process group
    child.proc, record.pid, record.started, record.last_exit = None, None, None, code
    child.streak = child.streak + 1 if ran < cfg.stable_after else 1
    how = why or ("exited" if code is None else f"exited with code {code}")
    if child.streak >= cfg.crash_loop:
        record.status = "failed"
        record.message = (f"gave up after {child.streak} exits in a row, each within {cfg.stable_after:.0f}s "
                          f"of starting ({how}); see {record.log}; `devart up` tries again")
        log.error("giving up on %s: %s", child.spec.name, record.message)
    else:
        delay = min(cfg.backoff_max, cfg.backoff_initial * 2 ** (child.streak - 1))
        record.status, record.message, child.due = "backoff", how, time.monotonic() + delay
        log.warning("%s %s after %.1fs; starting it again in %.1fs", child.spec.name, how, ran, delay)
