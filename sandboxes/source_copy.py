"""Copy a local working tree into a new workspace: regular files, folders and links only, within a size limit.

Run as ``python -I -S -c <this file's source> SOURCE DESTINATION OPTIONS`` (OPTIONS from ``encode_options``:
``limit``, ``ignore``, ``ignore_top``, ``exclude``), usually as the sandbox user in a bubblewrap sandbox of its own
(``sandboxes/source_sandbox.py``), so it reads exactly what that user may read. It uses only the standard library,
so the agent's Python runs it whatever the sandbox can import, and a cancelled provision simply kills it.

It starts for every local stage, so it imports only modules the interpreter has built in or frozen: ``json``,
``fnmatch`` and ``typing`` would pull in ``re``, ``enum`` and ``functools``, which took about 19 ms of a 68 ms copy
(measured in the jail). The options come as ``marshal`` data the worker wrote, the report goes out as an
``ascii()`` literal the worker reads with ``ast.literal_eval`` (``read_report``: literals only, whatever the copier
printed), and ignore
patterns that are a plain name or ``*`` and a suffix are matched without ``fnmatch``, which is imported only for
any other pattern.

What it copies and why:

- Regular files, folders and symbolic links, the link itself and never its target (a link to ``/etc/shadow``
  stays a link). Devices, FIFOs and sockets are counted and skipped, never opened: reading ``/dev/zero`` never
  ends, and opening a FIFO blocks. A file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again once
  open, so one swapped for a link or a FIFO meanwhile is skipped too.
- Files and folders it may not read are skipped, counted, and the first few named in the report. A working tree
  often holds a file that is not the project's and not meant for the sandbox (a root-owned ``.env``, a 0700
  cache); failing would push operators to make such files world-readable. The source folder itself follows the
  same rule: one the sandbox user may not read (``/root``, pytest's 0700 ``tmp_path``) gives an empty workspace,
  reported as one unreadable entry, ``.``. Nothing is learnt of its content, not even whether it is empty.
- Every file, folder and link counts at least one 4 KiB block, as on the sandbox's tmpfs, and files count the
  bytes actually read (a file may grow while it is copied). Past ``limit`` bytes, or when the disk is full, the
  copy stops with ``OVER_LIMIT``.
- Permission bits and modification times are kept (without set-user-id and set-group-id bits).

On success it prints its report (``files``, ``bytes``, ``unreadable``, ``unreadable_paths``, ``special``), which
the worker reads with ``read_report``.
"""

from __future__ import annotations

import errno
import marshal
import os
import stat
import sys

#: Exit statuses the caller tells apart (anything else is an unexpected failure, its message on stderr).
OVER_LIMIT = 3
#: The unit every entry is counted in: a page of the sandbox's tmpfs.
BLOCK = 4096
#: Bytes read and written at a time.
CHUNK = 1 << 20
#: Unreadable paths named in the report (the count covers them all).
NAMED = 10
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OverLimit(Exception):
    """The copy would take more than its limit, or the destination is full."""


