"""Resource limits of local sandbox commands: a cgroup per command (v2 or v1) or, failing that, ``prlimit``.

With cgroups, each command gets ``<hierarchy>/devart/<sandbox id>+<token>`` (on v1, one such folder in each
controller's hierarchy) holding its memory (swap included), CPU quota and process-count limits. The command's
first process, a ``/bin/sh`` started by devart, writes its own pid into the cgroup and only then ``exec``s the
sandbox, so nothing untrusted ever runs outside it. The cgroup also tells what happened (OOM kills, refused
forks, exact CPU time) and lets devart kill every process in it, however far it wandered from the process tree.

Without a writable hierarchy (a non-root operator, a locked-down container), ``prlimit`` sets rlimits instead:
``RLIMIT_DATA`` (heap and anonymous memory, per process), ``RLIMIT_NPROC`` (counted per uid across every
sandbox, and ignored for root, so an unisolated root command has no process limit) and no CPU limit; an out of
memory allocation then fails inside the program instead of being reported as ``oom_killed``.

Disk: every mechanism caps the size of any one file at ``disk_mb`` (``RLIMIT_FSIZE``, SIGXFSZ past it). The
sandbox's total is the size of its volume (``sandboxes/volumes.py``): a tmpfs of ``disk_mb`` when devart runs as
root, so a write past it fails with ENOSPC; otherwise it is only measured after each command, which reports but
cannot prevent a burst.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from devart.core.contracts import SandboxSpec

#: Folder created in each cgroup hierarchy to hold devart's per-command cgroups.
CGROUP_PARENT = "devart"
#: Scheduling period for the CPU quota: ``spec.cpu`` cores means ``cpu * period`` of CPU time per period.
CFS_PERIOD_US = 100_000
#: v1 controllers devart cannot work without, and those it uses when mounted (quota, exact CPU time).
V1_REQUIRED = ("memory", "pids")
V1_OPTIONAL = ("cpu", "cpuacct")
#: Seconds to wait for the processes of a killed cgroup to be gone before removing it fails.
REMOVE_DEADLINE = 5.0
#: Exit code of the wrapper when it cannot join the cgroup (the command never ran).
JOIN_FAILED = 125
JOIN_FAILED_MARK = "devart-limits: cannot join cgroup"
#: Runs before anything untrusted: joins every cgroup listed before ``--``, caps file sizes, then execs the rest.
_JOIN_SCRIPT = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || { echo "' + JOIN_FAILED_MARK + ' $1" >&2; exit '
    + str(JOIN_FAILED) + '; }; shift; done; shift; ulimit -f "$1" || exit ' + str(JOIN_FAILED) + '; shift; exec "$@"'
)


@dataclass(frozen=True)
class CgroupLayout:
    """Where devart may create cgroups: ``parents`` maps a v1 controller (or "" on v2) to its devart folder."""

    version: int
    parents: dict[str, Path]

    @property
    def mechanism(self) -> str:
        return f"cgroup-v{self.version}"

    def folders(self, name: str) -> list[Path]:
        """The cgroup folders of ``name``, one per mounted hierarchy (cpu and cpuacct may share one)."""
        return sorted({parent / name for parent in self.parents.values()})


@dataclass
class Outcome:
    """What a cgroup saw of its command."""

    oom_killed: bool = False
    pids_limited: bool = False
    cpu_seconds: float | None = None


@dataclass
class CommandCgroup:
    """One command's cgroup: created with its limits, joined by the command, read, killed and removed."""

    layout: CgroupLayout
    name: str
    folders: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, layout: CgroupLayout, name: str, spec: SandboxSpec) -> CommandCgroup:
        """Create the cgroup and write its limits. cgroupfs writes are in-memory, so this runs inline."""
        group = cls(layout, name)
        try:
            for folder in layout.folders(name):
                folder.mkdir()
                group.folders.append(folder)
            memory = spec.memory_mb << 20
            if layout.version == 2:
                folder = group.folders[0]
                _write(folder / "memory.max", memory)
                _write(folder / "memory.swap.max", 0, optional=True)
                _write(folder / "pids.max", spec.pids)
                _write(folder / "cpu.max", f"{max(int(spec.cpu * CFS_PERIOD_US), 1000)} {CFS_PERIOD_US}",
                       optional=True)
            else:
                mem, pids = group.folder("memory"), group.folder("pids")
                _write(mem / "memory.limit_in_bytes", memory)
                _write(mem / "memory.memsw.limit_in_bytes", memory, optional=True)  # no swapping past the limit
                _write(pids / "pids.max", spec.pids)
                if "cpu" in layout.parents:
                    cpu = group.folder("cpu")
                    _write(cpu / "cpu.cfs_period_us", CFS_PERIOD_US)
                    _write(cpu / "cpu.cfs_quota_us", max(int(spec.cpu * CFS_PERIOD_US), 1000))
        except BaseException:
            for folder in group.folders:
                with suppress(OSError):
                    folder.rmdir()
            raise
        return group

    def folder(self, controller: str) -> Path:
        return self.layout.parents["" if self.layout.version == 2 else controller] / self.name

    def wrapper(self, file_size: int) -> list[str]:
        """The argv prefix that joins this cgroup and caps file sizes (in 512-byte blocks) before the command."""
        procs = [str(folder / "cgroup.procs") for folder in self.folders]
        return ["/bin/sh", "-c", _JOIN_SCRIPT, "devart-limits", *procs, "--", str(max(file_size // 512, 1))]

    def outcome(self) -> Outcome:
        """OOM kills, refused forks and CPU time so far (missing files, e.g. after a teardown, read as zero)."""
        if self.layout.version == 2:
            folder = self.folders[0]
            usage = _counters(folder / "cpu.stat").get("usage_usec")
            return Outcome(oom_killed=_counters(folder / "memory.events").get("oom_kill", 0) > 0,
                           pids_limited=_counters(folder / "pids.events").get("max", 0) > 0,
                           cpu_seconds=usage / 1e6 if usage is not None else None)
        memory = self.folder("memory")
        oom = _counters(memory / "memory.oom_control")
        # Kernels before 4.13 lack the oom_kill counter: a hit limit is the closest sign there.
        killed = oom["oom_kill"] > 0 if "oom_kill" in oom else _read_int(memory / "memory.failcnt") > 0
        cpu = None
        if "cpuacct" in self.layout.parents:
            cpu = _read_int(self.folder("cpuacct") / "cpuacct.usage") / 1e9
        return Outcome(oom_killed=killed, pids_limited=_counters(self.folder("pids") / "pids.events").get("max", 0) > 0,
                       cpu_seconds=cpu)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, including those that left the command's process tree."""
        kill_folder(self.folders[0], self.layout.version)

    async def remove(self) -> None:
        """Kill what is left and remove the cgroup, waiting (with a deadline) for dying processes to go."""
        await remove_folders(self.folders, self.layout.version)


def kill_folder(folder: Path, version: int) -> None:
    """Kill every process in one cgroup folder; forks racing the kill are caught by the next pass."""
    if version == 2 and (folder / "cgroup.kill").exists():
        with suppress(OSError):
            _write(folder / "cgroup.kill", 1)
            return
    for _ in range(100):  # the pids limit bounds how many can appear between passes
        try:
            pids = [int(line) for line in (folder / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


async def remove_folders(folders: list[Path], version: int) -> None:
    """Kill and remove cgroup folders; missing ones are fine (another process removed them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REMOVE_DEADLINE
    for folder in folders:
        while True:
            kill_folder(folder, version)
            try:
                folder.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while killed processes are still exiting
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)


async def remove_sandbox_cgroups(layout: CgroupLayout | None, sandbox_id: str) -> None:
    """Kill and remove every cgroup of one sandbox (its commands may run in other processes)."""
    if layout is None:
        return
    folders = [folder for parent in set(layout.parents.values()) for folder in parent.glob(f"{sandbox_id}+*")]
    await remove_folders(sorted(folders), layout.version)


def prlimit_argv(prlimit: str, spec: SandboxSpec) -> list[str]:
    """The rlimit fallback, approximate by nature (see the module docstring)."""
    return [prlimit, f"--nproc={spec.pids}", f"--data={spec.memory_mb << 20}", f"--fsize={spec.disk_mb << 20}",
            "--"]


def detect(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupLayout | None:
    """The cgroup hierarchy devart can use here: v2 if it has the controllers, else v1, else None (prlimit)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in lines:
        fields = line.split(" - ", 1)
        if len(fields) != 2:
            continue
        mount_point = Path(fields[0].split()[4])
        fstype, _source, options = (fields[1].split() + ["", "", ""])[:3]
        if fstype == "cgroup2":
            v2 = v2 or mount_point
        elif fstype == "cgroup":
            for controller in options.split(","):
                if controller in V1_REQUIRED + V1_OPTIONAL:
                    v1.setdefault(controller, mount_point)
    if v2 is not None and (layout := _prepare_v2(v2)) is not None:
        return layout
    if not all(name in v1 for name in V1_REQUIRED):
        return None
    parents: dict[str, Path] = {}
    for controller, mount_point in v1.items():
        parent = mount_point / CGROUP_PARENT
        try:
            parent.mkdir(exist_ok=True)
        except OSError:
            if controller in V1_REQUIRED:
                return None
            continue
        if os.access(parent / "cgroup.procs", os.W_OK):
            parents[controller] = parent
    return CgroupLayout(1, parents) if all(name in parents for name in V1_REQUIRED) else None


def _prepare_v2(mount_point: Path) -> CgroupLayout | None:
    """Enable memory, pids (and cpu) for devart's folder; refused in a cgroup namespace holding processes."""
    try:
        available = set((mount_point / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= available:
            return None
        wanted = " ".join(f"+{name}" for name in ("memory", "pids", "cpu") if name in available)
        parent = mount_point / CGROUP_PARENT
        _write(mount_point / "cgroup.subtree_control", wanted)
        parent.mkdir(exist_ok=True)
        _write(parent / "cgroup.subtree_control", wanted)
    except OSError:
        return None
    return CgroupLayout(2, {"": parent})


def _write(path: Path, value: object, *, optional: bool = False) -> None:
    """Write one cgroup setting; an ``optional`` one the kernel lacks (e.g. swap accounting off) is skipped."""
    try:
        with open(path, "w") as file:
            file.write(str(value))
    except OSError:
        if not optional:
            raise


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _counters(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``name value`` per line) as a dict; missing or unreadable reads as empty."""
    counters: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return counters
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            counters[parts[0]] = int(parts[1])
    return counters
