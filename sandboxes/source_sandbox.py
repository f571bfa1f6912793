"""Where a local source is read: in a bubblewrap sandbox of its own as the sandbox user, or as this user.

Run as root, devart would read a run's source with root's rights, and hand whatever it read to the sandbox:
``repo=/etc`` would give the stage ``/etc/shadow``, ``repo=/root`` root's files. So when devart runs as root and
bubblewrap is installed, the copy (``sandboxes/source_copy.py``, served by ``sandboxes/copy_service.py`` in a
sandbox from ``Jail.service_argv``, which binds neither folder) and a local git clone run as the sandbox user
(uid 65534) in a sandbox with no network and nothing of the host but the toolchain, read-only as a stage's own
sandbox sees it (``Confinement.plan``), the source folder read-only at ``SOURCE_MOUNT`` and the folder the
workspace is created in writable at ``DESTINATION_MOUNT``. bubblewrap, still root while it mounts, can bind a
source whose ancestors that user could not traverse (pytest's 0700 ``/tmp/pytest-of-root``); inside, only what
the sandbox user may read is readable. Fixed mount points keep the source from hiding the destination (a source
that holds the sandboxes' root) and the destination reachable whatever its ancestors' modes. Without root or
without bubblewrap the job runs directly, as this user, with the same file-type, size and cancellation rules.

git refuses a repository another user owns ("dubious ownership"), and a local clone drops command-line
configuration (``-c``) before it starts ``git-upload-pack`` in the source, so ``safe.directory = *`` comes in a
global configuration file bound into the sandbox. Trusting the source's own configuration is harmless there: git
runs as the sandbox user, without network, seeing only the source and the new workspace.

Every job runs in a session of its own with a deadline. A timeout, a cancellation or a destination grown past its
limit kills the whole process tree (under bubblewrap, its pid namespace), and ``run_job`` returns or raises only
once the job's output has closed, that is once nothing of it is left to write into the workspace.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from devart.core.errors import SandboxError
from devart.sandboxes import source_copy
from devart.sandboxes.bubblewrap import HELPER_PATH, SANDBOX_UID, Confinement, bubblewrap_available, interpreter_paths
from devart.sandboxes.processes import create_time, kill_group, memfd
from devart.sandboxes.seccomp import no_user_namespaces

#: Where a confined job sees the source folder (read-only) and the folder its workspace is created in.
SOURCE_MOUNT = Path("/source")
DESTINATION_MOUNT = Path("/destination")
#: The confined job's ``/tmp`` (its ``HOME``), and git's global configuration there.
TMP_MB = 16
GITCONFIG = Path("/tmp/.gitconfig")
_GITCONFIG_TEXT = b"[safe]\n\tdirectory = *\n"
#: Bytes of a job's stdout and of its stderr kept (a report, or git's error); the rest is read and dropped.
OUTPUT_LIMIT = 1 << 16
#: Seconds between checks of a destination that no tmpfs bounds, while a clone writes it.
WATCH_INTERVAL = 0.5
#: Seconds a killed job's processes get to be gone and close their output.
KILL_GRACE = 10.0


class TooBig(SandboxError):
    """The job's destination grew past its limit (or its disk is full); the caller says which limit."""


