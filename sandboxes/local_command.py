"""One command of the local backend: started (confined or not), watched until it exits or times out, reported.

Kept apart from ``sandboxes/local.py``, which owns the sandboxes and prepares what a command gets (its
environment, cgroup and limits): this module only runs it. On timeout, cancellation or an error the command's
whole process tree is killed (and its cgroup, when it has one) before ``run_command`` returns or raises.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devart.core.contracts import SandboxSpec
from devart.core.errors import SandboxError
from devart.sandboxes import egress, volumes
from devart.sandboxes.base import ExecResult
from devart.sandboxes.bubblewrap import HELPER_PATH, Confinement, environment_script
from devart.sandboxes.layout import write_json
from devart.sandboxes.limits import JOIN_FAILED, JOIN_FAILED_MARK, CommandCgroup
from devart.sandboxes.processes import OutputBuffer, create_time, kill_group, memfd, tree_cpu

#: Seconds between CPU samples of a running command (and checks for a command whose output is held open).
POLL_INTERVAL = 0.2
#: Seconds to wait for a killed command's exit and last output before giving up on them.
KILL_GRACE = 5.0


@dataclass(frozen=True)
class Launch:
    """What one command runs with: where, what, and how the backend confines and limits it."""

    directory: Path  # the sandbox's directory
    workdir: Path  # where the command starts, inside the workspace
    spec: SandboxSpec
    command: Sequence[str]
    variables: dict[str, str]  # the command's whole environment
    prefix: list[str]  # the limits' wrapper (cgroup join or prlimit) the command runs under
    confinement: Confinement | None  # None runs the command unisolated
    seccomp: bytes | None  # the filter a setpriv-confined command gets
    socket: Path | None  # the package index proxy's socket, for ``network: packages``
    egress: tuple[str, str, str] | None  # slirp4netns, nsenter and ip (``egress.tools``)
    limits: str  # how commands are limited, as reported


async def run_command(launch: Launch, output: OutputBuffer, group: CommandCgroup | None,
                      timeout: float) -> ExecResult:
    """Start the command, supervise it until it exits or times out, and report what its limits saw."""
    link = _egress_link(launch)
    try:
        return await _supervise(launch, output, group, timeout, link)
    finally:
        if link is not None:
            await link.close()  # slirp4netns goes with the command, however that ended


async def _supervise(launch: Launch, output: OutputBuffer, group: CommandCgroup | None, timeout: float,
                     link: egress.EgressLink | None) -> ExecResult:
    """Run the command with ``link`` (if any) as its network; kill whatever is left of it before returning."""
    directory, workdir, spec, command, variables = (launch.directory, launch.workdir, launch.spec, launch.command,
                                                    launch.variables)
    fds: list[int] = []
    if launch.confinement is None:
        argv, child_env, stdin, cwd = [*launch.prefix, *command], variables, asyncio.subprocess.DEVNULL, workdir
    else:
        # Root-owned helpers get a bare environment and a root-owned cwd; the command's comes on stdin.
        stdin = memfd(environment_script(variables))
        fds.append(stdin)
        if launch.confinement.setpriv is not None and launch.seccomp is not None:
            fds.append(memfd(launch.seccomp))
        argv = [*launch.prefix, *launch.confinement.argv(directory / volumes.VOLUME, workdir, spec, command,
                                                         fds[1] if fds[1:] else None, launch.socket,
                                                         link.fds if link is not None else None)]
        child_env, cwd = {"PATH": HELPER_PATH}, directory
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=child_env, stdin=stdin, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            pass_fds=[*fds[1:], *(link.child_fds if link is not None else [])])
    except OSError as exc:
        raise SandboxError(f"could not start {argv[0]}: {exc}") from exc
    finally:
        for fd in fds:
            os.close(fd)
        if link is not None:
            link.spawned()
    assert proc.stdout is not None
    identity = create_time(proc.pid)
    record = directory / "pids" / f"{proc.pid}.json"
    reader = asyncio.create_task(output.pump(proc.stdout))
    waiter = asyncio.create_task(proc.wait())
    cpu, timed_out = 0.0, False

    def kill() -> None:
        kill_group(proc.pid, identity)
        if group is not None:
            group.kill()

    try:
        try:
            await asyncio.to_thread(write_json, record, {"pid": proc.pid, "create_time": identity})
        except FileNotFoundError:
            raise SandboxError(f"sandbox {directory.name!r} was torn down while a command started in it") from None
        if link is not None:  # the command waits in bubblewrap until its network is in place
            await link.start(egress.host_addresses())
        deadline = started + timeout
        while not waiter.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            watched = {waiter} if reader.done() else {waiter, reader}
            await asyncio.wait(watched, timeout=min(POLL_INTERVAL, remaining), return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and reader.exception() is not None:
                break  # on_output raised: stop the command and report the error below
            if proc.returncode is not None and not waiter.done():
                break  # exited, but a background child still holds the output open: it is killed below
            if group is None:
                cpu = max(cpu, tree_cpu(proc.pid))
        if timed_out and group is None:
            cpu = max(cpu, tree_cpu(proc.pid))
        kill()  # always: on success this reaps leftover background processes
        await asyncio.wait({waiter}, timeout=KILL_GRACE)
        if not reader.done():
            await asyncio.wait({reader}, timeout=KILL_GRACE)
        failure = reader.exception() if reader.done() else None
        if failure is not None:
            raise failure
    except BaseException:
        kill()
        await asyncio.wait({waiter}, timeout=KILL_GRACE)
        raise
    finally:
        reader.cancel()
        waiter.cancel()
        await asyncio.to_thread(record.unlink, missing_ok=True)
    exit_code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    if exit_code == JOIN_FAILED and JOIN_FAILED_MARK in output.text:
        raise SandboxError(f"could not place the command in its cgroup: {output.text.strip()[-500:]}",
                           retryable=True, reason="SandboxLimits")
    seen = group.outcome() if group is not None else None
    _, over = await asyncio.to_thread(volumes.used, directory, spec.disk_mb)
    return ExecResult(
        exit_code=exit_code, output=output.text, truncated=output.truncated, timed_out=timed_out,
        duration=round(time.monotonic() - started, 3),
        cpu_seconds=round(seen.cpu_seconds if seen is not None and seen.cpu_seconds is not None else cpu, 3),
        oom_killed=seen is not None and seen.oom_killed, pids_limited=seen is not None and seen.pids_limited,
        disk_exceeded=over, limits=launch.limits,
    )


def _egress_link(launch: Launch) -> egress.EgressLink | None:
    """A confined ``network: egress`` command's slirp4netns network; refused where slirp4netns is missing."""
    if launch.spec.network != "egress" or launch.confinement is None:
        return None  # unisolated commands share the host's network anyway
    if launch.egress is None:
        raise egress.missing()
    return egress.EgressLink(*launch.egress, userns=launch.confinement.setpriv is None)
