"""A run's local source is read with the sandbox user's rights, never root's: real copies and clones, no mocks.

As root with bubblewrap, ``materialize`` copies and clones as uid 65534 in a sandbox of its own; these tests give
it what an attacker would (``/etc``, ``/dev``, root-only folders, links to ``/etc/shadow``, FIFOs, an endless
source) and check what lands in the workspace.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from devart.core.contracts import Source
from devart.core.errors import SandboxError
from devart.sandboxes import volumes
from devart.sandboxes.bubblewrap import SANDBOX_UID
from devart.sandboxes.source_copy import Copy, encode_options, read_report
from devart.sandboxes.source_sandbox import Jail, copier_source
from devart.sandboxes.workspace import materialize, plan_checkout
from tests.helpers import poll

MIB = 1 << 20
#: Seconds a cancelled copy may take to be gone, processes and files.
CANCEL_DEADLINE = 5.0


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The workspace to create, in a folder of the sandbox user's (as a sandbox's volume is).

    It lies under pytest's 0700 ``/tmp/pytest-of-root``, as do the sources: only bubblewrap's binds reach them.
    """
    parent = tmp_path / "volume"
    parent.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(parent, SANDBOX_UID, SANDBOX_UID)
    if os.geteuid() != 0 or Jail.detect(parent / "workspace") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("these tests run as root with bubblewrap under CI")
        pytest.skip("reading sources as the sandbox user needs root and bubblewrap (bwrap)")
    return parent / "workspace"


@pytest.fixture
def jail(dest: Path) -> Jail:
    """The sandbox a source is read in (these tests need it)."""
    found = Jail.detect(dest)
    assert found is not None
    return found


@contextmanager
def volume(box: Path, size_mb: int) -> Iterator[Path]:
    """A real sandbox volume in ``box``: a tmpfs of ``size_mb`` owned by the sandbox user; yields its workspace.

    ``meta.json`` first, as for a real sandbox: without it any backend starting meanwhile unmounts the volume as
    an orphan.
    """
    box.mkdir()
    (box / "meta.json").write_text("{}")
    volumes.create(box, size_mb, SANDBOX_UID)
    try:
        yield volumes.workspace(box)
    finally:
        volumes.release(box)


async def checkout(repo: str | Path, dest: Path, ref: str | None = None, limit: int | None = None) -> Path:
    return await materialize(await plan_checkout(Source(repo=str(repo), ref=ref)), dest, limit_bytes=limit)


def entries(root: Path) -> dict[str, os.stat_result]:
    """Every path under ``root`` (relative) with its ``lstat``, links not followed."""
    found = {}
    for folder, folders, files in os.walk(root):
        for name in [*folders, *files]:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.lstat(path)
    return found


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=devart", "-c", "user.email=devart@example.com",
                           "-c", "safe.directory=*", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def leftovers(marker: str) -> list[psutil.Process]:
    """Processes whose command line mentions ``marker`` (a path only this test uses)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in process.info["cmdline"] or []) and process.pid != os.getpid():
            found.append(process)
    return found


async def test_a_copy_of_etc_holds_nothing_only_root_may_read(dest: Path) -> None:
    shadow = Path("/etc/shadow")
    if not shadow.exists():
        pytest.skip("this machine has no /etc/shadow")
    workspace = await checkout("/etc", dest, limit=256 * MIB)

    assert (workspace / "passwd").read_bytes() == Path("/etc/passwd").read_bytes()  # the copy works
    assert not (workspace / "shadow").exists()
    secret = shadow.read_bytes()
    copied = entries(workspace)
    assert copied
    for relative, info in copied.items():
        assert info.st_uid == SANDBOX_UID, relative
        if stat.S_ISREG(info.st_mode):
            assert os.stat(Path("/etc") / relative).st_mode & stat.S_IROTH, f"{relative} is not world-readable"
            assert (workspace / relative).read_bytes() != secret


async def test_root_only_files_and_folders_are_not_handed_over(
        dest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "private").mkdir(mode=0o700)
    (src / "private" / "token").write_text("s3cret")
    (src / ".env").write_text("PASSWORD=s3cret")
    os.chmod(src / ".env", 0o600)

    with caplog.at_level(logging.WARNING, logger="devart.sandboxes.source_fetch"):
        workspace = await checkout(src, dest)

    assert sorted(entries(workspace)) == ["pkg", "pkg/mod.py"]
    assert "left out 2 files or folders" in caplog.text and "private" in caplog.text


async def test_hostile_file_names_are_copied_and_reported_as_they_are(
        dest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Names the source chooses reach the worker only inside the copier's report: quotes, newlines, braces, code
    and bytes that are not UTF-8 are copied (readable) or named (unreadable) unchanged, and never run."""
    src = tmp_path / "src"
    src.mkdir()
    names = [b"a\nb", b"it's \"q\"", b"{'files': 99}", b"__import__('os').system('id')", b"bad\xff"]
    for name in names:
        with open(os.path.join(os.fsencode(src), name), "wb") as f:
            f.write(b"readable")
        hidden = os.path.join(os.fsencode(src), b"root-" + name)
        with open(hidden, "wb") as f:
            f.write(b"secret")
        os.chmod(hidden, 0o600)

    with caplog.at_level(logging.WARNING, logger="devart.sandboxes.source_fetch"):
        workspace = await checkout(src, dest)

    assert sorted(os.listdir(os.fsencode(workspace))) == sorted(names)
    assert f"left out {len(names)} files or folders" in caplog.text
    assert "root-it's" in caplog.text and "root-{'files': 99}" in caplog.text


