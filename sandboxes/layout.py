"""A local sandbox's directory on disk: its layout, ``meta.json``, the handles read back from it, its removal.

Kept apart from ``sandboxes/workspace.py``, which checks the source out into the directory, and from
``sandboxes/local.py``, which runs commands in it. These helpers are blocking: callers run them with
``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

from devart.core.contracts import SandboxHandle, SandboxSpec


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