@dataclass(frozen=True)
class JobResult:
    """How a job ended: its exit status and what it printed (each stream cut at ``OUTPUT_LIMIT``)."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Placement:
    """Where a job sees the source and the workspace it creates: mount points when confined, else host paths."""

    source: Path
    destination: Path


@dataclass(frozen=True)
class Jail:
    """bubblewrap and setpriv, when devart runs as root with bubblewrap installed."""

    bwrap: str
    setpriv: str

    @classmethod
    def detect(cls, destination: Path) -> Jail | None:
        """The tools, or None when the job filling ``destination`` must run as this user.

        A job runs as the sandbox user when devart runs as root with bubblewrap, and the folder the workspace is
        created in belongs to that user: the volume of a sandbox whose commands run as that user. A volume that
        bubblewrap maps onto this user instead (its commands then run as this user, in a user namespace) is
        filled as this user too.
        """
        bwrap, setpriv = bubblewrap_available(), shutil.which("setpriv", path=HELPER_PATH)
        if os.geteuid() != 0 or bwrap is None or setpriv is None:
            return None
        try:
            owner = destination.parent.stat().st_uid
        except OSError:
            return None  # no folder to create the workspace in: the copy says so
        return cls(bwrap=bwrap, setpriv=setpriv) if owner == SANDBOX_UID else None

    def argv(self, source: Path, destination: Path, command: Sequence[str], *, also: Sequence[Path] = (),
             hide: Sequence[Path] = (), fds: tuple[int, int | None]) -> list[str]:
        """bubblewrap's command line running ``command`` as the sandbox user.

        Args:
            source: bound read-only at ``SOURCE_MOUNT``.
            destination: the workspace to create; its parent is bound writable at ``DESTINATION_MOUNT``.
            also: folders bound read-only at their own paths (a worktree's git folder).
            hide: the sandboxes' root and the state folder, covered should a toolchain folder hold them.
            fds: inherited descriptors holding git's configuration and the seccomp filter (or None).
        """
        hidden = [*hide, destination.parent]
        plan = Confinement.plan(self.bwrap, hidden[0], self.setpriv, interpreter_paths(), hide=hidden[1:])
        return self._command(plan, [
            (SOURCE_MOUNT, ["--ro-bind", str(source), str(SOURCE_MOUNT)]),
            (DESTINATION_MOUNT, ["--bind", str(destination.parent), str(DESTINATION_MOUNT)]),
            *((path, ["--ro-bind", str(path), str(path)]) for path in also),
            # bubblewrap would give the folders it makes down to those the host's modes: make them traversable
            *((folder, ["--perms", "0755", "--dir", str(folder)]) for folder in dict.fromkeys(
                folder for path in also for folder in path.parents
                if folder not in (Path("/"), Path("/tmp")) and not _inside(folder, plan.binds))),
            (GITCONFIG, ["--perms", "0644", "--ro-bind-data", str(fds[0]), str(GITCONFIG)]),
        ], command, fds[1])

    def service_argv(self, command: Sequence[str], *, hide: Sequence[Path], seccomp_fd: int | None) -> list[str]:
        """bubblewrap's command line running a service (``sandboxes/copy_service.py``) as the sandbox user, with
        nothing of the host but the toolchain: it reaches a source and a workspace only through the descriptors
        each request brings. ``hide`` as for ``argv`` (at least one folder)."""
        plan = Confinement.plan(self.bwrap, hide[0], self.setpriv, interpreter_paths(), hide=hide[1:])
        return self._command(plan, [], command, seccomp_fd)

    def _command(self, plan: Confinement, mounts: list[tuple[Path, list[str]]], command: Sequence[str],
                 seccomp_fd: int | None) -> list[str]:
        mounts = [
            *((path, ["--ro-bind", str(path), str(path)]) for path in plan.binds),
            *((path, ["--symlink", target, str(path)]) for target, path in plan.links),
            *((path, ["--perms", "0755", "--tmpfs", str(path)]) for path in plan.hidden),
            (Path("/tmp"), ["--perms", "1777", "--size", str(TMP_MB << 20), "--tmpfs", "/tmp"]),
            (Path("/dev"), ["--dev", "/dev"]),
            (Path("/proc"), ["--proc", "/proc"]),
            *mounts,
        ]
        mounts.sort(key=lambda item: len(item[0].parts))  # stable: a mount comes after those holding it
        environment = {"PATH": HELPER_PATH, "HOME": "/tmp", "LC_ALL": "C", "GIT_CONFIG_GLOBAL": str(GITCONFIG),
                       "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
        argv = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid",
                "--unshare-uts", "--unshare-net", "--unshare-cgroup-try", "--hostname", "sandbox", "--clearenv"]
        for name, value in environment.items():
            argv += ["--setenv", name, value]
        for _, operation in mounts:
            argv += operation
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        return [*argv, "--remount-ro", "/", "--chdir", "/", "--", self.setpriv, f"--reuid={SANDBOX_UID}",
                f"--regid={SANDBOX_UID}", "--clear-groups", "--no-new-privs", "--bounding-set=-all",
                "--inh-caps=-all", "--", *command]


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)


def placement(source: Path, destination: Path, jail: Jail | None) -> Placement:
    """Where a job run in ``jail`` (or directly, for None) sees ``source`` and ``destination``."""
    if jail is None:
        return Placement(source=source, destination=destination)
    return Placement(source=SOURCE_MOUNT, destination=DESTINATION_MOUNT / destination.name)


async def run_confined(jail: Jail | None, source: Path, destination: Path, command: Sequence[str], *, what: str,
                       timeout: float, direct_env: dict[str, str], also: Sequence[Path] = (),
                       hide: Sequence[Path] = (), over: Callable[[], bool] | None = None) -> JobResult:
    """Run ``command`` (built for ``placement(source, destination, jail)``) in ``jail``, or directly without one."""
    if jail is None:
        return await run_job(list(command), what=what, timeout=timeout, env=direct_env, over=over)
    seccomp = no_user_namespaces()
    fds = (memfd(_GITCONFIG_TEXT), memfd(seccomp) if seccomp is not None else None)
    try:
        argv = jail.argv(source, destination, command, also=also, hide=hide, fds=fds)
        return await run_job(argv, what=what, timeout=timeout, env={"PATH": HELPER_PATH}, over=over,
                             pass_fds=[fd for fd in fds if fd is not None])
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)


async def run_job(argv: list[str], *, what: str, timeout: float, env: dict[str, str],
                  over: Callable[[], bool] | None = None, pass_fds: Sequence[int] = (),
                  cwd: Path | str = "/") -> JobResult:
    """Run ``argv`` to its end, killing it (and waiting for it to be gone) on timeout, cancellation or ``over()``.

    Raises:
        SandboxError: it could not start, or it took longer than ``timeout`` seconds ("took longer than").
        TooBig: ``over``, polled every ``WATCH_INTERVAL`` seconds, said the destination is past its limit.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, pass_fds=pass_fds)
    except FileNotFoundError:
        raise SandboxError(f"{argv[0]} is not installed: install it to provision from a local source or a git "
                           "repository (apt-get install -y git)") from None
    assert proc.stdout is not None and proc.stderr is not None
    identity = create_time(proc.pid)
    readers = (asyncio.create_task(_read(proc.stdout)), asyncio.create_task(_read(proc.stderr)))
    waiter = asyncio.create_task(proc.wait())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not waiter.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SandboxError(f"{what} took longer than {timeout:g}s")
            await asyncio.wait({waiter}, timeout=min(WATCH_INTERVAL, remaining) if over else remaining)
            if over is not None and await asyncio.to_thread(over):  # once more after the end: a quick job
                raise TooBig(f"{what} outgrew its limit")
    finally:
        kill_group(proc.pid, identity)  # always: on success this reaps anything left behind
        await asyncio.wait([waiter, *readers], timeout=KILL_GRACE)
        for task in (waiter, *readers):
            task.cancel()
    out, err = (task.result() if task.done() and not task.cancelled() else b"" for task in readers)
    return JobResult(returncode=proc.returncode if proc.returncode is not None else -9,
                     stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"))


async def _read(stream: asyncio.StreamReader) -> bytes:
    """Read ``stream`` to its end, keeping its first ``OUTPUT_LIMIT`` bytes."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk[:max(OUTPUT_LIMIT - len(kept), 0)]
    return bytes(kept)


@lru_cache(maxsize=1)
def copier_source() -> str:
    """The copier's source: passed with ``-c``, as the module's folder may be out of the sandbox user's reach."""
    return Path(source_copy.__file__).read_text()
