"""Where a run's source may come from, checked when the run is asked for, before anything is recorded.

A git URL of an allowed scheme (http(s), ssh, git, file, or ``git@host:``), or an absolute path to a directory in a
folder runs may use (``DEVART_SOURCE_LOCAL_ROOTS``; by default the project the state folder belongs to). Nothing
that reads as a command-line option reaches git. The sandbox checks again when it fetches (remote hosts must be
public, ``sandboxes/source_hosts.py``; local copies are read with the sandbox user's rights).
"""

from __future__ import annotations

import re
from pathlib import Path

from devart.core import settings
from devart.core.contracts import Source
from devart.core.errors import InvalidPipeline

GIT_URL = re.compile(r"^(https?://|git@|ssh://|file://|git://)")


def check_source(repo: str, ref: str | None) -> Source:
    """A git URL, or an absolute path to an existing directory in a folder runs may use; anything else is refused
    up front. Nothing that reads as a command-line option reaches git (``--upload-pack=…``, ``-o…``)."""
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
    return Source(repo=repo, ref=ref or None)
