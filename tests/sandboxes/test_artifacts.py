"""Files handed on between a run's stages: they reach the run's later sandboxes and nothing else.

The copy into a new workspace runs as root before any command, into a checkout the repository controls, so a
symbolic link committed at ``.devart`` or ``.devart/artifacts`` must not make it write anywhere else.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devart.core.contracts import SandboxSpec, Source
from devart.sandboxes import artifacts
from devart.sandboxes.local import LocalSandbox

WHEEL = "proj-1.0-py3-none-any.whl"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[LocalSandbox]:
    """A backend whose sandboxes are torn down after the test: as root each holds a mounted volume."""
    if shutil.which("bwrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bubblewrap (bwrap) is required under CI")
        pytest.skip("bubblewrap (bwrap) is not installed")
    backend = LocalSandbox(tmp_path / "sandboxes")
    yield backend
    for handle in await backend.list():
        await backend.teardown(handle)


async def test_a_runs_later_sandboxes_get_its_files_and_other_runs_do_not(sandbox: LocalSandbox,
                                                                          tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    first = await sandbox.provision(run_id, "build", Source(repo=str(repo)), SandboxSpec())
    assert await sandbox.store_artifact(first, WHEEL, b"wheel bytes")
    later = await sandbox.provision(run_id, "test", Source(repo=str(repo)), SandboxSpec())
    other = await sandbox.provision(f"run-{uuid.uuid4().hex[:8]}", "test", Source(repo=str(repo)), SandboxSpec())
    assert (Path(later.workspace) / artifacts.IN_WORKSPACE / WHEEL).read_bytes() == b"wheel bytes"
    assert not (Path(other.workspace) / artifacts.IN_WORKSPACE).exists()
    # A name that is not one plain file name, or a file over the limit, is refused
    assert not await sandbox.store_artifact(first, "../escape.whl", b"x")
    assert not await sandbox.store_artifact(first, WHEEL, b"x" * (artifacts.MAX_BYTES + 1))
    assert sandbox.remove_artifacts(keep=set()) and not artifacts.runs(sandbox.root)


@pytest.mark.parametrize("planted", [".devart", ".devart/artifacts", f".devart/artifacts/{WHEEL}"])
async def test_a_symlink_in_the_checkout_cannot_redirect_the_copy(sandbox: LocalSandbox, tmp_path: Path,
                                                                  planted: str) -> None:
    # Given a repository whose checkout carries a symbolic link where the artifacts go, pointing at a host folder
    target = tmp_path / "host-folder"
    target.mkdir()
    repo = tmp_path / "repo"
    (repo / planted).parent.mkdir(parents=True, exist_ok=True)
    (repo / planted).symlink_to(target / WHEEL if planted.endswith(".whl") else target)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    first = await sandbox.provision(run_id, "build", Source(repo=str(repo)), SandboxSpec())
    assert await sandbox.store_artifact(first, WHEEL, b"wheel bytes")
    # When a later stage's sandbox is provisioned
    later = await sandbox.provision(run_id, "test", Source(repo=str(repo)), SandboxSpec())
    # Then the host folder is untouched, and the workspace holds a real folder with the file
    assert list(target.iterdir()) == []
    copied = Path(later.workspace) / artifacts.IN_WORKSPACE
    assert not copied.is_symlink() and not copied.parent.is_symlink()
    assert (copied / WHEEL).read_bytes() == b"wheel bytes" and not (copied / WHEEL).is_symlink()


def test_the_largest_artifact_fits_what_a_skill_reads_back() -> None:
    from devart.workers.skills.common import DATA_OUTPUT_CAP

    assert -(-artifacts.MAX_BYTES // 3) * 4 <= DATA_OUTPUT_CAP  # base64 of the largest file the store keeps
