"""Escape attempts from a local sandbox: each one fails, and the result says why.

The "must show" list of issue 3: the host's services and the outside world, the host's files, another
sandbox, a fork bomb, a memory hog, a command outliving its timeout; and egress for the stages that ask for it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from devart.core.contracts import SandboxHandle, SandboxSpec, Source, TaskDetail
from devart.core.errors import SkillError
from devart.sandboxes.local import LocalSandbox, bubblewrap_available
from devart.workers.skills.base import SkillContext
from devart.workers.skills.common import Commands

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Connects to argv[1]:argv[2]; prints the error class and text on failure.
PROBE = """import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
except OSError as exc:
    print(type(exc).__name__, exc.strerror)
    sys.exit(1)
print("connected")
"""
Provision = Callable[..., Awaitable[SandboxHandle]]


@pytest.fixture
def sandbox(tmp_path: Path) -> LocalSandbox:
    if bubblewrap_available() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bubblewrap (bwrap) is required under CI")
        pytest.skip("bubblewrap (bwrap) is not installed")
    return LocalSandbox(tmp_path / "sandboxes")


@pytest.fixture
async def provision(sandbox: LocalSandbox, tmp_path: Path) -> AsyncIterator[Provision]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("secret plans\n")
    handles: list[tuple[LocalSandbox, SandboxHandle]] = []

    async def make(spec: SandboxSpec | None = None, backend: LocalSandbox = sandbox) -> SandboxHandle:
        handle = await backend.provision(f"run-{uuid.uuid4().hex[:8]}", "escape", Source(repo=str(project)),
                                         spec or SandboxSpec())
        handles.append((backend, handle))
        return handle

    yield make
    for backend, handle in handles:
        await backend.teardown(handle)


def requires_cgroups(sandbox: LocalSandbox) -> None:
    if sandbox.cgroups is None:
        pytest.skip("no writable cgroup hierarchy here: limits fall back to prlimit")


async def sh(sandbox: LocalSandbox, handle: SandboxHandle, script: str, **kwargs: object) -> tuple[int, str]:
    result = await sandbox.exec(handle, ["sh", "-c", script], **kwargs)  # type: ignore[arg-type]
    return result.exit_code, result.output


def processes_with(text: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``text``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with_text = text in " ".join(process.info["cmdline"] or [])
        if with_text and process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


async def eventually(check: Callable[[], bool], what: str, deadline: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(0.05)


def commands(sandbox: LocalSandbox, handle: SandboxHandle) -> Commands:
    task = TaskDetail(run_id="run-escape", pipeline="escape", stage="escape", skill="shell", requires=[], inputs={},
                      sandbox=handle, source=Source(repo="."), task_id=uuid.uuid4().hex, attempt=1,
                      claim_id=uuid.uuid4().hex, heartbeat_interval=5.0)
    return Commands(SkillContext(task, sandbox, python=sys.executable))


@pytest.mark.parametrize(("host", "port", "error"), [
    ("127.0.0.1", 5432, "ConnectionRefusedError Connection refused"),  # PostgreSQL listens there on the host
    ("1.1.1.1", 443, "OSError Network is unreachable"),
])
async def test_the_network_is_unreachable(sandbox: LocalSandbox, provision: Provision, host: str, port: int,
                                          error: str) -> None:
    handle = await provision()
    result = await sandbox.exec(handle, [sys.executable, "-c", PROBE, host, str(port)])
    assert (result.exit_code, result.output) == (1, f"{error}\n")


async def test_egress_is_granted_only_when_asked_for(sandbox: LocalSandbox, provision: Provision) -> None:
    # Given a listener on the host's loopback
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = str(server.sockets[0].getsockname()[1])
    host_netns = os.readlink("/proc/self/ns/net")
    async with server:
        for network in ("egress", "none"):
            # When a sandbox with or without egress connects to it
            handle = await provision(SandboxSpec(network=network))  # type: ignore[arg-type]
            probe = await sandbox.exec(handle, [sys.executable, "-c", PROBE, "127.0.0.1", port])
            netns = await sandbox.exec(handle, ["readlink", "/proc/self/ns/net"])
            # Then neither reaches it: each command has a network namespace of its own (see test_escapes.py)
            assert probe.output == "ConnectionRefusedError Connection refused\n"
            assert netns.exit_code == 0 and netns.output.strip() != host_netns


@pytest.mark.parametrize("target", ["/etc", "/root", str(REPO_ROOT)])
async def test_host_folders_are_read_only(sandbox: LocalSandbox, provision: Provision, target: str) -> None:
    handle = await provision()
    path = Path(target) / f"devart-escape-{uuid.uuid4().hex}"
    code, output = await sh(sandbox, handle, f"echo pwned > {path}")
    # Read-only where the folder is mounted; closed or absent where it is not there (a checkout under /tmp).
    refusals = ("Read-only file system", "Permission denied", "No such file or directory", "Directory nonexistent")
    assert code != 0 and any(r in output for r in refusals), output
    assert not path.exists()


async def test_commands_run_as_nobody_and_cannot_read_root_files(sandbox: LocalSandbox, provision: Provision) -> None:
    handle = await provision()
    assert await sh(sandbox, handle, "id -u; id -G") == (0, "65534\n65534\n")
    code, output = await sh(sandbox, handle, "cat /etc/shadow")
    assert code != 0 and "Permission denied" in output and "root:" not in output
    secret = next((p for p in Path("/root").iterdir() if p.is_file() and p.stat().st_size > 0), None)
    if secret is not None:
        code, output = await sh(sandbox, handle, f"cat {secret}")
        assert code != 0 and output.strip() and secret.read_text(errors="replace")[:40] not in output


async def test_nested_user_namespaces_are_refused(sandbox: LocalSandbox, provision: Provision) -> None:
    # A user namespace would give the command capabilities over more of the kernel (seccomp or --disable-userns).
    handle = await provision()
    code, output = await sh(sandbox, handle, "unshare --user --map-root-user id -u")
    assert code != 0 and "unshare failed" in output


async def test_another_sandbox_is_invisible(sandbox: LocalSandbox, provision: Provision) -> None:
    mine, other = await provision(), await provision()
    (Path(other.workspace) / "loot.txt").write_text("other's secret\n")
    code, output = await sh(sandbox, mine, f"cat {other.workspace}/loot.txt")
    assert code != 0 and "No such file or directory" in output
    assert await sh(sandbox, mine, f"ls -A {sandbox.root}") == (0, f"{mine.id}\n")


async def test_a_fork_bomb_is_stopped_by_the_pids_limit(sandbox: LocalSandbox, provision: Provision) -> None:
    requires_cgroups(sandbox)
    # Given a fork bomb (bounded, in case the limit failed) that never exits on its own
    handle = await provision(SandboxSpec(pids=32))
    tag = uuid.uuid4().hex
    bomb = f"# {tag}\nbomb() {{ [ $1 -lt 13 ] || return 0; bomb $(($1+1)) | bomb $(($1+1)) & }}; bomb 0; sleep 60"
    # When it runs
    result = await sandbox.exec(handle, ["sh", "-c", bomb], timeout=5)
    # Then forks were refused, it was stopped, and the skill reports the limit, not a generic failure
    assert result.pids_limited and result.timed_out and not result.oom_killed
    await eventually(lambda: not processes_with(tag), "every process of the bomb to be gone")
    with pytest.raises(SkillError) as caught:
        await commands(sandbox, handle).run("bomb", ["sh", "-c", bomb], timeout=3)
    assert caught.value.error_type == "PidsLimit" and not caught.value.non_retryable  # a remedy may give more
    assert str(caught.value) == "bomb was stopped: too many processes (limit 32)"


async def test_allocating_2_gib_under_256_mib_is_reported_as_out_of_memory(
        sandbox: LocalSandbox, provision: Provision) -> None:
    requires_cgroups(sandbox)
    handle = await provision(SandboxSpec(memory_mb=256))
    hog = [sys.executable, "-c", "bytearray(2 << 30)"]
    result = await sandbox.exec(handle, hog)
    assert (result.exit_code, result.oom_killed, result.timed_out) == (137, True, False)
    assert result.limits == sandbox.limits
    with pytest.raises(SkillError) as caught:
        await commands(sandbox, handle).run("allocate", hog)
    assert caught.value.error_type == "OutOfMemory" and not caught.value.non_retryable  # a remedy may give more
    assert str(caught.value) == "allocate was killed: out of memory (limit 256 MiB)"


@pytest.mark.parametrize("isolation", ["bubblewrap", "none"])
async def test_a_command_outliving_its_timeout_loses_its_whole_tree(
        sandbox: LocalSandbox, provision: Provision, tmp_path: Path, isolation: str) -> None:
    backend = sandbox if isolation == "bubblewrap" else LocalSandbox(tmp_path / "plain", isolation="none")
    if isolation == "none":
        requires_cgroups(backend)  # without a pid namespace, only the cgroup finds a daemonised grandchild
    handle = await provision(SandboxSpec(timeout=timedelta(seconds=60)), backend=backend)
    # Given a child, a grandchild, and a grandchild that left the session and was re-parented
    tag = f"300.{uuid.uuid4().int % 10**9:09d}"
    script = f"sh -c 'sleep {tag} & wait' & setsid sh -c 'sleep {tag} &' ; sleep {tag}"
    # When the command outlives its timeout (the shorter of the call's and the spec's)
    result = await backend.exec(handle, ["sh", "-c", script], timeout=1.5)
    # Then it is reported as timed out, and every process it started is gone
    assert (result.timed_out, result.exit_code) == (True, -9) and 1.5 <= result.duration < 10
    await eventually(lambda: not processes_with(f"sleep {tag}"), "the sleeps to be killed")
    assert not [path for parent in (backend.cgroups.parents.values() if backend.cgroups else [])
                for path in parent.glob(f"{handle.id}+*")]


async def test_the_spec_timeout_bounds_every_command(sandbox: LocalSandbox, provision: Provision) -> None:
    handle = await provision(SandboxSpec(timeout=timedelta(seconds=1)))
    result = await sandbox.exec(handle, ["sleep", "30"], timeout=600)
    assert result.timed_out and result.duration < 10
