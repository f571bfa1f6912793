"""Files a stage hands on to the later stages of its run, such as the wheel the build stage made for the tests.

The local backend keeps them under ``<sandbox root>/.artifacts/<run id>/`` (a name no sandbox id can take, and
hidden from every sandbox like the rest of the root) and copies them into each new sandbox of the same run, at
``.devart/artifacts/`` in its workspace. The agent stores them from bytes it read through the sandbox, never by
following a path the sandbox controls, so a symbolic link in the workspace cannot make it copy a host file; the
copy into a new workspace first replaces whatever the checkout has on that path, so a link there cannot make it
write one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

#: The store's folder under the sandbox root.
STORE = ".artifacts"
#: Where a sandbox finds its run's artifacts, relative to its workspace.
IN_WORKSPACE = ".devart/artifacts"
#: Largest artifact kept (a larger wheel is not passed on; the test stage then installs from source). The agent
#: reads it through the sandbox as base64, which must fit the skills' data output cap (20 MB): 14 MiB does.
MAX_BYTES = 14 << 20
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$")


def _run_folder(root: Path, run_id: str) -> Path:
    if not _NAME.match(run_id):
        raise ValueError(f"not a valid run id for an artifact folder: {run_id!r}")
    return root / STORE / run_id


def store(root: Path, run_id: str, name: str, data: bytes) -> Path:
    """Keep ``data`` as ``name`` for the run's later stages; written whole or not at all."""
    if not _NAME.match(name):
        raise ValueError(f"not a valid artifact name: {name!r}")
    if len(data) > MAX_BYTES:
        raise ValueError(f"artifact {name!r} is {len(data)} bytes, over the limit of {MAX_BYTES}")
    folder = _run_folder(root, run_id)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / name


def copy_into(root: Path, run_id: str, workdir: Path) -> list[str]:
    """Copy the run's artifacts into ``workdir/.devart/artifacts``; the names copied."""
    folder = _run_folder(root, run_id)
    if not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink() and _NAME.match(p.name)
                   and not p.name.startswith(".tmp-"))
    if not names:
        return []
    dest = _fresh_folder(workdir, IN_WORKSPACE)
    for name in names:
        shutil.copyfile(folder / name, dest / name)
    return names


def _fresh_folder(workdir: Path, relative: str) -> Path:
    """``workdir/relative`` as new, real folders: whatever the checkout put on that path goes first.

    This runs as root before any command, in a checkout the repository controls: a symbolic link committed at
    ``.devart`` or below would otherwise lead the copy to a host folder. Nothing runs in the sandbox yet, so
    nothing can put one back before the copy.
    """
    path = workdir
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        elif path.is_dir() and path == workdir / relative:
            shutil.rmtree(path)
        path.mkdir(exist_ok=True)
    return path


def runs(root: Path) -> list[str]:
    """The runs that have artifacts stored."""
    store_dir = root / STORE
    return sorted(p.name for p in store_dir.iterdir() if p.is_dir()) if store_dir.is_dir() else []


def remove(root: Path, run_id: str) -> None:
    """Drop a run's artifacts (when the run has ended)."""
    shutil.rmtree(_run_folder(root, run_id), ignore_errors=True)