class Copy:
    """One copy's options and what it has copied and skipped so far."""

    def __init__(self, limit: int = 0, ignore: list[str] | None = None, ignore_top: list[str] | None = None,
                 exclude: str = "") -> None:
        self.limit = int(limit or 0)
        self.names, self.suffixes, self.patterns = _patterns([str(p) for p in ignore or []])
        self.ignore_top = {str(n) for n in ignore_top or []}
        self.exclude = str(exclude or "")
        self.used = self.files = self.unreadable = self.special = 0
        self.unreadable_paths: list[str] = []
        self.folders: list[tuple[str, os.stat_result]] = []

    def charge(self, size: int) -> int:
        """Count an entry of ``size`` bytes (at least a block, in whole blocks); returns what was counted."""
        counted = max(BLOCK, -(-size // BLOCK) * BLOCK)
        self.grow(counted)
        return counted

    def grow(self, size: int) -> None:
        """Count ``size`` more bytes, stopping the copy past the limit."""
        self.used += size
        if self.limit and self.used > self.limit:
            raise OverLimit

    def skip_unreadable(self, relative: str) -> None:
        self.unreadable += 1
        if len(self.unreadable_paths) < NAMED:
            self.unreadable_paths.append(relative)

    def skipped(self, parent: str, name: str) -> bool:
        relative = os.path.join(parent, name) if parent else name
        return (name in self.names or name.endswith(self.suffixes) or _matches(name, self.patterns)
                or (not parent and name in self.ignore_top) or relative == self.exclude)

    def run(self, source: str, destination: str) -> None:
        top = os.stat(source)
        os.mkdir(destination, 0o700)
        try:
            entries = sorted(os.listdir(source))
        except PermissionError:
            self.skip_unreadable(".")
            return
        self.folders.append((destination, top))
        pending = [("", entries)]
        while pending:
            parent, names = pending.pop()
            for name in names:
                if not self.skipped(parent, name):
                    self.entry(source, destination, os.path.join(parent, name) if parent else name, pending)
        for path, info in reversed(self.folders):  # last: a read-only folder must first be filled
            os.chmod(path, stat.S_IMODE(info.st_mode) & 0o1777)
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))

    def entry(self, source: str, destination: str, relative: str, pending: list[tuple[str, list[str]]]) -> None:
        path, target = os.path.join(source, relative), os.path.join(destination, relative)
        try:
            info = os.lstat(path)
        except OSError:
            self.skip_unreadable(relative)
            return
        if stat.S_ISDIR(info.st_mode):
            try:
                names = sorted(os.listdir(path))
            except OSError:
                self.skip_unreadable(relative)
                return
            self.charge(0)
            os.mkdir(target, 0o700)
            self.folders.append((target, info))
            pending.append((relative, names))
        elif stat.S_ISLNK(info.st_mode):
            link = os.readlink(path)
            self.charge(len(link))
            os.symlink(link, target)
        elif stat.S_ISREG(info.st_mode):
            self.file(path, target, relative)
        else:
            self.special += 1

    def file(self, path: str, target: str, relative: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            self.skip_unreadable(relative)  # unreadable, or swapped for a link since it was listed
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self.special += 1
                return
            counted = self.charge(info.st_size)
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                copied = 0
                while data := os.read(fd, CHUNK):
                    copied += len(data)
                    if copied > counted:  # it grew since it was measured
                        self.grow(copied - counted)
                        counted = copied
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view):]
                os.fchmod(out, stat.S_IMODE(info.st_mode) & 0o1777)
                os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns))
            finally:
                os.close(out)
            self.files += 1
        finally:
            os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: source_copy SOURCE DESTINATION OPTIONS\n")
        return 2
    copy = Copy(**marshal.loads(bytes.fromhex(argv[2])))
    try:
        copy.run(argv[0], argv[1])
    except OverLimit:
        sys.stderr.write(f"over the limit after {copy.used} bytes\n")
        return OVER_LIMIT
    except OSError as exc:
        if exc.errno in _FULL:
            sys.stderr.write(f"the destination is full after {copy.used} bytes\n")
            return OVER_LIMIT
        sys.stderr.write(f"{exc.strerror}: {exc.filename}\n" if exc.filename else f"{exc}\n")
        return 1
    sys.stdout.write(ascii({"files": copy.files, "bytes": copy.used, "unreadable": copy.unreadable,
                            "unreadable_paths": copy.unreadable_paths, "special": copy.special}))
    return 0


def _patterns(patterns: list[str]) -> tuple[set[str], tuple[str, ...], list[str]]:
    """Split ignore patterns into plain names, ``*suffix`` patterns (as their suffixes) and any other glob."""
    names, suffixes, others = set(), [], []
    for pattern in patterns:
        if not any(char in pattern for char in "*?["):
            names.add(pattern)
        elif pattern.startswith("*") and not any(char in pattern[1:] for char in "*?["):
            suffixes.append(pattern[1:])
        else:
            others.append(pattern)
    return names, tuple(suffixes), others


def _matches(name: str, patterns: list[str]) -> bool:
    """``fnmatch`` for the patterns ``_patterns`` could not match by name or suffix (imported only then)."""
    if not patterns:
        return False
    import fnmatch

    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def encode_options(options: dict[str, object]) -> str:
    """OPTIONS for the command line (the worker's side)."""
    return marshal.dumps(options).hex()


class Report:
    """What a copy did, as the copier printed it."""

    def __init__(self, files: int, bytes: int, unreadable: int, unreadable_paths: list[str], special: int) -> None:
        self.files, self.bytes, self.special = files, bytes, special
        self.unreadable, self.unreadable_paths = unreadable, [str(path) for path in unreadable_paths]


def read_report(printed: str) -> Report:
    """The report the copier printed (the worker's side): literals only, so nothing it printed can run."""
    import ast

    return Report(**ast.literal_eval(printed.strip()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
