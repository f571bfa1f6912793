"""Running one command in a sandbox pod through the API server's exec stream.

Closing an exec stream does not stop the process it started (the kubelet leaves it running), so the limits are
enforced inside the container: every command runs under a small ``sh`` wrapper that starts it with
``timeout -s KILL`` (GNU ``timeout`` makes itself a process-group leader and kills the whole group), records
that group's id in a pid file so a cancellation can kill it from a second exec, merges the command's stderr
into stdout (one ordered stream, as the local backend gives) and finally reports on its own stderr the
container's CPU time and OOM-kill counter, read from its cgroup, before and after the command.

The wrapper needs ``sh`` and ``timeout`` in the image. With busybox's ``timeout`` (Alpine) only the command itself,
not its children, is killed on timeout or cancellation.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devart.core.errors import SandboxError

STDOUT, STDERR, ERROR = 1, 2, 3  # the channels of Kubernetes' exec protocol
#: Seconds between checks for cancellation or the deadline while a command streams output.
POLL_INTERVAL = 0.2
#: Seconds past the command's timeout before the client gives up on the stream (the container kills it first).
STREAM_GRACE = 10.0
#: The wrapper's own report on stderr, after the command: ``devart:usage <cpu0> <oom0> <cpu1> <oom1>``.
USAGE_MARK = b"devart:usage "
#: Arguments: pid file, timeout in whole seconds, working directory, then the command.
WRAPPER = r"""pidfile=$1 limit=$2 dir=$3; shift 3
usage() { c=- o=-
  if [ -r /sys/fs/cgroup/cpu.stat ]; then
    while read -r k v; do [ "$k" = usage_usec ] && c=$v; done < /sys/fs/cgroup/cpu.stat
  elif [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then
    read -r c < /sys/fs/cgroup/cpuacct/cpuacct.usage; c=$((c / 1000))
  fi
  for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
    if [ -r "$f" ]; then while read -r k v; do [ "$k" = oom_kill ] && o=$v; done < "$f"; fi
  done
  echo "$c $o"; }
cd "$dir" || exit 126
before=$(usage)
timeout -s KILL "$limit" "$@" </dev/null 2>&1 &
echo $! > "$pidfile"
wait $!
rc=$?
rm -f "$pidfile"
echo "devart:usage $before $(usage)" >&2
exit $rc"""
#: Kills the process group recorded in the pid file ``$1`` (and the process itself, should it lead none).
KILL = 'p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && { kill -KILL -"$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; }; ' \
       'rm -f "$1"; true'


def exec_argv(command: Sequence[str], env: Mapping[str, str], *, timeout: float, workdir: str,
              pidfile: str) -> list[str]:
    """The argv sent to the API: ``env NAME=VALUE… sh -c WRAPPER devart <pidfile> <secs> <workdir> command…``.

    ``env`` takes the variables as separate arguments, so no value is ever parsed by a shell.
    """
    if not command:
        raise SandboxError("cannot run an empty command")
    assignments = [f"{name}={value}" for name, value in env.items()]
    seconds = max(1, math.ceil(timeout))
    return ["env", *assignments, "sh", "-c", WRAPPER, "devart", pidfile, str(seconds), workdir, *command]


def kill_argv(pidfile: str) -> list[str]:
    return ["sh", "-c", KILL, "devart", pidfile]


def parse_status(raw: bytes) -> tuple[int | None, str]:
    """The exit code in the error channel's ``Status`` (None when there is none) and its message."""
    if not raw.strip():
        return None, ""
    try:
        status = json.loads(raw)
    except ValueError:
        return None, raw.decode(errors="replace")
    if status.get("status") == "Success":
        return 0, ""
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", "")), str(status.get("message", ""))
            except ValueError:
                break
    return None, str(status.get("message") or raw.decode(errors="replace"))


def parse_usage(stderr: bytes) -> tuple[bytes, float, bool | None]:
    """Split the wrapper's report off ``stderr``: (the rest, CPU seconds used, whether the OOM killer struck).

    The last is None when the container's cgroup shows no OOM counter (or the wrapper didn't report).
    """
    head, mark, tail = stderr.rpartition(USAGE_MARK)
    if not mark:
        return stderr, 0.0, None
    line, _, rest = tail.partition(b"\n")
    fields = line.split()
    numbers = [int(f) if f.isdigit() else None for f in fields[:4]] + [None] * (4 - len(fields[:4]))
    cpu0, oom0, cpu1, oom1 = numbers
    cpu = (cpu1 - cpu0) / 1e6 if cpu0 is not None and cpu1 is not None and cpu1 >= cpu0 else 0.0
    oom = None if oom0 is None or oom1 is None else oom1 > oom0
    return head + rest, round(cpu, 3), oom


@dataclass
class Streamed:
    """How an exec stream ended: the raw ``Status``, the wrapper's stderr, and whether the client stopped it."""

    status: bytes = b""
    stderr: bytes = b""
    stopped: bool = False
    expired: bool = False


def pump(ws: Any, *, deadline: float, stop: threading.Event, emit: Callable[[bytes], None]) -> Streamed:
    """Read an exec stream (a ``WSClient`` in binary mode) until it closes, ``stop`` is set or ``deadline`` passes.

    Blocking: runs in a worker thread. stdout goes to ``emit`` as it arrives; stderr (only the wrapper's, the
    command's is merged into stdout) and the status are collected. The stream is always closed on return.
    """
    result = Streamed()
    try:
        while ws.is_open():
            if stop.is_set():
                result.stopped = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.expired = True
                break
            try:
                ws.update(timeout=min(POLL_INTERVAL, remaining))
            except Exception:  # the connection dropped: whatever arrived is all there is
                break
            _drain(ws, result, emit)
        _drain(ws, result, emit)
    finally:
        ws.close()
    return result


def _drain(ws: Any, result: Streamed, emit: Callable[[bytes], None]) -> None:
    if out := ws.read_channel(STDOUT):
        emit(out)
    result.stderr += ws.read_channel(STDERR)
    result.status += ws.read_channel(ERROR)
