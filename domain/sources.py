"""Where a run's source may come from, checked when the run is asked for, before anything is recorded.

A git URL of an allowed scheme (http(s), ssh, git, file, or ``git@host:``), or an absolute path to a directory in a
folder runs may use (``DEVART_SOURCE_LOCAL_ROOTS``; by default the project the state folder belongs to). Nothing
that reads as a command-line option reaches git. An organisation's admin narrows both (``SourcePolicy``): its runs'
local sources to some of those folders, its remote ones to named hosts. The sandbox checks again when it fetches
(remote hosts must be public, ``sandboxes/source_hosts.py``; local copies are read with the sandbox user's rights).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devart.core import settings
from devart.core.contracts import Source
from devart.core.errors import InvalidPipeline

GIT_URL = re.compile(r"^(https?://|git@|ssh://|file://|git://)")
HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


@dataclass(frozen=True)
class SourcePolicy:
    """An organisation's narrowing of where its runs' sources may come from; empty lists narrow nothing."""

    roots: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()


def remote_host(repo: str) -> str:
    """The host of a git URL (``https://host/…``, ``ssh://user@host:port/…``, ``git@host:owner/repo``)."""
    if repo.startswith("git@"):
        return repo.removeprefix("git@").split(":", 1)[0].lower()
    return (urlsplit(repo).hostname or "").lower()


def check_policy(policy: SourcePolicy) -> SourcePolicy:
    """An admin's policy, checked: roots absolute and within the operator's folders, hosts plain host names."""
    operator = settings.source().roots(settings.state().root)
    problems = []
    for root in policy.roots:
        path = Path(root)
        if not path.is_absolute() or not any(path.resolve().is_relative_to(r) for r in operator):
            problems.append(f"source root '{root}' must be an absolute folder within the operator's "
                            f"({', '.join(map(str, operator))})")
    problems += [f"source host '{h}' is not a host name" for h in policy.hosts if not HOST.fullmatch(h)]
    if problems:
        raise InvalidPipeline("sources", problems)
    return SourcePolicy(tuple(str(Path(r).resolve()) for r in policy.roots), tuple(h.lower() for h in policy.hosts))


def check_source(repo: str, ref: str | None, policy: SourcePolicy = SourcePolicy()) -> Source:
    """A git URL, or an absolute path to an existing directory in a folder runs may use; anything else is refused
    up front. Nothing that reads as a command-line option reaches git (``--upload-pack=…``, ``-o…``). The
    organisation's policy narrows the folders and the hosts."""
    for what, value in (("repository", repo), ("ref", ref or "")):
        if value.startswith("-"):
            raise InvalidPipeline("run", [f"{what} {value!r} starts with '-': give a URL, a path, a branch, a tag or "
                                          "a commit"])
    if not GIT_URL.match(repo) or repo.startswith("file://"):
        path = Path(repo.removeprefix("file://"))
        if not path.is_absolute():
            raise InvalidPipeline("run", [f"repository path '{repo}' must be absolute (or a git URL)"])
        if not repo.startswith("file://") and not path.is_dir():  # a file:// URL's repository is the clone's to find
            raise InvalidPipeline("run", [f"repository path '{repo}' does not exist or is not a directory"])
        roots = settings.source().roots(settings.state().root)
        if not any(path.resolve().is_relative_to(root) for root in roots):
            raise InvalidPipeline("run", [f"repository path '{repo}' is outside the folders runs may use "
                                          f"({', '.join(map(str, roots))}); an operator allows more with "
                                          "DEVART_SOURCE_LOCAL_ROOTS"])
        if policy.roots and not any(path.resolve().is_relative_to(root) for root in policy.roots):
            raise InvalidPipeline("run", [f"repository path '{repo}' is outside the folders this organisation's "
                                          f"runs may use ({', '.join(policy.roots)}); its admin sets them"])
    elif policy.hosts and remote_host(repo) not in policy.hosts:
        raise InvalidPipeline("run", [f"repository host '{remote_host(repo)}' is not one this organisation's runs "
                                      f"may use ({', '.join(policy.hosts)}); its admin sets them"])
    return Source(repo=repo, ref=ref or None)
