"""How bubblewrap confines a local sandbox command: namespaces, mounts, and the drop to an unprivileged uid.

Run by root (the usual case for the worker and agents), bubblewrap starts as root without a user namespace, so
it can mount whatever the sandbox needs, and ``setpriv`` drops to uid/gid 65534 ("nobody") with no groups, no
capabilities and ``no_new_privs`` as the very last step before the command. The command is then an ordinary
unprivileged process of the host: files only root may read (``/etc/shadow``, ``/root``) stay unreadable, and a
seccomp filter (``sandboxes/seccomp.py``) stops it from creating user namespaces of its own. Run
by another user, bubblewrap itself is unprivileged: it needs user namespaces, maps that user onto 65534 and
forbids nested user namespaces.

The mounts: the host read-only; a private ``/tmp`` (``disk_mb`` at most); ``/dev`` and ``/proc`` of the
sandbox's own; the sandbox root hidden under an empty read-only tmpfs except for this sandbox's ``workspace``
and ``home``, the only writable paths. A host folder the sandbox user cannot traverse but must reach through
(one above the sandbox root, or above the agent's Python, e.g. ``/root/.pyenv``) is replaced by an empty
read-only tmpfs holding just those paths, which hides nothing the user could have read anyway.

With ``network: packages`` the command still gets an empty network namespace; the agent's package index proxy
comes in as a unix socket bound at ``INDEX_SOCKET``, and ``sandboxes/package_forwarder.py`` (run with the
agent's Python in place of the command, which it then starts) serves it on ``127.0.0.1:INDEX_PORT``.

The command's environment never passes through a root process (an ``LD_PRELOAD`` there would run as root) nor
through a command line (``ps`` shows those to every user): bubblewrap clears it, and after the privilege drop a
``/bin/sh`` reads it from its stdin (a memfd) and execs the command with stdin on ``/dev/null``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.contracts import SandboxSpec
from sandboxes import package_forwarder

#: The uid and gid commands run as ("nobody").
SANDBOX_UID = 65534
#: ``PATH`` of the root-owned helpers that start a command (never the sandbox's own ``PATH``).
HELPER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TMP = Path("/tmp")
_LOADER = '. /dev/stdin || exit 126; exec "$@" < /dev/null'
#: Where the package index proxy's socket appears inside a ``network: packages`` sandbox (its private ``/tmp``).
INDEX_SOCKET = TMP / ".devart-package-index.sock"
#: The port the package relay listens on, on the sandbox's own loopback (each command has its own namespace).
INDEX_PORT = 3141


def bubblewrap_available() -> str | None:
    """The path of ``bwrap`` on ``PATH``, or None when bubblewrap is not installed."""
    return shutil.which("bwrap")


def interpreter_paths() -> list[Path]:
    """The agent's Python (virtual environment and base installation), which skills run inside sandboxes."""
    found = {Path(os.path.realpath(p)) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    return sorted(found)


def userns_problem() -> str | None:
    """Why unprivileged user namespaces are unavailable here, with the fix; None when they are available."""
    checks = [("/proc/sys/user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
              ("/proc/sys/kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
              ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
               "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")]
    for path, bad, fix in checks:
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value == bad:
            return (f"unprivileged user namespaces are disabled ({path} is {value}), and bubblewrap needs them when "
                    f"devart does not run as root: run `{fix}`, or run devart as root")
    return None


def traversable(path: Path, uid: int, gids: Iterable[int]) -> bool:
    """Whether ``uid`` (with groups ``gids``) may enter ``path``, by its mode bits (ACLs are not consulted)."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if uid == 0:
        return True
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in gids:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def first_blocked(path: Path, uid: int, gids: Iterable[int]) -> Path | None:
    """The outermost folder above ``path`` that ``uid`` cannot traverse, or None."""
    groups = set(gids)
    for ancestor in reversed(path.parents):
        if ancestor != Path("/") and not traversable(ancestor, uid, groups):
            return ancestor
    return None


@dataclass(frozen=True)
class Confinement:
    """bubblewrap's command line for one sandbox root, planned once per backend."""

    bwrap: str
    root: Path
    setpriv: str | None  # set when running as root: drop to SANDBOX_UID inside
    hidden: tuple[Path, ...]  # host folders replaced by an empty read-only tmpfs
    exposed: tuple[Path, ...]  # host folders bound read-only although under /tmp or a hidden folder

    @classmethod
    def plan(cls, bwrap: str, root: Path, setpriv: str | None, expose: Sequence[Path] = ()) -> Confinement:
        """Work out which host folders to hide and which to bind back for the sandbox user to reach."""
        uid, gids = (SANDBOX_UID, {SANDBOX_UID}) if setpriv else (os.getuid(), {os.getgid(), *os.getgroups()})
        blocked = {path: first_blocked(path, uid, gids) for path in [root, *expose]}
        hidden = {folder for folder in blocked.values() if folder is not None and not folder.is_relative_to(TMP)}
        outermost = tuple(sorted(f for f in hidden if not any(f != o and f.is_relative_to(o) for o in hidden)))
        exposed = tuple(path for path in expose if path.is_relative_to(TMP) or blocked[path] is not None)
        return cls(bwrap=bwrap, root=root, setpriv=setpriv, hidden=outermost, exposed=exposed)

    def argv(self, directory: Path, workdir: Path, spec: SandboxSpec, command: Sequence[str],
             seccomp_fd: int | None = None, index_socket: Path | None = None) -> list[str]:
        """The argv that runs ``command`` in ``directory``'s sandbox; its environment comes on stdin.

        ``seccomp_fd``: an inherited fd holding the filter of ``sandboxes/seccomp.py`` (when running as root).
        ``index_socket``: the package index proxy's socket, for a ``network: packages`` spec (required there).
        """
        if spec.network == "packages":
            if index_socket is None:
                raise ValueError("a 'network: packages' sandbox needs the package index proxy's socket")
            command = package_relay(command)
        workspace, home = directory / "workspace", directory / "home"
        argv = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
                "--unshare-cgroup-try"]
        if self.setpriv is None:
            argv += ["--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        if spec.network != "egress":
            argv.append("--unshare-net")
        argv += ["--hostname", "sandbox", "--clearenv", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                 "--perms", "1777", "--size", str(spec.disk_mb << 20), "--tmpfs", str(TMP)]
        if spec.network == "packages" and index_socket is not None:
            argv += ["--bind", str(index_socket), str(INDEX_SOCKET)]
        for folder in self.hidden:
            argv += ["--perms", "0755", "--tmpfs", str(folder)]
        for path in self.exposed:
            argv += [*self._parents(path), "--ro-bind", str(path), str(path)]
        argv += [*self._parents(self.root), "--perms", "0755", "--tmpfs", str(self.root), *self._parents(workspace),
                 "--bind", str(workspace), str(workspace), "--bind", str(home), str(home)]
        for folder in (*self.hidden, self.root):  # last: the folders above were created in them
            argv += ["--remount-ro", str(folder)]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        argv += ["--chdir", str(workdir), "--"]
        if self.setpriv is not None:
            argv += [self.setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                     "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"]
        return [*argv, "/bin/sh", "-c", _LOADER, "sh", *command]

    def _parents(self, path: Path) -> list[str]:
        """``--dir`` for each folder between the tmpfs ``path`` lands in and ``path``, so all are traversable."""
        bases = [base for base in (TMP, self.root, *self.hidden) if path.is_relative_to(base) and path != base]
        if not bases:
            return []
        base = max(bases, key=lambda b: len(b.parts))
        args: list[str] = []
        for folder in reversed(path.parents):
            if folder.is_relative_to(base) and folder != base:
                args += ["--perms", "0755", "--dir", str(folder)]
        return args


def package_relay(command: Sequence[str]) -> list[str]:
    """``command`` started by the package relay, run from its source with the agent's Python (isolated mode)."""
    return [sys.executable, "-I", "-S", "-c", _relay_source(), str(INDEX_PORT), str(INDEX_SOCKET), "--", *command]


@lru_cache(maxsize=1)
def _relay_source() -> str:
    """The relay's source: passed with ``-c``, as the module's folder may be out of the sandbox user's reach."""
    return Path(package_forwarder.__file__).read_text()


def environment_script(variables: Mapping[str, str]) -> bytes:
    """The environment as ``export`` lines for the loader shell to source."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items()).encode()
