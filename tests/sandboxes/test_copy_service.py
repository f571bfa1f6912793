"""The copier service: one confined process per worker, a forked copy per request, started again when it dies.

Real copies through the real service (bubblewrap and the sandbox user as root, this user otherwise); what a copy
may read is covered by ``test_sources.py``, which goes through the same service.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devart.core.errors import SandboxError
from devart.sandboxes import copy_service, source_fetch
from devart.sandboxes.bubblewrap import SANDBOX_UID
from devart.sandboxes.copy_service import CopyService
from devart.sandboxes.source_sandbox import Jail
from tests.helpers import poll

OPTIONS: dict[str, object] = {"limit": 0, "ignore": [], "ignore_top": [], "exclude": ""}


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A folder to create workspaces in, the sandbox user's as a sandbox's volume is (when running as root)."""
    parent = tmp_path / "volume"
    parent.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(parent, SANDBOX_UID, SANDBOX_UID)
    return parent


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (src / "README").write_text("hello\n")
    return src


@pytest.fixture
def service(volume: Path, tmp_path: Path) -> Iterator[CopyService]:
    """A service of this test's own, stopped afterwards (the process-wide ones are left to other tests)."""
    started = CopyService(Jail.detect(volume / "probe"), [tmp_path / "hidden"])
    yield started
    started.stop()


def server(leader: int) -> psutil.Process:
    """The service's Python process (under bubblewrap, a descendant of its leader)."""
    for process in [psutil.Process(leader), *psutil.Process(leader).children(recursive=True)]:
        if process.cmdline()[-2:-1] == ["--serve"] and process.name() != "bwrap":
            return process
    raise AssertionError(f"no copier service under pid {leader}")


