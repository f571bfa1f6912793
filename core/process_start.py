"""When a process started, in a form that names it for good: seconds from boot, the kernel's own count.

A pid alone may name another process once ours is reaped; a pid with its start time names one process. psutil's
``create_time`` adds the boot time to the kernel's count, and the boot time moves whenever the wall clock is
stepped (a time sync, a virtual machine resumed from a snapshot): a process recorded before such a step no longer
matched its record after it, by exactly the step. ``devart status`` then called a running stack gone, and
``devart down`` waited forever on a supervisor it would not signal. The count of clock ticks from boot to the
process's start (``/proc/PID/stat``, field 22) never changes.

Records written before this module hold wall-clock start times; they are still recognised (and compared as they
were), so a stack started by an earlier version can be stopped by this one.
"""

from __future__ import annotations

import os
import time

import psutil

#: Two readings of one process's start time differ by less than this (a clock tick is 10 ms).
SAME_START = 0.05
#: A recorded start above this many seconds is a wall-clock time (seconds since 1970), not seconds since boot:
#: no machine has been up for 30 years.
_EPOCH = 30 * 365 * 86400
_TICKS = os.sysconf("SC_CLK_TCK")


def since_boot(pid: int) -> float | None:
    """Seconds from boot to the start of ``pid``; None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            line = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow its last ')'.
    fields = line[line.rfind(b")") + 2:].split()
    return int(fields[19]) / _TICKS if len(fields) > 19 else None


def started_like(pid: int, recorded: float) -> float | None:
    """The start of ``pid`` in the unit of ``recorded``: seconds since boot, or, for a record of an earlier
    version, the wall-clock time psutil gives."""
    if recorded < _EPOCH:
        return since_boot(pid)
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def is_start_of(pid: int, recorded: float | None) -> bool:
    """Whether ``pid`` is still the process that started at ``recorded`` (False when the number names another
    process now, or none)."""
    if recorded is None:
        return False
    now = started_like(pid, recorded)
    return now is not None and abs(now - recorded) < SAME_START


def now() -> float:
    """Seconds since boot now, in the unit of ``since_boot``."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def age(started: float) -> float:
    """Seconds since a process started at ``started`` (seconds since boot, or a wall-clock time of an earlier
    version's record)."""
    return (time.time() if started >= _EPOCH else now()) - started
