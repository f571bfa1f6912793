"""Copy a local working tree into a new workspace: regular files, folders and links only, within a size limit.

Run as ``python -I -S -c <this file's source> SOURCE DESTINATION OPTIONS`` (OPTIONS from ``encode_options``:
``limit``, ``ignore``, ``ignore_top``, ``exclude``) when devart runs as this user, or as a long-lived service
(``--serve FD``, ``sandboxes/copy_service.py``) as the sandbox user in a bubblewrap sandbox of its own when devart
runs as root, so it reads exactly what that user may read. It uses only the standard library, so the agent's Python
runs it whatever the sandbox can import; a cancelled copy stops at its next file or chunk.

Run alone it imports only modules the interpreter has built in or frozen (``json``, ``fnmatch`` and ``typing``
would pull in ``re``, ``enum`` and ``functools``): the options come as ``marshal`` data the worker wrote, the report
goes out as an ``ascii()`` literal the worker reads with ``ast.literal_eval`` (``read_report``: literals only,
whatever the copier printed), and ignore patterns that are a plain name or ``*`` and a suffix are matched without
``fnmatch``, which is imported only for any other pattern. The service forks a process per copy, so a copy starts
in about a millisecond instead of a new sandbox and interpreter (about 25 ms and as much CPU, measured).

What it copies and why:

- Regular files, folders and symbolic links, the link itself and never its target (a link to ``/etc/shadow``
  stays a link). Devices, FIFOs and sockets are counted and skipped, never opened: reading ``/dev/zero`` never
  ends, and opening a FIFO blocks. A file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again once
  open, so one swapped for a link or a FIFO meanwhile is skipped too.
- The source is walked by descriptor, each name opened relative to its folder's descriptor with ``O_NOFOLLOW``,
  never through a path: a folder swapped for a link while the copy runs is skipped, never followed. A path would
  follow such a link in the middle, and from the service's source (``/proc/self/fd/N``, a folder of the host's
  tree) a relative link leads up into the host's folders, out of the sandbox's view.
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
#: A served copy the worker stopped waiting for.
CANCELLED = 4
#: The unit every entry is counted in: a page of the sandbox's tmpfs.
BLOCK = 4096
#: Bytes read and written at a time.
CHUNK = 1 << 20
#: Unreadable paths named in the report (the count covers them all).
NAMED = 10
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: How a source folder is opened to be listed.
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC


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

    def poll(self) -> None:
        """Raise to stop the copy (a served copy no longer wanted); called before every entry and chunk."""

    def skip_unreadable(self, relative: str) -> None:
        self.unreadable += 1
        if len(self.unreadable_paths) < NAMED:
            self.unreadable_paths.append(relative)

    def skipped(self, parent: str, name: str) -> bool:
        relative = os.path.join(parent, name) if parent else name
        return (name in self.names or name.endswith(self.suffixes) or _matches(name, self.patterns)
                or (not parent and name in self.ignore_top) or relative == self.exclude)

    def run(self, source: str, destination: str) -> None:
        top_info = os.stat(source)
        os.mkdir(destination, 0o700)
        try:
            top = os.open(source, _FOLDER)  # the source itself may be a link (or /proc/self/fd/N): followed
        except PermissionError:
            self.skip_unreadable(".")
            return
        try:
            try:
                entries = sorted(os.listdir(top))
            except PermissionError:
                self.skip_unreadable(".")
                return
            self.folders.append((destination, top_info))
            pending = [("", entries)]
            while pending:
                parent, names = pending.pop()
                folder = self.folder(top, parent)
                if folder is None:
                    continue
                try:
                    for name in names:
                        if not self.skipped(parent, name):
                            self.entry(folder, name, destination, os.path.join(parent, name) if parent else name,
                                       pending)
                finally:
                    if folder != top:
                        os.close(folder)
        finally:
            os.close(top)
        for path, info in reversed(self.folders):  # last: a read-only folder must first be filled
            os.chmod(path, stat.S_IMODE(info.st_mode) & 0o1777)
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))

    def folder(self, top: int, relative: str) -> int | None:
        """A descriptor of the folder ``relative`` (listed earlier), opened one name at a time from ``top`` without
        following any link: a folder swapped for a link since it was listed is skipped, never followed out."""
        fd = top
        try:
            for name in relative.split("/") if relative else ():
                opened = os.open(name, _FOLDER | os.O_NOFOLLOW, dir_fd=fd)
                if fd != top:
                    os.close(fd)
                fd = opened
        except OSError:
            if fd != top:
                os.close(fd)
            self.skip_unreadable(relative)
            return None
        return fd

    def entry(self, folder: int, name: str, destination: str, relative: str,
              pending: list[tuple[str, list[str]]]) -> None:
        target = os.path.join(destination, relative)
        self.poll()
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except OSError:
            self.skip_unreadable(relative)
            return
        if stat.S_ISDIR(info.st_mode):
            try:
                fd = os.open(name, _FOLDER | os.O_NOFOLLOW, dir_fd=folder)
                try:
                    names = sorted(os.listdir(fd))
                finally:
                    os.close(fd)
            except OSError:
                self.skip_unreadable(relative)
                return
            self.charge(0)
            os.mkdir(target, 0o700)
            self.folders.append((target, info))
            pending.append((relative, names))
        elif stat.S_ISLNK(info.st_mode):
            link = os.readlink(name, dir_fd=folder)
            self.charge(len(link))
            os.symlink(link, target)
        elif stat.S_ISREG(info.st_mode):
            self.file(folder, name, target, relative)
        else:
            self.special += 1

    def file(self, folder: int, name: str, target: str, relative: str) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         dir_fd=folder)
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
                    self.poll()
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
    if len(argv) == 2 and argv[0] == "--serve":
        return serve(int(argv[1]))
    if len(argv) != 3:
        sys.stderr.write("usage: source_copy SOURCE DESTINATION OPTIONS | --serve FD\n")
        return 2
    code, out, err = outcome(Copy(**marshal.loads(bytes.fromhex(argv[2]))), argv[0], argv[1])
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


def outcome(copy: Copy, source: str, destination: str) -> tuple[int, str, str]:
    """Run ``copy``: its exit status, the report it prints (on success) and its error line (on failure)."""
    try:
        copy.run(source, destination)
    except OverLimit:
        return OVER_LIMIT, "", f"over the limit after {copy.used} bytes\n"
    except OSError as exc:
        if exc.errno in _FULL:
            return OVER_LIMIT, "", f"the destination is full after {copy.used} bytes\n"
        return 1, "", f"{exc.strerror}: {exc.filename}\n" if exc.filename else f"{exc}\n"
    return 0, ascii({"files": copy.files, "bytes": copy.used, "unreadable": copy.unreadable,
                     "unreadable_paths": copy.unreadable_paths, "special": copy.special}), ""


class Cancelled(Exception):
    """The worker no longer waits for this copy (it was cancelled or timed out)."""


class ServedCopy(Copy):
    """A copy made for the service (``serve``): it stops as soon as the worker closes its end of ``reply``."""

    def __init__(self, reply: object, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.reply = reply

    def poll(self) -> None:
        try:
            self.reply.recv(1)  # type: ignore[attr-defined]
        except BlockingIOError:
            return  # nothing said: the worker still waits
        raise Cancelled


def serve(control_fd: int) -> int:
    """Make one copy per request on ``control_fd`` (a SOCK_SEQPACKET socket), each in a process forked for it.

    A request is ``marshal`` data (the new workspace's name, the options, and the source's and destination's
    names for messages) with three descriptors: the socket to answer on, the source folder and the folder to
    create the workspace in, both opened ``O_PATH`` by the worker. The copy reaches them only through
    ``/proc/self/fd``: it sees nothing else of the host, and every file is opened with this process's rights
    (the sandbox user's), whatever rights the descriptors were opened with. The answer is an ``ascii()`` literal
    ``(status, report, error)``; a worker that closes its end stops the copy at its next file or chunk. The
    service ends when the control socket closes (the worker is gone). Its imports are paid once, not per copy.
    """
    import signal
    import socket

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 16, 3)
        except InterruptedError:
            continue
        if not message:
            return 0
        try:
            child = os.fork() if len(fds) == 3 else -1
        except OSError:
            child = -1  # no process to spare: closing the descriptors tells the worker the copy did not run
        if child == 0:
            control.close()
            code = 1
            try:
                code = _serve_one(socket.socket(fileno=fds[0]), message, fds[1], fds[2])
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


def _serve_one(reply: object, message: bytes, source_fd: int, destination_fd: int) -> int:
    name, options, labels = marshal.loads(message)
    if not name or "/" in name or name in (".", ".."):
        answer = (2, "", f"not a workspace name: {name!r}\n")
    else:
        source, destination = f"/proc/self/fd/{source_fd}", f"/proc/self/fd/{destination_fd}/{name}"
        reply.setblocking(False)  # type: ignore[attr-defined]
        try:
            code, out, err = outcome(ServedCopy(reply, **options), source, destination)
        except Cancelled:
            return CANCELLED
        except BaseException as exc:  # a bug: say so rather than leave the worker without an answer
            code, out, err = 1, "", f"{type(exc).__name__}: {exc}\n"
        answer = (code, out, err.replace(destination, labels[1]).replace(source, labels[0]))
        reply.setblocking(True)  # type: ignore[attr-defined]
    reply.sendall(ascii(answer).encode())  # type: ignore[attr-defined]
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