async def test_a_source_folder_the_sandbox_user_cannot_read_is_refused(dest: Path, tmp_path: Path) -> None:
    # An empty workspace would give a verdict on nothing: the provision fails and names the folder
    src = tmp_path / "src"
    src.mkdir(mode=0o700)
    (src / "notes.txt").write_text("s3cret")
    os.chmod(src / "notes.txt", 0o644)  # readable, but only through a folder the sandbox user cannot enter
    with pytest.raises(SandboxError, match=r"cannot be read by the sandbox user \(uid 65534\).*chmod o\+rX"):
        await checkout(src, dest)


async def test_devices_fifos_and_sockets_are_skipped_never_opened(dest: Path, tmp_path: Path) -> None:
    # Given a source whose FIFO would block a reader forever and whose device never ends
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("kept\n")
    os.mkfifo(src / "fifo")
    os.mknod(src / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
    os.mknod(src / "loop", stat.S_IFBLK | 0o666, os.makedev(7, 0))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(src / "socket"))
        # When it is copied
        workspace = await asyncio.wait_for(checkout(src, dest), 30)
    # Then only the regular file arrives
    assert sorted(entries(workspace)) == ["keep.txt"]


async def test_copying_dev_copies_no_device_and_ends(dest: Path) -> None:
    started = time.monotonic()
    workspace = await asyncio.wait_for(checkout("/dev", dest, limit=64 * MIB), 30)
    assert time.monotonic() - started < 30
    kinds = {stat.S_IFMT(info.st_mode) for info in entries(workspace).values()}
    assert kinds <= {stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK}


async def test_links_stay_links(dest: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "shadow").symlink_to("/etc/shadow")
    (src / "etc").symlink_to("/etc")
    (src / "self").symlink_to("self")
    workspace = await checkout(src, dest)
    assert {name: os.readlink(workspace / name) for name in os.listdir(workspace)} == {
        "shadow": "/etc/shadow", "etc": "/etc", "self": "self"}


async def test_a_source_larger_than_the_limit_fails_and_leaves_nothing(dest: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3 * MIB))
    with pytest.raises(SandboxError, match=r"source is larger than the sandbox's disk limit of 2 MiB") as caught:
        await checkout(src, dest, limit=2 * MIB)
    assert not caught.value.retryable and not dest.exists()

    # A sparse file of a terabyte is refused from its size, without reading it
    (src / "big.bin").unlink()
    (src / "huge.bin").touch()
    os.truncate(src / "huge.bin", 1 << 40)
    started = time.monotonic()
    with pytest.raises(SandboxError, match=r"source is larger than the sandbox's disk limit of 2 MiB"):
        await checkout(src, dest, limit=2 * MIB)
    assert time.monotonic() - started < 10 and not dest.exists()


