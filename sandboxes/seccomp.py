"""A seccomp filter that stops sandboxed commands from creating user namespaces.

When devart runs as root, bubblewrap needs no user namespace of its own (see ``sandboxes/bubblewrap.py``), so
``--disable-userns`` is not available; yet a user namespace would hand the command a fresh set of capabilities
over kernel code that is a frequent source of privilege escalations. This classic-BPF program, loaded by
bubblewrap's ``--seccomp`` just before the command starts, refuses ``unshare`` and ``clone`` with
``CLONE_NEWUSER`` (EPERM) and ``clone3``, whose flags it cannot inspect (ENOSYS, so libc falls back to
``clone``). Syscalls of a foreign ABI (32-bit or x32 on a 64-bit host) are refused outright, since their numbers
differ. Only x86_64 and aarch64 are known; elsewhere no filter is loaded.
"""

from __future__ import annotations

import errno
import platform
import struct

CLONE_NEWUSER = 0x10000000
#: machine -> (AUDIT_ARCH value, clone, unshare, clone3 syscall numbers).
_ARCHES = {
    "x86_64": (0xC000003E, 56, 272, 435),
    "aarch64": (0xC00000B7, 220, 97, 435),
}
_X32_BIT = 0x40000000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def no_user_namespaces(machine: str | None = None) -> bytes | None:
    """The compiled filter for this machine's architecture, or None when it is not one devart knows."""
    known = _ARCHES.get(machine or platform.machine())
    if known is None:
        return None
    arch, clone, unshare, clone3 = known
    program = [
        _op(_LD_ABS, 4),  # 0: seccomp_data.arch
        _op(_JEQ, arch, 0, 10),  # 1: a foreign ABI -> 12 (ENOSYS)
        _op(_LD_ABS, 0),  # 2: seccomp_data.nr
        _op(_JGE, _X32_BIT, 8, 0),  # 3: x32 -> 12 (ENOSYS)
        _op(_JEQ, clone3, 7, 0),  # 4: -> 12 (ENOSYS)
        _op(_JEQ, unshare, 2, 0),  # 5: -> 8 (check flags)
        _op(_JEQ, clone, 1, 0),  # 6: -> 8 (check flags)
        _op(_RET, _ALLOW),  # 7
        _op(_LD_ABS, 16),  # 8: low 32 bits of args[0], the flags of both calls
        _op(_JSET, CLONE_NEWUSER, 1, 0),  # 9: -> 11 (EPERM)
        _op(_RET, _ALLOW),  # 10
        _op(_RET, _ERRNO | errno.EPERM),  # 11
        _op(_RET, _ERRNO | errno.ENOSYS),  # 12
    ]
    return b"".join(program)
