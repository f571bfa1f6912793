"""Fetching a run's source into a new workspace: copying a working tree, cloning a local or a remote repository.

``workspace.materialize`` chooses which and says what a failure means; this module runs the jobs. A local source
is read as the sandbox user when devart runs as root (``sandboxes/source_sandbox.py``); a remote one is cloned by
git on the host, held to the addresses and the transport ``sandboxes/source_hosts.py`` checked. Failures come
back raw: ``GitFailed`` with git's words, ``TooBig`` for a destination past its limit, ``SandboxError`` else;
``clone_failure`` says whether a failed clone is worth retrying.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from devart.core.errors import SandboxError
from devart.sandboxes import copy_service, source_copy
from devart.sandboxes.bubblewrap import SANDBOX_UID
from devart.sandboxes.source_hosts import Remote
from devart.sandboxes.source_sandbox import Jail, JobResult, TooBig, placement, run_confined, run_job

log = logging.getLogger(__name__)

#: Seconds a clone or checkout may take; a hung server or a huge repository fails the provision instead.
GIT_TIMEOUT = 600.0
#: Seconds a copy of a local working tree may take (a slow or endless source fails the provision).
COPY_TIMEOUT = 600.0
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
#: Only local clones: a source repository's configuration can't send git anywhere else.
_LOCAL_ONLY = ("-c", "protocol.allow=never", "-c", "protocol.file.allow=always")

__all__ = ["COPY_TIMEOUT", "GIT_TIMEOUT", "SOURCE_UNREACHABLE", "GitFailed", "TooBig", "checkout_local",
           "checkout_remote", "clone_failure", "clone_local", "clone_remote", "copy_tree", "git"]


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


async def copy_tree(src: Path, dest: Path, *, options: dict[str, object], hide: Sequence[Path]) -> None:
    """Copy a working tree with the copier service (``sandboxes/copy_service.py``; ``options`` are the copier's),
    as the sandbox user when devart runs as root.

    Files the sandbox user may not read, and devices, FIFOs and sockets, are left out and logged (the copier's
    docstring says why); an unreadable source folder, a source past the limit (``TooBig``) or any other failure
    raises.
    """
    jail = Jail.detect(dest)
    result = await copy_service.service(jail, hide).copy(src, dest, options, what=f"copying {str(src)!r}",
                                                         timeout=COPY_TIMEOUT)
    said = result.stderr.strip().splitlines()[0] if result.stderr.strip() else f"exit code {result.returncode}"
    if result.returncode == source_copy.OVER_LIMIT:
        raise TooBig(f"copying {str(src)!r} stopped: {said}")
    if result.returncode == copy_service.NO_ANSWER:  # nothing wrong with the source: a new service tries again
        raise SandboxError(f"copying {str(src)!r} was cut short: the copier service stopped before it answered; "
                           "the next try gets a new one", retryable=True, reason="CopierStopped")
    if result.returncode != 0:
        raise SandboxError(f"copying {str(src)!r} into the sandbox failed: {said}. Check the files are readable "
                           "and the disk has room")
    report = source_copy.read_report(result.stdout)
    if "." in report.unreadable_paths:  # an empty workspace would give a verdict on nothing
        who = f"the sandbox user (uid {SANDBOX_UID})" if jail is not None else "this user"
        raise SandboxError(f"source {str(src)!r} cannot be read by {who}: make the folder readable (chmod o+rX) "
                           "or point at one that is")
    if report.unreadable or report.special:
        who = f"the sandbox user (uid {SANDBOX_UID})" if jail is not None else "this user"
        log.warning("copying %s left out %d files or folders %s may not read (%s) and %d devices, FIFOs or "
                    "sockets: make them readable (chmod o+rX) if the stage needs them", src, report.unreadable,
                    who, ", ".join(report.unreadable_paths), report.special)


async def clone_local(origin: str, src: Path, dest: Path, *, also: Sequence[Path], hide: Sequence[Path],
                      over: Callable[[], bool] | None) -> None:
    """Clone the local repository ``src`` into ``dest`` (``--no-hardlinks``: the sandbox must never touch the
    operator's objects); its ``origin`` remote names ``origin``, what the run asked for."""
    jail = Jail.detect(dest)
    place = placement(src, dest, jail)
    await _local_git(jail, src, dest, ["clone", "--quiet", "--no-hardlinks", "--", str(place.source),
                                       str(place.destination)], f"cloning {origin!r}", also, hide, over)
    if jail is not None:  # the clone's origin is the mount point
        await _local_git(jail, src, dest, ["-C", str(place.destination), "remote", "set-url", "origin", origin],
                         "naming the origin", also, hide, over)


async def checkout_local(ref: str, src: Path, dest: Path, *, hide: Sequence[Path],
                         over: Callable[[], bool] | None) -> None:
    """Check out ``ref`` in the clone ``dest`` of ``src``, as the user who cloned it."""
    jail = Jail.detect(dest)
    place = placement(src, dest, jail)
    await _local_git(jail, src, dest, ["-C", str(place.destination), "checkout", "--quiet", ref, "--"],
                     f"git checkout {ref}", (), hide, over)


async def _local_git(jail: Jail | None, src: Path, dest: Path, args: list[str], what: str, also: Sequence[Path],
                     hide: Sequence[Path], over: Callable[[], bool] | None) -> None:
    result = await run_confined(jail, src, dest, ["git", *_LOCAL_ONLY, *args], what=what, timeout=GIT_TIMEOUT,
                                direct_env=git_env(), also=also, hide=hide, over=over)
    _check(result, what)


async def clone_remote(remote: Remote, dest: Path, *, over: Callable[[], bool] | None) -> None:
    """Clone ``remote`` into ``dest`` from the checked addresses only, over its own transport, without redirects."""
    env = _remote_env(remote)
    await git(*remote.git_options(), "clone", "--quiet", "--", remote.clone_url(), str(dest),
              what=f"cloning {remote.url!r}", env=env, over=over)
    if remote.clone_url() != remote.url:  # a git:// URL was rewritten to the address: name what the run asked for
        await git("remote", "set-url", "origin", remote.url, cwd=dest, env=env)


async def checkout_remote(remote: Remote, ref: str, dest: Path, *, over: Callable[[], bool] | None) -> None:
    """Check out ``ref`` in the clone ``dest`` (a partial clone could fetch more: still only from ``remote``)."""
    await git(*remote.git_options(), "checkout", "--quiet", ref, "--", cwd=dest, env=_remote_env(remote), over=over)


def _remote_env(remote: Remote) -> dict[str, str]:
    env = git_env()
    if (ssh := remote.ssh_command(env)) is not None:
        env["GIT_SSH_COMMAND"] = ssh
    return env


def git_env() -> dict[str, str]:
    """Git must fail instead of prompting: no terminal is watching a provision."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


async def git(*args: str, cwd: Path | None = None, timeout: float = GIT_TIMEOUT, what: str | None = None,
              env: dict[str, str] | None = None, over: Callable[[], bool] | None = None) -> str:
    """Run git on the host as this user, returning stdout; a failure or timeout raises ``SandboxError`` carrying
    git's own message (``GitFailed``), ``TooBig`` when ``over()`` says its output outgrew its limit."""
    what = what or "git " + " ".join(args)
    result = await run_job(["git", *args], what=what, timeout=timeout, env=env or git_env(), over=over,
                           cwd=cwd or "/")
    _check(result, what)
    return result.stdout


def _check(result: JobResult, what: str) -> None:
    """Raise ``GitFailed`` for a git that exited non-zero, carrying what it said."""
    if result.returncode != 0:
        stderr = result.stderr.strip()
        first = stderr.splitlines()[0] if stderr else f"exit code {result.returncode}"  # the rest is boilerplate
        raise GitFailed(f"{what} failed: {first}", stderr)