@pytest.fixture
def big_repo(tmp_path: Path) -> Path:
    """A git repository holding 3 MiB that do not compress."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "big.bin").write_bytes(os.urandom(3 * MIB))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "big")
    return path


async def test_a_clone_larger_than_the_limit_fails(big_repo: Path, dest: Path) -> None:
    with pytest.raises(SandboxError, match=r"source is larger than the sandbox's disk limit of 2 MiB"):
        await checkout(big_repo, dest, ref="main", limit=2 * MIB)
    assert not dest.exists()


async def test_a_clone_into_a_full_volume_fails_with_the_limit(big_repo: Path, tmp_path: Path, jail: Jail) -> None:
    with volume(tmp_path / "box", 2) as dest:
        with pytest.raises(SandboxError, match=r"source is larger than the sandbox's disk limit of 2 MiB"):
            await checkout(big_repo, dest, ref="main", limit=2 * MIB)
        assert not dest.exists()


async def test_a_local_clone_runs_as_the_sandbox_user(big_repo: Path, dest: Path) -> None:
    head = git(big_repo, "rev-parse", "HEAD")
    workspace = await checkout(big_repo, dest, ref="main", limit=64 * MIB)
    assert git(workspace, "rev-parse", "HEAD") == head
    assert git(workspace, "remote", "get-url", "origin") == str(big_repo)  # not the mount point it was read from
    assert {info.st_uid for info in entries(workspace).values()} == {SANDBOX_UID}


async def test_a_linked_worktree_is_cloned(big_repo: Path, dest: Path, tmp_path: Path) -> None:
    git(big_repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))
    workspace = await checkout(tmp_path / "side", dest, ref="side", limit=64 * MIB)
    assert (workspace / "big.bin").stat().st_size == 3 * MIB


async def test_cancelling_a_copy_stops_it_promptly_and_leaves_nothing(tmp_path: Path, jail: Jail) -> None:
    # Given a copy of 8 GiB (sparse: nothing on disk) into a real 2 GiB volume, with no limit of its own
    src = tmp_path / "huge"
    src.mkdir()
    for index in range(8):
        with open(src / f"{index}.bin", "wb") as handle:
            handle.truncate(1 << 30)
    box = tmp_path / "box"
    with volume(box, 2048) as dest:
        task = asyncio.create_task(checkout(src, dest))

        async def copying() -> bool:
            return any(dest.glob("*.bin")) if dest.is_dir() else False

        await poll(copying, deadline=15, what="the copy to start", every=0.02)
        # When the provision is cancelled mid-copy
        started = time.monotonic()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CANCEL_DEADLINE)
        # Then it is gone within the deadline: no process, no workspace
        assert task in done and task.cancelled(), "the copy went on after its cancellation"
        assert time.monotonic() - started < CANCEL_DEADLINE
        assert not dest.exists()
        assert leftovers(str(box)) == []


def test_the_copier_alone_follows_the_same_rules(tmp_path: Path) -> None:
    """Without root or bubblewrap the copier runs as this user: same file types, same limit."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    os.mkfifo(src / "fifo")
    (src / "link").symlink_to("/etc/shadow")
    command = [sys.executable, "-I", "-S", "-c", copier_source(), str(src), str(tmp_path / "out")]
    done = subprocess.run([*command, encode_options({"limit": 64 * MIB})], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert read_report(done.stdout).special == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["a.txt", "link"]

    (src / "big.bin").write_bytes(b"x" * (2 * MIB))
    over = subprocess.run([*command[:-1], str(tmp_path / "out2"), encode_options({"limit": MIB})], capture_output=True,
                          text=True, timeout=30)
    assert over.returncode == 3 and "over the limit" in over.stderr


def test_the_copier_ignores_what_fnmatch_would_without_importing_it(tmp_path: Path) -> None:
    """Plain names and ``*suffix`` patterns are matched by name and suffix; any other glob still goes to fnmatch."""
    src = tmp_path / "src"
    for folder in (".venv", "pkg.egg-info", "pyc"):
        (src / folder).mkdir(parents=True)
    for file in ("x.pyc", ".pyc", "keep.py", "a1.txt", "ab.txt"):
        (src / file).write_text(file)
    patterns = [".venv", "*.pyc", "*.egg-info", "a[0-9]*"]
    command = [sys.executable, "-I", "-S", "-c", copier_source(), str(src), str(tmp_path / "out"),
               encode_options({"ignore": patterns})]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    kept = sorted(os.listdir(tmp_path / "out"))
    assert kept == sorted(name for name in os.listdir(src) if not any(fnmatch.fnmatch(name, p) for p in patterns))
    assert kept == ["ab.txt", "keep.py", "pyc"]


def test_the_copiers_report_reads_back_any_file_name() -> None:
    """Names come from the source: quotes, newlines and bytes that are not UTF-8 survive the report unchanged."""
    names = ["a\nb", "it's \"quoted\"", "caf\u00e9", "bad\udcff", "{'files': 1}"]
    printed = ascii({"files": 2, "bytes": 8192, "unreadable": 7, "unreadable_paths": names, "special": 1})
    report = read_report(printed + "\n")
    assert (report.files, report.bytes, report.unreadable, report.special) == (2, 8192, 7, 1)
    assert report.unreadable_paths == names
    with pytest.raises(ValueError):
        read_report("__import__('os').system('true')")


def test_a_folder_swapped_for_a_link_mid_copy_is_not_followed(tmp_path: Path) -> None:
    """The copier walks the source by descriptor: a folder listed, then swapped for a link before its files are
    copied, is skipped. A path would follow the link, and from the service's ``/proc/self/fd`` source a relative
    link leads into the host's folders."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "a_sub").mkdir(parents=True)
    (src / "a_sub" / "secret.txt").write_text("inside\n")
    (src / "z.txt").write_text("z\n")
    outside.mkdir()
    (outside / "secret.txt").write_text("outside\n")

    class Swapping(Copy):
        """Swaps ``a_sub`` for a link to ``../outside`` once it has been listed (before ``z.txt`` is copied)."""

        def poll(self) -> None:
            if (src / "a_sub").is_dir() and not (src / "a_sub").is_symlink() and (tmp_path / "out").is_dir() \
                    and (tmp_path / "out" / "a_sub").is_dir():
                os.rename(src / "a_sub", tmp_path / "moved")
                (src / "a_sub").symlink_to("../outside")

    copy = Swapping()
    copy.run(str(src), str(tmp_path / "out"))
    assert (src / "a_sub").is_symlink()  # the swap happened mid-copy
    assert not (tmp_path / "out" / "a_sub" / "secret.txt").exists()
    assert copy.unreadable == 1 and copy.unreadable_paths == ["a_sub"]
    assert (tmp_path / "out" / "z.txt").read_text() == "z\n"