async def test_many_copies_share_one_service_and_each_is_whole(service: CopyService, source: Path,
                                                               volume: Path) -> None:
    # When 20 copies are made at once
    results = await asyncio.gather(*(service.copy(source, volume / f"w{i}", OPTIONS, what="copy", timeout=60)
                                     for i in range(20)))
    # Then every one succeeds and holds the whole tree, all from one service
    assert [r.returncode for r in results] == [0] * 20, [r.stderr for r in results]
    for i in range(20):
        assert (volume / f"w{i}" / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
        assert sorted(os.listdir(volume / f"w{i}")) == ["README", "pkg"]
    leader = service.pid
    assert leader is not None
    await service.copy(source, volume / "again", OPTIONS, what="copy", timeout=60)
    assert service.pid == leader


@pytest.mark.skipif(os.geteuid() != 0, reason="the service is confined only when devart runs as root")
async def test_the_service_runs_as_the_sandbox_user_and_sees_nothing_of_the_host(
        service: CopyService, source: Path, volume: Path, tmp_path: Path) -> None:
    if service.jail is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bubblewrap is required under CI")
        pytest.skip("bubblewrap is not installed")
    await service.copy(source, volume / "w", OPTIONS, what="copy", timeout=60)
    assert service.pid is not None
    process = server(service.pid)
    # It runs as the sandbox user, and its files are the sandbox user's
    assert process.uids().effective == SANDBOX_UID
    assert {p.stat().st_uid for p in (volume / "w").rglob("*")} == {SANDBOX_UID}
    # Its root holds the toolchain, not the source, the volume or anything of this test
    root = Path(f"/proc/{process.pid}/root")
    assert (root / "usr").is_dir()
    assert not os.path.lexists(f"{root}{tmp_path}")
    assert not os.path.lexists(f"{root}{source}") and not os.path.lexists(f"{root}{volume}")


async def test_a_killed_service_is_started_again(service: CopyService, source: Path, volume: Path) -> None:
    await service.copy(source, volume / "first", OPTIONS, what="copy", timeout=60)
    first = service.pid
    assert first is not None
    # When the service dies (here: killed with everything under it)
    for process in [*psutil.Process(first).children(recursive=True), psutil.Process(first)]:
        process.kill()
    await poll(lambda: asyncio.sleep(0, service.pid is None), deadline=10, what="the service to be gone",
               every=0.05)
    # Then the next copy starts a new one and succeeds
    result = await service.copy(source, volume / "second", OPTIONS, what="copy", timeout=60)
    assert result.returncode == 0 and (volume / "second" / "README").read_text() == "hello\n"
    assert service.pid not in (None, first)


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    """A source of 8 GiB in sparse files: a copy of it takes far longer than these tests wait."""
    src = tmp_path / "huge"
    src.mkdir()
    for index in range(8):
        with open(src / f"{index}.bin", "wb") as handle:
            handle.truncate(1 << 30)
    return src


async def test_a_copy_past_its_timeout_stops_and_the_service_goes_on(service: CopyService, huge: Path,
                                                                       source: Path, tmp_path: Path) -> None:
    # A tmpfs would fill; the copy writes to a plain folder and is stopped long before 8 GiB
    volume = tmp_path / "disk"
    volume.mkdir()
    if os.geteuid() == 0:
        os.chown(volume, SANDBOX_UID, SANDBOX_UID)
    started = time.monotonic()
    with pytest.raises(SandboxError, match=r"copying it took longer than 0.5s"):
        await service.copy(huge, volume / "w", OPTIONS, what="copying it", timeout=0.5)
    # It returned once the copy had stopped writing (its answer socket closes as its process exits), and the
    # process is gone a moment later: the service reaps it
    assert time.monotonic() - started < 5
    leader = service.pid
    assert leader is not None
    await poll(lambda: asyncio.sleep(0, server(leader).children() == []), deadline=5, what="the copy's process to end",
               every=0.01)
    assert sum(p.stat().st_size for p in (volume / "w").glob("*.bin")) < 8 << 30
    # And the same service makes the next copy
    result = await service.copy(source, volume / "next", OPTIONS, what="copy", timeout=60)
    assert result.returncode == 0 and service.pid == leader


async def test_a_copy_whose_service_dies_fails_clearly(service: CopyService, huge: Path, tmp_path: Path) -> None:
    volume = tmp_path / "disk"
    volume.mkdir()
    if os.geteuid() == 0:
        os.chown(volume, SANDBOX_UID, SANDBOX_UID)
    copying = asyncio.create_task(service.copy(huge, volume / "w", OPTIONS, what="copy", timeout=60))
    await poll(lambda: asyncio.sleep(0, any((volume / "w").glob("*.bin")) if (volume / "w").is_dir() else False),
               deadline=15, what="the copy to start", every=0.02)
    # When the service is stopped mid-copy
    await asyncio.to_thread(service.stop)
    # Then the copy ends with an error that says so, not a hang or a report of a partial copy
    result = await asyncio.wait_for(copying, 10)
    assert result.returncode != 0 and "without answering" in result.stderr


async def test_a_service_that_takes_no_request_is_started_again_without_holding_up_the_worker(
        service: CopyService, source: Path, volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy_service, "SEND_TIMEOUT", 0.5)
    await service.copy(source, volume / "first", OPTIONS, what="copy", timeout=60)
    first = service.pid
    assert first is not None
    # Given a service that stopped taking requests (stopped), whose socket fills after a few of them
    server(first).suspend()
    service._control_socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    longest, ticking = 0.0, True

    async def ticker() -> None:
        nonlocal longest
        loop = asyncio.get_running_loop()
        while ticking:
            before = loop.time()
            await asyncio.sleep(0.01)
            longest = max(longest, loop.time() - before)

    watch = asyncio.create_task(ticker())
    # When many copies are asked for at once
    results = await asyncio.gather(*(service.copy(source, volume / f"w{i}", OPTIONS, what="copy", timeout=30)
                                     for i in range(20)))
    ticking = False
    await watch
    # Then the worker's event loop was never held up waiting for the full socket
    assert longest < 0.3, f"the event loop stalled for {longest:.2f}s"
    # And the service was started again: the copies asked of it succeed, those the stopped one held fail clearly
    assert service.pid not in (None, first)
    done = [r for r in results if r.returncode == 0]
    lost = [r for r in results if r.returncode != 0]
    assert done and all("without answering" in r.stderr for r in lost), [r.stderr for r in lost]
    for i, result in enumerate(results):
        if result.returncode == 0:
            assert (volume / f"w{i}" / "README").read_text() == "hello\n"


async def test_copy_tree_calls_a_copy_cut_short_by_its_service_retryable(huge: Path, tmp_path: Path) -> None:
    volume = tmp_path / "disk"
    volume.mkdir()
    if os.geteuid() == 0:
        os.chown(volume, SANDBOX_UID, SANDBOX_UID)
    hide = [tmp_path / "hidden-by-this-test"]
    copying = asyncio.create_task(source_fetch.copy_tree(huge, volume / "w", options=OPTIONS, hide=hide))
    await poll(lambda: asyncio.sleep(0, any((volume / "w").glob("*.bin")) if (volume / "w").is_dir() else False),
               deadline=15, what="the copy to start", every=0.02)
    # When the worker's service is stopped mid-copy
    await asyncio.to_thread(copy_service.service(Jail.detect(volume / "w"), hide).stop)
    # Then the stage's error says what happened, not that the files were unreadable, and may be tried again
    with pytest.raises(SandboxError, match="copier service stopped before it answered") as failed:
        await asyncio.wait_for(copying, 10)
    assert failed.value.retryable and "readable" not in str(failed.value)


async def test_copy_tree_says_which_source_could_not_be_opened(volume: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"No such file or directory: .*nowhere"):
        await source_fetch.copy_tree(tmp_path / "nowhere", volume / "w", options=OPTIONS, hide=[tmp_path / "h"])
    assert not (volume / "w").exists()


def test_services_are_shared_by_folders_no_toolchain_holds(volume: Path, tmp_path: Path) -> None:
    jail = Jail.detect(volume / "w")
    one = copy_service.service(jail, [tmp_path / "a", tmp_path / "b"])
    assert copy_service.service(jail, [tmp_path / "c", tmp_path / "d"]) is one
