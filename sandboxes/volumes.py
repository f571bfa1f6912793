"""A local sandbox's volume: the one host folder its commands may write to, holding ``workspace/`` and ``home/``.

Run as root, devart mounts a tmpfs of ``disk_mb`` at ``<root>/<id>/volume`` for each sandbox, owned by the
sandbox user, so the disk limit is enforced by the kernel: a write past it fails inside the command with ENOSPC,
and nothing reaches the host's disk. The volume lives in memory: what a command writes there is charged to that
command's memory cgroup (``memory_mb`` bounds it too), and the host needs the RAM for it. ``meta.json`` and
``pids/`` stay outside it, on the host's disk, where a sweeper finds them.

Without root nothing can be mounted for the host (unprivileged bubblewrap mounts only inside the sandbox's own
namespace), so the volume is a plain folder and the limit is only measured after each command: a burst beyond it
is reported (``disk_exceeded``), not prevented.

Removal unmounts first, lazily when a process still holds the volume, so that removing the sandbox's folder
never descends into a mounted filesystem; a teardown also unmounts what a crashed agent left mounted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from devart.sandboxes.layout import disk_usage

#: The volume's folder inside a sandbox's directory.
VOLUME = "volume"
#: The source name of every volume's tmpfs in the mount table, which tells devart's volumes from other mounts.
SOURCE = "devart-sandbox"
#: Less free space than this and the volume counts as full: a write was probably refused.
FULL_MARGIN = 1 << 20
#: Bytes per inode the volume allows on average: one page, what a small file takes anyway. It bounds the kernel
#: memory a command can spend on empty files, which the size limit does not count.
BYTES_PER_INODE = 4096
_MS_NOSUID, _MS_NODEV = 0x2, 0x4
_MNT_DETACH, _UMOUNT_NOFOLLOW = 0x2, 0x8
#: Passes over the mount table before giving up on mounts that keep coming back.
_UNMOUNT_PASSES = 8


def workspace(directory: Path) -> Path:
    """Where the checkout goes (created by ``materialize``)."""
    return directory / VOLUME / "workspace"


def home(directory: Path) -> Path:
    """The command's ``HOME``."""
    return directory / VOLUME / "home"


def create(directory: Path, size_mb: int, uid: int) -> None:
    """Create the volume with an empty ``home/``; as root, a tmpfs of ``size_mb`` owned by ``uid`` (mode 0700).

    ``uid`` owns the volume's root so that a checkout made as that user can create ``workspace/`` in it.
    """
    path = directory / VOLUME
    path.mkdir(mode=0o700)
    if os.geteuid() == 0:
        options = (f"size={size_mb}m,nr_inodes={max(size_mb * (1 << 20) // BYTES_PER_INODE, 1024)},mode=0700,"
                   f"uid={uid},gid={uid}")
        _call(_libc().mount, SOURCE.encode(), os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV,
              options.encode(), what=f"mounting the sandbox's volume at {path}")
    home(directory).mkdir(mode=0o700)


def used(directory: Path, size_mb: int) -> tuple[int, bool]:
    """Bytes used in the volume, and whether it is over its limit (a mounted volume: whether it is full)."""
    path = directory / VOLUME
    if os.path.ismount(path):
        info = os.statvfs(path)
        taken = (info.f_blocks - info.f_bfree) * info.f_frsize
        return taken, info.f_bavail * info.f_frsize < FULL_MARGIN
    taken = disk_usage([workspace(directory), home(directory)])
    return taken, taken > size_mb << 20


def release(directory: Path) -> None:
    """Unmount every filesystem mounted at or below ``directory`` (deepest first; lazily when busy).

    Raises OSError when one cannot be unmounted, so that the caller does not remove a folder that still has a
    filesystem mounted inside it.
    """
    for _ in range(_UNMOUNT_PASSES):
        mounted = mounts_under(directory)
        if not mounted:
            return
        for point in sorted(mounted, key=lambda p: len(p.parts), reverse=True):
            unmount(point)
    raise OSError(errno.EBUSY, f"filesystems stay mounted under {directory}: {mounts_under(directory)}")


def unmount(point: Path) -> None:
    """Unmount ``point``; detach it lazily if a process still uses it. Gone already is fine."""
    umount2 = _libc().umount2
    try:
        _call(umount2, os.fsencode(point), _UMOUNT_NOFOLLOW, what=f"unmounting {point}")
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
            return
        if exc.errno != errno.EBUSY:
            raise
        _call(umount2, os.fsencode(point), _UMOUNT_NOFOLLOW | _MNT_DETACH, what=f"detaching {point}")


def release_orphans(under: Path = Path("/")) -> list[Path]:
    """Unmount the volumes below ``under`` whose sandbox is gone: its folder was deleted around the mounted volume
    (``meta.json`` is written before the volume is mounted and removed only after it is unmounted). The volumes
    unmounted.

    A sandbox that is torn down is unmounted first; this catches the others, say a test's temporary folder
    removed while its sandbox still stood, which would otherwise stay mounted (and unremovable) for good.
    """
    orphans = [point for point, source in _mounts(under) if source == SOURCE and point.name == VOLUME
               and not (point.parent / "meta.json").exists()]
    for point in orphans:
        unmount(point)
    return orphans


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` in this process's mount namespace."""
    return [point for point, _source in _mounts(directory)]


def _mounts(under: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[tuple[Path, str]]:
    """The mount points at or below ``under`` in this process's mount namespace, with their sources."""
    top = str(under)
    prefix = top.rstrip("/") + "/"
    found = []
    for line in mountinfo.read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        point, described = fields.split(" ", 5), rest.split(" ", 2)
        if len(point) > 4 and len(described) > 1:
            path = _unescape(point[4])
            if path == top or path.startswith(prefix):
                found.append((Path(path), _unescape(described[1])))
    return found


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash come as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    """The C library's ``mount`` and ``umount2``: a system call each, where the tools would cost a process."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _call(function: Callable[..., int], *args: object, what: str) -> None:
    if function(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
