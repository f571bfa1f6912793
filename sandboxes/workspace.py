"""A local sandbox on disk: its directory layout and ``meta.json``, its checkout of the source, its removal.

Kept apart from ``sandboxes/local.py``, which runs commands in the directory. The checkout is a git clone at a
ref or a copy of a local working tree; git runs as an asyncio subprocess so a cancelled provision kills it, and
copying runs in a thread. The other helpers here are blocking: callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.contracts import SandboxHandle, SandboxSpec, Source
from core.errors import SandboxError

#: Seconds a clone or checkout may take; a hung server or a huge repository fails the provision instead.
GIT_TIMEOUT = 600.0
#: URL forms treated as remote git repositories (anything else must be a local directory).
GIT_URL_PREFIXES = ("http://", "https://", "ssh://", "git://", "file://", "git@")
#: Names skipped at any depth when copying a working tree: caches and environments the sandbox rebuilds.
COPY_IGNORED = (".venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache", "node_modules",
                "*.egg-info")
#: Build outputs skipped only at the top: deeper, ``build`` or ``dist`` may be a real package (pypa/build's src/build).
COPY_IGNORED_TOP = frozenset({"dist", "build"})
#: What git (through curl or ssh) says when the network failed: trying again later may work. Checked first, since
#: ssh adds "make sure ... the repository exists" to a refused connection too.
NETWORK_FAILURES = (
    "could not resolve host", "name or service not known", "temporary failure in name resolution",
    "failed to connect", "couldn't connect", "connection refused", "connection timed out", "operation timed out",
    "network is unreachable", "no route to host", "connection reset", "the remote end hung up unexpectedly",
    "early eof", "rpc failed", "returned error: 502", "returned error: 503", "returned error: 504",
)
#: What git says when the repository is not there (or not visible to us): trying again will not help.
MISSING_REPOSITORY = (
    "does not appear to be a git repository", "not found", "does not exist", "returned error: 404",
    "could not read username", "authentication failed", "permission denied",
)
#: Why a retryable clone failure failed (``SandboxError.reason``, the activity's error type).
SOURCE_UNREACHABLE = "SourceUnreachable"


class GitFailed(SandboxError):
    """git exited non-zero; ``stderr`` is what it said, so callers can tell a missing thing from a network fault."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def clone_failure(origin: str, exc: SandboxError) -> SandboxError:
    """A failed clone as a ``SandboxError`` that says whether retrying may help, classified by git's own words."""
    said = exc.stderr.lower() if isinstance(exc, GitFailed) else ""
    if any(words in said for words in NETWORK_FAILURES) or (not said and "took longer than" in str(exc)):
        return SandboxError(f"cannot reach repository {origin}: {exc}. Will try again: the network or the server "
                            "may be down", retryable=True, reason=SOURCE_UNREACHABLE)
    if any(words in said for words in MISSING_REPOSITORY):
        return SandboxError(f"repository {origin} not found: {exc}. Check the repository URL or path and that this "
                            "machine may read it")
    return SandboxError(f"{exc}. Check the repository URL or path and that this machine can read it")


@dataclass(frozen=True)
class CheckoutPlan:
    """How to materialise a source: clone ``origin`` (and check out ``ref``) or copy ``origin``.

    ``subdir`` is the part of a local git repository the caller asked for; the whole repository is cloned (so
    git works in the workspace) and commands start in that sub-directory.
    """

    origin: str
    ref: str | None
    clone: bool
    subdir: str = ""


async def plan_checkout(source: Source) -> CheckoutPlan:
    """Decide how ``source`` is checked out, refusing what cannot work before anything is created on disk."""
    ref = source.ref.strip() if source.ref is not None else None
    if ref is not None and (not ref or ref.startswith("-")):
        raise SandboxError(f"invalid git ref {source.ref!r}: give a branch, tag or commit (or none for the "
                           "working tree)")
    if source.repo.startswith(GIT_URL_PREFIXES):
        return CheckoutPlan(origin=source.repo, ref=ref, clone=True)
    path = Path(source.repo).expanduser()
    if not path.is_dir():
        raise SandboxError(f"source repository {source.repo!r} does not exist or is not a directory: give an "
                           f"existing local directory or a git URL ({', '.join(GIT_URL_PREFIXES)})")
    path = path.resolve()
    if ref is None:
        return CheckoutPlan(origin=str(path), ref=None, clone=False)
    try:
        toplevel = (await _git("rev-parse", "--show-toplevel", cwd=path, timeout=60.0)).strip()
    except SandboxError:
        raise SandboxError(f"source {str(path)!r} is not inside a git repository, so ref {ref!r} cannot be "
                           "checked out: drop the ref to copy the directory as it is, or point at a git "
                           "repository") from None
    top = Path(toplevel).resolve()
    subdir = path.relative_to(top).as_posix() if path != top else ""
    return CheckoutPlan(origin=str(top), ref=ref, clone=True, subdir=subdir)


