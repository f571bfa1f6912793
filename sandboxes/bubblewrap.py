"""How bubblewrap confines a local sandbox command: what it can see, its namespaces, the drop to an unprivileged uid.

Run by root (the usual case for the worker and agents), bubblewrap starts as root without a user namespace, so
it can mount whatever the sandbox needs, and ``setpriv`` drops to uid/gid 65534 ("nobody") with no groups, no
capabilities and ``no_new_privs`` as the very last step before the command. The command is then an ordinary
unprivileged process of the host, and a seccomp filter (``sandboxes/seccomp.py``) stops it from creating user
namespaces of its own. Run by another user, bubblewrap itself is unprivileged: it needs user namespaces, maps
that user onto 65534 and forbids nested user namespaces.

What the command sees is built from nothing, on an empty read-only root:

- the toolchain, read-only: ``/usr``, ``/etc``, ``/opt`` and the merged-/usr links (``/bin``, ``/lib``…, or
  read-only binds where they are folders), and the agent's Python (``interpreter_paths``: its virtualenv and
  base installation, e.g. ``/root/.pyenv/versions/3.11`` and ``<project>/.venv``) at their own paths, with
  nothing of the folders around them (no ``/root``, no project checkout, no state folder beside the venv);
- its volume (``sandboxes/volumes.py``: ``workspace`` and ``home``), the only writable host folder;
- a private ``/tmp`` of ``disk_mb`` and ``/dev/shm`` of at most ``SHM_MB``, ``/dev`` and ``/proc`` of its own.

Nothing else of the host: no ``/run`` or ``/var`` (so none of the host's unix sockets: PostgreSQL, MariaDB, the
embedded services under ``/run/user``), no ``/home``, ``/root``, ``/srv``, ``/mnt``, ``/media``, ``/work`` or
``/sys``, no other sandbox, no devart state. Should the sandbox root or the state folder lie inside one of the
bound folders (say under ``/opt``), an empty read-only tmpfs covers it.

The network is always a namespace of the command's own: empty for ``network: none``; for ``network: packages``
the agent's package index proxy comes in as a unix socket bound at ``INDEX_SOCKET`` (the only host socket the
sandbox has), and ``sandboxes/package_forwarder.py`` (run with the agent's Python in place of the command,
which it then starts) serves it on ``127.0.0.1:INDEX_PORT``; for ``network: egress`` slirp4netns routes it to
public addresses only (``sandboxes/egress.py``), bubblewrap holding the command until that is in place.

The command's environment never passes through a root process (an ``LD_PRELOAD`` there would run as root) nor
through a command line (``ps`` shows those to every user): bubblewrap clears it, and after the privilege drop a
``/bin/sh`` reads it from its stdin (a memfd) and execs the command with stdin on ``/dev/null``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from devart.core.contracts import SandboxSpec
from devart.sandboxes import package_forwarder
from devart.sandboxes.egress import EgressFds
from devart.sandboxes.egress_routes import resolv_conf_path

#: The uid and gid commands run as ("nobody").
SANDBOX_UID = 65534
#: ``PATH`` of the root-owned helpers that start a command (never the sandbox's own ``PATH``).
HELPER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TMP = Path("/tmp")
DEV = Path("/dev")
PROC = Path("/proc")
#: Host folders every sandbox sees read-only: the toolchain and its configuration (``/opt`` when present).
SYSTEM_PATHS = (Path("/usr"), Path("/etc"), Path("/opt"))
#: Top-level names that merged-/usr systems make links into ``/usr``; bound read-only where they are folders.
USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Largest ``/dev/shm`` (POSIX shared memory, semaphores), as Docker's default; ``disk_mb`` when that is less.
SHM_MB = 64
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


@dataclass(frozen=True)
class Confinement:
    """bubblewrap's command line for one sandbox root, planned once per backend."""

    bwrap: str
    root: Path
    setpriv: str | None  # set when running as root: drop to SANDBOX_UID inside
    binds: tuple[Path, ...]  # host folders bound read-only at their own paths
    links: tuple[tuple[str, Path], ...]  # (target, path): the merged-/usr symlinks
    hidden: tuple[Path, ...]  # folders inside a bound one covered by an empty read-only tmpfs

    @classmethod
    def plan(cls, bwrap: str, root: Path, setpriv: str | None, expose: Sequence[Path] = (),
             hide: Sequence[Path] = ()) -> Confinement:
        """Work out what to bind: the toolchain, ``expose`` (the agent's Python); and what to cover: ``root``
        (the sandboxes) and ``hide`` (the state folder) wherever a bound folder holds them."""
        system = [path for path in SYSTEM_PATHS if path.is_dir() and not path.is_symlink()]
        links: list[tuple[str, Path]] = []
        for name in USR_LINKS:
            path = Path("/") / name
            if path.is_symlink():
                links.append((os.readlink(path), path))
            elif path.is_dir():
                system.append(path)
        covered = [path for path in (root, *hide) if _inside(path, system)]
        # A path already under a system folder is seen through it, unless a covered folder hides it again.
        binds = [*system, *(path for path in dict.fromkeys(expose)
                            if not _inside(path, system) or _inside(path, covered))]
        exposed = [path for path in (root, *hide) if _inside(path, binds)]
        hidden = tuple(dict.fromkeys(p for p in exposed if not any(p != o and p.is_relative_to(o) for o in exposed)))
        return cls(bwrap=bwrap, root=root, setpriv=setpriv, binds=tuple(binds), links=tuple(links), hidden=hidden)

    def argv(self, volume: Path, workdir: Path, spec: SandboxSpec, command: Sequence[str],
             seccomp_fd: int | None = None, index_socket: Path | None = None,
             egress: EgressFds | None = None) -> list[str]:
        """The argv that runs ``command`` in the sandbox whose volume is ``volume``; its environment comes on stdin.

        ``seccomp_fd``: an inherited fd holding the filter of ``sandboxes/seccomp.py`` (when running as root).
        ``index_socket``: the package index proxy's socket, for a ``network: packages`` spec (required there).
        ``egress``: the descriptors of the command's slirp4netns network, for a ``network: egress`` spec.
        """
        if spec.network == "packages":
            if index_socket is None:
                raise ValueError("a 'network: packages' sandbox needs the package index proxy's socket")
            command = package_relay(command)
        if spec.network == "egress" and egress is None:
            raise ValueError("a 'network: egress' sandbox needs its slirp4netns network's descriptors")
        argv = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
                "--unshare-net", "--unshare-cgroup-try"]
        if self.setpriv is None:
            argv += ["--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        argv += ["--hostname", "sandbox", "--clearenv", *self._mounts(volume, spec, index_socket, egress)]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        if egress is not None:
            argv += ["--info-fd", str(egress.info), "--block-fd", str(egress.block)]
        argv += ["--chdir", str(workdir), "--"]
        if self.setpriv is not None:
            argv += [self.setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                     "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"]
        return [*argv, "/bin/sh", "-c", _LOADER, "sh", *command]

    def _mounts(self, volume: Path, spec: SandboxSpec, index_socket: Path | None,
                egress: EgressFds | None) -> list[str]:
        """The mount operations, outer paths first, each preceded by the folders it needs on a fresh tmpfs."""
        disk = spec.disk_mb << 20
        plan: list[tuple[Path, bool, list[str]]] = [  # (destination, holds the host's own tree, arguments)
            *((path, True, ["--ro-bind", str(path), str(path)]) for path in self.binds),
            *((path, True, ["--symlink", target, str(path)]) for target, path in self.links),
            *((path, False, ["--perms", "0755", "--tmpfs", str(path)]) for path in self.hidden),
            (TMP, False, ["--perms", "1777", "--size", str(disk), "--tmpfs", str(TMP)]),
            (DEV, False, ["--dev", str(DEV)]),
            (DEV / "shm", False, ["--perms", "1777", "--size", str(min(disk, SHM_MB << 20)), "--tmpfs",
                                  str(DEV / "shm")]),
            (PROC, False, ["--proc", str(PROC)]),
            (volume, True, ["--bind", str(volume), str(volume)]),
        ]
        if spec.network == "packages" and index_socket is not None:
            plan.append((INDEX_SOCKET, True, ["--bind", str(index_socket), str(INDEX_SOCKET)]))
        if egress is not None:
            resolv = resolv_conf_path()
            plan.append((resolv, True, ["--perms", "0644", "--ro-bind-data", str(egress.resolv), str(resolv)]))
        plan.sort(key=lambda item: len(item[0].parts))  # stable: a mount comes after those holding it
        args: list[str] = []
        host_trees: list[Path] = []
        fresh: list[Path] = [Path("/")]
        made: set[Path] = set()
        for destination, host_tree, operation in plan:
            holder = max((p for p in [*host_trees, *fresh] if destination.is_relative_to(p) and p != destination),
                         key=lambda p: len(p.parts))
            if holder in fresh:  # on a tmpfs of the sandbox's: make the folders down to it, traversable by all
                for folder in reversed(destination.parents):
                    if folder.is_relative_to(holder) and folder != holder and folder not in made:
                        args += ["--perms", "0755", "--dir", str(folder)]
                        made.add(folder)
            args += operation
            (host_trees if host_tree else fresh).append(destination)
        for folder in (*self.hidden, Path("/")):  # last: the folders above were created in them
            args += ["--remount-ro", str(folder)]
        return args


def _inside(path: Path, folders: Iterable[Path]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)


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
