"""A local sandbox's checkout of its source: planned before anything is created, then copied or cloned.

Kept apart from ``sandboxes/local.py``, which runs commands in the directory, and from ``sandboxes/layout.py``,
which holds the directory itself (its layout, ``meta.json`` and removal). The checkout is a git clone at a
ref or a copy of a local working tree, never read with more rights than the sandbox's own user has
(``sandboxes/source_sandbox.py``) nor fetched from the host's own or private networks
(``sandboxes/source_hosts.py``), and bounded by the stage's disk limit. The copy and git run as subprocesses, so
a cancelled provision kills them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devart.core import settings
from devart.core.contracts import Source
from devart.core.errors import SandboxError
from devart.sandboxes import source_fetch, source_hosts
from devart.sandboxes.layout import disk_usage, remove_tree
from devart.sandboxes.source_fetch import SOURCE_UNREACHABLE, GitFailed, TooBig, clone_failure
from devart.sandboxes.source_hosts import Remote

__all__ = ["COPY_IGNORED", "COPY_IGNORED_TOP", "SOURCE_UNREACHABLE", "CheckoutPlan", "GitFailed", "clone_failure",
           "materialize", "plan_checkout"]

#: URL forms treated as remote git repositories (anything else must be a local directory).
GIT_URL_PREFIXES = ("http://", "https://", "ssh://", "git://", "file://", "git@")
#: Names skipped at any depth when copying a working tree: caches and environments the sandbox rebuilds.
COPY_IGNORED = (".venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache", "node_modules",
                "*.egg-info")
#: Build outputs skipped only at the top: deeper, ``build`` or ``dist`` may be a real package (pypa/build's src/build).
COPY_IGNORED_TOP = frozenset({"dist", "build"})
@dataclass(frozen=True)
class CheckoutPlan:
    """How to materialise a source: clone ``origin`` (and check out ``ref``) or copy ``origin``.

    ``subdir`` is the part of a local git repository the caller asked for; the whole repository is cloned (so
    git works in the workspace) and commands start in that sub-directory. ``path`` is the local folder copied or
    cloned (a ``file://`` URL's path), ``also`` the git folders a clone of a linked worktree reads too, and
    ``remote`` a remote URL's checked host and addresses.
    """

    origin: str
    ref: str | None
    clone: bool
    subdir: str = ""
    path: str = ""
    also: tuple[str, ...] = ()
    remote: Remote | None = None


async def plan_checkout(source: Source) -> CheckoutPlan:
    """Decide how ``source`` is checked out, refusing what cannot work (or may not be fetched) before anything
    is created on disk."""
    ref = source.ref.strip() if source.ref is not None else None
    if ref is not None and (not ref or ref.startswith("-")):
        raise SandboxError(f"invalid git ref {source.ref!r}: give a branch, tag or commit (or none for the "
                           "working tree)")
    repo = source.repo
    if source_hosts.is_helper_url(repo):
        raise SandboxError(f"source {repo!r} asks git for a remote helper ({repo.split('::', 1)[0]}::), which "
                           "runs programs on this machine: give an http, https, ssh or git URL, or a local "
                           "directory", reason=source_hosts.SOURCE_REFUSED)
    if repo.startswith("file://"):
        return _plan_file_url(repo, ref)
    if source_hosts.is_remote(repo):
        try:
            remote = await source_hosts.check(repo, settings.source().allowed_hosts)
        except source_hosts.Unresolved as exc:
            raise clone_failure(repo, GitFailed(f"cloning {repo!r} failed: {exc}", str(exc))) from None
        return CheckoutPlan(origin=repo, ref=ref, clone=True, remote=remote)
    path = Path(repo).expanduser()
    if not path.is_dir():
        raise SandboxError(f"source repository {repo!r} does not exist or is not a directory: give an "
                           f"existing local directory or a git URL ({', '.join(GIT_URL_PREFIXES)})")
    path = path.resolve()
    if ref is None:
        return CheckoutPlan(origin=str(path), ref=None, clone=False, path=str(path))
    try:
        found = await source_fetch.git("rev-parse", "--path-format=absolute", "--show-toplevel",
                                       "--git-common-dir", cwd=path, timeout=60.0)
        toplevel, common = found.splitlines()[:2]
    except (SandboxError, ValueError):
        raise SandboxError(f"source {str(path)!r} is not inside a git repository, so ref {ref!r} cannot be "
                           "checked out: drop the ref to copy the directory as it is, or point at a git "
                           "repository") from None
    top, git_dir = Path(toplevel).resolve(), Path(common).resolve()
    subdir = path.relative_to(top).as_posix() if path != top else ""
    also = () if git_dir.is_relative_to(top) else (str(git_dir),)  # a linked worktree's repository
    return CheckoutPlan(origin=str(top), ref=ref, clone=True, subdir=subdir, path=str(top), also=also)


def _plan_file_url(url: str, ref: str | None) -> CheckoutPlan:
    """A ``file://`` URL is a local repository: cloned like one, as the sandbox user."""
    parts = urlsplit(url)
    path = Path(parts.path)
    if parts.netloc not in ("", "localhost") or not path.is_absolute():
        raise SandboxError(f"source {url!r} is not a local file URL: write file:///absolute/path")
    if not path.is_dir():
        raise clone_failure(url, GitFailed(f"cloning {url!r} failed: {path} does not exist or is not a "
                                           "directory", "does not exist"))
    return CheckoutPlan(origin=url, ref=ref, clone=True, path=str(path.resolve()))


async def materialize(plan: CheckoutPlan, dest: Path, *, exclude: Path | None = None,
                      limit_bytes: int | None = None) -> Path:
    """Create ``dest`` holding the source and return the directory commands should start in.

    A local source is read with the sandbox user's rights when devart runs as root, a remote one fetched only
    from the addresses ``plan_checkout`` checked (``sandboxes/source_fetch.py``). Whatever fails or is cancelled,
    ``dest`` is gone when this raises.

    Args:
        plan: from ``plan_checkout``.
        dest: the workspace directory; must not exist yet, and (as root) its parent belongs to the sandbox user.
        exclude: a directory never copied (the sandbox root, should it live inside the source tree).
        limit_bytes: the most the checkout may take (the stage's disk limit); None for no limit.
    """
    if os.path.lexists(dest):
        raise SandboxError(f"cannot create the workspace at {dest}: it exists already")
    hide = [*([exclude] if exclude is not None else []), settings.state().root]  # never seen by a copy or clone
    try:
        if not plan.clone:
            await _copy(plan, dest, exclude, limit_bytes, hide)
            return dest
        await _clone(plan, dest, limit_bytes, hide)
        workdir = dest / plan.subdir if plan.subdir else dest
        if not workdir.is_dir() or not workdir.resolve().is_relative_to(dest.resolve()):  # a symlink leads out
            raise SandboxError(f"{plan.subdir!r} does not exist in {plan.origin!r} at ref {plan.ref!r}: pick a "
                               "ref that contains it")
        return workdir
    except BaseException:
        await asyncio.to_thread(_discard, dest)
        raise


async def _copy(plan: CheckoutPlan, dest: Path, exclude: Path | None, limit: int | None, hide: list[Path]) -> None:
    """Copy a working tree, leaving out ``COPY_IGNORED``, ``COPY_IGNORED_TOP`` and ``exclude``."""
    src = Path(plan.path or plan.origin)
    skip = exclude.relative_to(src).as_posix() if exclude is not None and exclude.is_relative_to(src) else ""
    options = {"limit": limit or 0, "ignore": list(COPY_IGNORED), "ignore_top": sorted(COPY_IGNORED_TOP),
               "exclude": skip if skip != "." else ""}
    await _fetching(plan.origin, limit, source_fetch.copy_tree(src, dest, options=options, hide=hide))


async def _clone(plan: CheckoutPlan, dest: Path, limit: int | None, hide: list[Path]) -> None:
    """Clone a remote or local repository and check out the plan's ref."""
    over = _watch(dest, limit)
    if plan.remote is not None:
        await _fetching(plan.origin, limit, source_fetch.clone_remote(plan.remote, dest, over=over), clone=True)
        if plan.ref is not None:
            await _checking_out(plan, limit, source_fetch.checkout_remote(plan.remote, plan.ref, dest, over=over))
        return
    src = Path(plan.path or plan.origin)
    also = [Path(path) for path in plan.also]
    await _fetching(plan.origin, limit, source_fetch.clone_local(plan.origin, src, dest, also=also, hide=hide,
                                                                 over=over), clone=True)
    if plan.ref is not None:
        await _checking_out(plan, limit, source_fetch.checkout_local(plan.ref, src, dest, hide=hide, over=over))


async def _fetching(origin: str, limit: int | None, fetch: Awaitable[None], clone: bool = False) -> None:
    """Await a copy or clone; a clone's failure is said as ``clone_failure`` classifies it."""
    try:
        await fetch
    except TooBig:
        raise _too_big(origin, limit) from None
    except GitFailed as exc:
        if "no space left on device" in exc.stderr.lower():
            raise _too_big(origin, limit) from None
        raise clone_failure(origin, exc) from None
    except SandboxError as exc:
        raise clone_failure(origin, exc) if clone else exc from None


async def _checking_out(plan: CheckoutPlan, limit: int | None, checkout: Awaitable[None]) -> None:
    """Await a checkout; its failure is said as a missing ref (or the disk limit)."""
    try:
        await checkout
    except TooBig:
        raise _too_big(plan.origin, limit) from None
    except SandboxError as exc:
        if isinstance(exc, GitFailed) and "no space left on device" in exc.stderr.lower():
            raise _too_big(plan.origin, limit) from None
        raise SandboxError(f"ref {plan.ref!r} not found in {plan.origin}: check that the branch, tag or commit "
                           f"exists (and for a remote, that it was pushed). {exc}") from None


def _too_big(origin: str, limit: int | None) -> SandboxError:
    said = f"the sandbox's disk limit of {limit / (1 << 20):g} MiB" if limit else "the sandbox's disk"
    return SandboxError(f"source is larger than {said} ({origin} does not fit): raise the stage's disk_mb, or leave "
                        "big files out of the source", reason="SourceTooLarge")


def _watch(dest: Path, limit: int | None) -> Callable[[], bool] | None:
    """What tells a clone has outgrown ``limit``: nothing when the volume is a tmpfs of that size (the kernel
    refuses the write), else a measure of ``dest``."""
    if limit is None or os.path.ismount(dest.parent):
        return None
    return lambda: disk_usage([dest]) > limit


def _discard(dest: Path) -> None:
    """Remove what a failed or cancelled checkout left (nothing runs in it any more)."""
    if os.path.lexists(dest):
        remove_tree(dest)
