"""The state folder is private: folders 0700 and files 0600, owned by the user who runs devart.

The state folder (``DEVART_HOME``, by default ``.devart`` inside the project) holds Temporal's history of every
run, the logs, the administrator token, the agents' keys and the embedded PostgreSQL; whatever another local user
(or a command that got out of its sandbox, uid 65534) could read there would leak all of it. So ``devart up``
creates everything under a ``0077`` umask, opens every file it writes with mode 0600 whatever the umask, and
tightens what an older devart left readable (``make_private``).

One other user needs in: run as root, the embedded PostgreSQL runs as its own user (PostgreSQL refuses to run as
root), which must pass through the state folder to reach its data folder. It gets search permission (``x``, never
``r``) from a POSIX ACL entry naming it alone (``grant_search``), on the state folder and on whichever folder above
it denies it; ``ls -l`` then shows ``drwx--x---+``, and every other user still gets nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from pathlib import Path

log = logging.getLogger(__name__)

#: The umask of ``devart up``'s supervisor and everything it starts: nothing they create is readable by others.
PRIVATE_UMASK = 0o077
#: Top-level folders of the state folder that others manage: PostgreSQL's data folder (owned by the database's
#: user, kept 0700 by PostgreSQL itself) and the sandboxes (their volumes belong to the sandbox uid).
FOREIGN = ("postgres", "sandboxes")

_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_SEARCH = 0o1


def make_private(root: Path) -> Path:
    """Create the state folder 0700 and take group and other permissions off everything devart wrote in it."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    uid = os.geteuid()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in FOREIGN]
        _restrict(here, uid)
        for name in filenames:
            _restrict(here / name, uid)
    return root


def _restrict(path: Path, uid: int) -> None:
    """Drop group and other bits of a folder or regular file we own; sockets (the agents' package index, which
    sandboxes reach through a bind mount) and links keep theirs, and so does the search bit of an ACL's mask
    (``grant_search``: ``x`` for the database's user on the state folder)."""
    st = os.lstat(path)
    if st.st_uid != uid or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return
    mode = stat.S_IMODE(st.st_mode)
    kept = stat.S_IXGRP if stat.S_ISDIR(st.st_mode) and _read_acl(path) else 0
    if mode & 0o077 & ~kept:
        os.chmod(path, mode & ~0o077 | (mode & kept))


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open (creating) a file of the state folder as 0600, also when it exists with a wider mode or the umask is 0."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_private(path: Path, text: str) -> None:
    """Replace a file of the state folder at once (a reader sees the old or the new text), as 0600."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = open_private(temp, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, path)


def grant_search(path: Path, uid: int, gid: int) -> None:
    """Let user ``uid`` pass through every folder from ``/`` down to ``path``, and nothing more.

    A folder that already lets it through is left alone; any other gets an ACL entry ``user:<uid>:--x``. Where the
    file system has no ACLs, ``o+x`` is the fallback (search only, still no listing or reading) and is logged.
    """
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        if _can_search(st, uid, gid) or _acl_allows(folder, uid):
            continue
        try:
            _add_acl_search(folder, uid, st.st_mode)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            log.warning("no ACLs on %s: making it searchable by every user (o+x) for the database's user", folder)
            os.chmod(folder, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _can_search(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _read_acl(folder: Path) -> list[tuple[int, int, int]]:
    try:
        blob = os.getxattr(folder, _ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    return [struct.unpack_from("<HHI", blob, offset) for offset in range(4, len(blob), 8)]


def _acl_allows(folder: Path, uid: int) -> bool:
    entries = _read_acl(folder)
    mask = next((perm for tag, perm, _ in entries if tag == _MASK), 0o7)
    return any(tag == _USER and ident == uid and perm & mask & _SEARCH for tag, perm, ident in entries)


def _add_acl_search(folder: Path, uid: int, mode: int) -> None:
    """Add ``user:<uid>:--x`` to the folder's access ACL; the mask gains ``x`` only, so no one else gains more."""
    entries = _read_acl(folder) or [
        (_USER_OBJ, (mode >> 6) & 0o7, _UNDEFINED_ID),
        (_GROUP_OBJ, (mode >> 3) & 0o7, _UNDEFINED_ID),
        (_OTHER, mode & 0o7, _UNDEFINED_ID),
    ]
    group_obj = next(perm for tag, perm, _ in entries if tag == _GROUP_OBJ)
    mask = next((perm for tag, perm, _ in entries if tag == _MASK), group_obj) | _SEARCH
    user = next((perm for tag, perm, ident in entries if tag == _USER and ident == uid), 0) | _SEARCH
    kept = [e for e in entries if e[0] != _MASK and not (e[0] == _USER and e[2] == uid)]
    entries = sorted([*kept, (_USER, user, uid), (_MASK, mask, _UNDEFINED_ID)], key=lambda e: (e[0], e[2]))
    blob = struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(folder, _ACL_XATTR, blob)
