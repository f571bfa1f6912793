"""The supervisor's record of the stack (``<state>/supervisor.json``) and the lock that makes it the only one.

The supervisor holds an exclusive ``flock`` on ``<state>/supervisor.lock`` for its whole life. The kernel drops it
when the process ends, however it ends (SIGKILL included), so whether a supervisor lives never depends on a pid
that may have been reused, and two ``devart up`` at once cannot both start one. ``devart down`` takes the same lock
while it stops what a dead supervisor left running, so no ``devart up`` starts anything meanwhile.

Only the supervisor writes the record (``devart down`` too, once it holds the lock), each time whole: a temporary
file renamed over the old one, so a reader sees one version or the next, never half of one.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from devart.core.devstack.statedir import open_private, write_private
from devart.core.devstack.supervisor import ProcessRef

RECORD = "supervisor.json"
LOCK = "supervisor.lock"
#: ``devart up`` writes a fresh value here before it signals the supervisor, which copies it into the record's
#: ``answered`` once it has acted on it: the caller then knows the record it reads is not an older one.
REQUEST = "supervisor.request"

#: ``starting``: being started (or waiting to be); ``running``; ``backoff``: exited, to be started again;
#: ``failed``: given up on (a crash loop), until ``devart up`` asks again; ``stopped``; ``external``: someone else
#: runs it (a Temporal server already listening), so the supervisor only shows it.
ChildStatus = Literal["starting", "running", "backoff", "failed", "stopped", "external"]
#: ``degraded``: up, but some child is in backoff or failed; ``failed``: could not bring the stack up, exiting.
StackStatus = Literal["starting", "running", "degraded", "stopping", "stopped", "failed"]


class ChildRecord(BaseModel):
    """One process of the stack as the supervisor last saw it."""

    name: str
    status: ChildStatus = "starting"
    pid: int | None = None
    started: float | None = Field(default=None, description="Its start time (seconds from boot, core.process_start; "
                                  "epoch seconds from earlier versions): with pid, its identity.")
    restarts: int = 0
    last_exit: int | None = Field(default=None, description="Exit code of its last run (negative: the signal).")
    message: str = ""
    argv: list[str] = Field(default_factory=list)
    stop_signal: int = 15
    log: str = ""

    @property
    def ref(self) -> ProcessRef | None:
        return ProcessRef(self.pid, self.started) if self.pid and self.started else None

    def alive(self) -> bool:
        ref = self.ref
        return ref is not None and ref.alive()


class StackRecord(BaseModel):
    """The supervisor itself and its children, in the order they are started."""

    supervisor: ChildRecord
    status: StackStatus = "starting"
    message: str = ""
    answered: str = ""
    children: dict[str, ChildRecord] = Field(default_factory=dict)
    updated: float = Field(default_factory=time.time)


def read(state: Path) -> StackRecord | None:
    """The record, or None when no supervisor ever ran with this state folder."""
    try:
        return StackRecord.model_validate_json((state / RECORD).read_text())
    except FileNotFoundError:
        return None


def write(state: Path, record: StackRecord) -> None:
    record.updated = time.time()
    write_private(state / RECORD, record.model_dump_json(indent=1))


def try_lock(state: Path) -> int | None:
    """The descriptor holding the supervisor lock, or None when another process holds it."""
    fd = open_private(state / LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