async def materialize(plan: CheckoutPlan, dest: Path, *, exclude: Path | None = None) -> Path:
    """Create ``dest`` holding the source and return the directory commands should start in.

    Args:
        plan: from ``plan_checkout``.
        dest: the workspace directory; must not exist yet.
        exclude: a directory never copied (the sandbox root, should it live inside the source tree).
    """
    if not plan.clone:
        await _copy_tree(Path(plan.origin), dest, exclude)
        return dest
    local = not plan.origin.startswith(GIT_URL_PREFIXES)
    # --no-hardlinks: the sandbox may modify objects, and must never touch the operator's repository.
    try:
        await _git("clone", "--quiet", *(["--no-hardlinks"] if local else []), "--", plan.origin, str(dest),
                   what=f"cloning {plan.origin!r}")
    except SandboxError as exc:
        raise clone_failure(plan.origin, exc) from None
    if plan.ref is not None:
        try:
            await _git("checkout", "--quiet", plan.ref, "--", cwd=dest)
        except SandboxError as exc:
            raise SandboxError(f"ref {plan.ref!r} not found in {plan.origin}: check that the branch, tag or "
                               f"commit exists (and for a remote, that it was pushed). {exc}") from None
    workdir = dest / plan.subdir if plan.subdir else dest
    if not workdir.is_dir() or not workdir.resolve().is_relative_to(dest.resolve()):  # a symlink leads out
        raise SandboxError(f"{plan.subdir!r} does not exist in {plan.origin!r} at ref {plan.ref!r}: pick a ref "
                           "that contains it")
    return workdir


def create_layout(directory: Path, meta: dict[str, Any]) -> None:
    """Create an empty sandbox: ``meta.json`` and ``pids/``; its volume (``sandboxes/volumes.py``) comes next.

    The sandbox folder is private to the operator: commands reach their workspace and home through bubblewrap's
    mounts, never through this folder.
    """
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700)
    (directory / "pids").mkdir(mode=0o700)
    write_json(directory / "meta.json", meta)


def hand_over(directory: Path, uid: int) -> None:
    """Give the sandbox's ``workspace/`` and ``home/`` to ``uid``, the user its commands run as.

    ``lchown`` and no following of links: a link in the checkout may point anywhere on the host.
    """
    for top in (directory / "workspace", directory / "home"):
        os.lchown(top, uid, uid)
        for folder, folders, files in os.walk(top):
            for name in (*folders, *files):
                os.lchown(os.path.join(folder, name), uid, uid)


def disk_usage(paths: list[Path]) -> int:
    """Bytes of disk used under ``paths`` (allocated blocks, links not followed, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(path) for path in paths]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # removed meanwhile, or a folder the command made unreadable: it can't be weighed
        for entry in entries:
            with suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a concurrent reader sees the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)


def read_handles(root: Path, backend: str) -> list[SandboxHandle]:
    """The handles of every sandbox under ``root`` with a readable ``meta.json``, oldest first."""
    found: list[tuple[str, SandboxHandle]] = []
    for path in root.glob("*/meta.json"):
        try:
            meta = json.loads(path.read_text())
            handle = SandboxHandle(backend=backend, id=path.parent.name, workspace=meta["workspace"],
                                   isolated=meta.get("isolated", True), run_id=meta.get("run_id", ""),
                                   created_at=meta.get("created"),
                                   spec=SandboxSpec.model_validate(meta.get("spec", {})))
        except (OSError, ValueError, KeyError):
            continue  # torn down meanwhile: nothing to sweep
        found.append((str(meta.get("created", "")), handle))
    return [handle for _, handle in sorted(found, key=lambda item: item[0])]


def remove_tree(directory: Path) -> None:
    """Remove a sandbox, even one that another process is removing or whose commands left read-only folders."""

    def ignore_vanished(_function: Any, _path: str, exc_info: Any) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    try:
        shutil.rmtree(directory, onerror=ignore_vanished)
    except PermissionError:  # only for a non-root operator: root ignores the modes
        for top, folders, _files in os.walk(directory):
            for name in [top, *(os.path.join(top, folder) for folder in folders)]:
                with suppress(OSError):
                    if not os.path.islink(name):  # a link may point out of the sandbox
                        os.chmod(name, 0o700)
        shutil.rmtree(directory, onerror=ignore_vanished)


async def _copy_tree(src: Path, dest: Path, exclude: Path | None) -> None:
    """Copy in a thread; if the caller is cancelled, let the copy finish so cleanup sees a complete tree."""
    ignore_top = COPY_IGNORED_TOP

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(shutil.ignore_patterns(*COPY_IGNORED)(directory, names))
        here = Path(directory)
        if here == src:
            skipped |= ignore_top.intersection(names)
        if exclude is not None:
            skipped |= {name for name in names if here / name == exclude}
        return skipped

    def copy() -> None:
        # symlinks=True: a link is copied as a link, never followed out of the tree.
        shutil.copytree(src, dest, symlinks=True, ignore=ignore)

    task = asyncio.ensure_future(asyncio.to_thread(copy))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with suppress(Exception):
            await task
        raise
    except OSError as exc:
        raise SandboxError(f"copying {str(src)!r} into the sandbox failed: {exc}. Check the files are readable "
                           "and the disk has room") from exc


def _git_env() -> dict[str, str]:
    """Git must fail instead of prompting: no terminal is watching a provision."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


async def _git(*args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT, what: str | None = None) -> str:
    """Run git, returning stdout; a failure or timeout raises ``SandboxError`` carrying git's own message."""
    what = what or "git " + " ".join(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", *args, cwd=cwd, env=_git_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise SandboxError("git is not installed: install it (apt-get install -y git) to provision from a git "
                           "repository or ref") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:  # timeout or cancellation: never leave git (or its ssh) running
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise SandboxError(f"{what} took longer than {timeout:g}s: check the repository is reachable") from None
        raise
    if proc.returncode != 0:
        stderr = err.decode(errors="replace").strip()
        first = stderr.splitlines()[0] if stderr else f"exit code {proc.returncode}"  # the rest is boilerplate
        raise GitFailed(f"{what} failed: {first}", stderr)
    return out.decode(errors="replace")
