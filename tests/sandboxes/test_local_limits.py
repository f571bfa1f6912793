"""Local sandbox limits (cgroups and the prlimit fallback), secrets by reference, and the unisolated mode."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.core.errors import SandboxError, SkillError
from devart.sandboxes import volumes
from devart.sandboxes.bubblewrap import Confinement
from devart.sandboxes.local import LocalSandbox, bubblewrap_available
from devart.sandboxes.seccomp import no_user_namespaces
from tests.sandboxes.test_local_isolation import commands, eventually, processes_with, requires_cgroups

Provision = Callable[..., Awaitable[SandboxHandle]]


@pytest.fixture(params=["auto", "prlimit"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> LocalSandbox:
    """A bubblewrap backend with its best limits (cgroups here), and one forced onto the prlimit fallback."""
    if bubblewrap_available() is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    return LocalSandbox(tmp_path / "sandboxes", limits=request.param)


@pytest.fixture
async def provision(tmp_path: Path) -> AsyncIterator[Provision]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("hello\n")
    handles: list[tuple[LocalSandbox, SandboxHandle]] = []

    async def make(backend: LocalSandbox, spec: SandboxSpec | None = None) -> SandboxHandle:
        handle = await backend.provision(f"run-{uuid.uuid4().hex[:8]}", "limits", Source(repo=str(project)),
                                         spec or SandboxSpec())
        handles.append((backend, handle))
        return handle

    yield make
    for backend, handle in handles:
        await backend.teardown(handle)


async def test_memory_is_limited_by_either_mechanism(limited: LocalSandbox, provision: Provision) -> None:
    handle = await provision(limited, SandboxSpec(memory_mb=256))
    result = await limited.exec(handle, [sys.executable, "-c", "bytearray(2 << 30)"])
    assert result.exit_code != 0 and result.limits == limited.limits
    if limited.limits == "prlimit":  # the allocation fails inside the program: nothing to report
        assert "MemoryError" in result.output and not result.oom_killed
    else:
        assert result.oom_killed


async def test_one_file_cannot_outgrow_the_disk_limit(limited: LocalSandbox, provision: Provision) -> None:
    handle = await provision(limited, SandboxSpec(disk_mb=16))
    result = await limited.exec(handle, ["sh", "-c", "head -c 20M /dev/zero > big"])
    assert result.exit_code != 0
    # RLIMIT_FSIZE stops it at 16 MiB; as root the volume (16 MiB with the checkout in it) is full a little before
    assert (15 << 20) < (Path(handle.workspace) / "big").stat().st_size <= 16 << 20


async def test_a_full_workspace_is_reported(limited: LocalSandbox, provision: Provision) -> None:
    handle = await provision(limited, SandboxSpec(disk_mb=16))
    fits = await limited.exec(handle, ["sh", "-c", "head -c 10M /dev/urandom > a"])
    over = await limited.exec(handle, ["sh", "-c", "head -c 10M /dev/urandom > b"])
    assert (fits.exit_code, fits.disk_exceeded) == (0, False)
    if os.geteuid() == 0:  # a tmpfs of 16 MiB: the write is refused
        assert over.exit_code != 0 and "No space left on device" in over.output and over.disk_exceeded
    else:  # measured after the command: reported, not prevented
        assert (over.exit_code, over.disk_exceeded) == (0, True)
    # /tmp is a tmpfs of the same size, so it cannot be used to get around the limit
    code = (await limited.exec(handle, ["sh", "-c", "head -c 10M /dev/zero > /tmp/a; head -c 10M /dev/zero > /tmp/b"]))
    assert code.exit_code != 0 and "No space left on device" in code.output


def requires_root() -> None:
    if os.geteuid() != 0 or bubblewrap_available() is None:
        pytest.skip("volumes are tmpfs mounts only when devart runs as root")


async def test_teardown_detaches_a_busy_volume(tmp_path: Path, provision: Provision) -> None:
    requires_root()
    sandbox = LocalSandbox(tmp_path / "sandboxes")
    handle = await provision(sandbox, SandboxSpec(disk_mb=32))
    assert volumes.mounts_under(sandbox.root) == [sandbox.root / handle.id / "volume"]
    # Given a host process holding the volume, as a command of an agent that crashed might
    holder = subprocess.Popen(["sleep", "60"], cwd=handle.workspace)
    try:
        # When another backend on the same root (the sweeper's) finds the sandbox and tears it down
        sweeper = LocalSandbox(sandbox.root)
        assert [listed.id for listed in await sweeper.list()] == [handle.id]
        await sweeper.teardown(handle)
        # Then the volume is detached and the sandbox is gone
        assert not volumes.mounts_under(sandbox.root) and not (sandbox.root / handle.id).exists()
    finally:
        holder.kill()
        holder.wait()


async def test_a_volume_left_without_its_sandbox_is_unmounted(tmp_path: Path, provision: Provision) -> None:
    requires_root()
    sandbox = LocalSandbox(tmp_path / "sandboxes")
    handle = await provision(sandbox)
    # Given a sandbox folder deleted around its mounted volume (a temporary folder removed without a teardown)
    (sandbox.root / handle.id / "meta.json").unlink()
    # When a backend lists the root, Then nothing is listed and the volume is unmounted, so the folder can go
    assert await LocalSandbox(sandbox.root).list() == []
    assert not volumes.mounts_under(sandbox.root)
    shutil.rmtree(sandbox.root / handle.id)


async def test_cpu_is_capped_and_counted_exactly_with_cgroups(tmp_path: Path, provision: Provision) -> None:
    sandbox = LocalSandbox(tmp_path / "sandboxes")
    requires_cgroups(sandbox)
    handle = await provision(sandbox, SandboxSpec(cpu=0.5))
    burn = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass"
    result = await sandbox.exec(handle, [sys.executable, "-c", burn])
    assert result.exit_code == 0
    assert 0.5 <= result.cpu_seconds <= 0.65 * result.duration


async def test_cgroups_are_removed_after_each_command_and_at_teardown(tmp_path: Path, provision: Provision) -> None:
    sandbox = LocalSandbox(tmp_path / "sandboxes")
    requires_cgroups(sandbox)
    assert sandbox.cgroups is not None
    handle = await provision(sandbox)
    parents = list(sandbox.cgroups.parents.values())

    def cgroups() -> list[Path]:
        return [path for parent in parents for path in parent.glob(f"{handle.id}+*")]

    assert (await sandbox.exec(handle, ["true"])).exit_code == 0 and cgroups() == []
    tag = f"300.{uuid.uuid4().int % 10**9:09d}"
    task = asyncio.create_task(sandbox.exec(handle, ["sleep", tag]))
    await eventually(lambda: bool(processes_with(f"sleep {tag}")) and len(cgroups()) == len(set(parents)),
                     "the command to start in its cgroup")
    await LocalSandbox(sandbox.root).teardown(handle)
    assert (await asyncio.wait_for(task, 10)).exit_code != 0
    assert cgroups() == [] and not processes_with(f"sleep {tag}")


async def test_secrets_are_resolved_at_exec_time_and_never_shown(
        tmp_path: Path, provision: Provision, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a stage whose spec references a secret held in the agent's environment
    sandbox = LocalSandbox(tmp_path / "sandboxes")
    value = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv("DEVART_TEST_TOKEN", value)
    monkeypatch.setenv("DEVART_SECRETS_ALLOWED", "OTHER, DEVART_TEST_TOKEN")
    handle = await provision(sandbox, SandboxSpec(secrets={"API_TOKEN": "env:DEVART_TEST_TOKEN"}))
    # When a command uses it, prints it, and runs for a while
    digest = "import hashlib, os; print(hashlib.sha256(os.environ['API_TOKEN'].encode()).hexdigest())"
    result = await sandbox.exec(handle, [sys.executable, "-c", digest])
    lines: list[str] = []
    echoed = await sandbox.exec(handle, ["sh", "-c", 'echo "token=$API_TOKEN"'], on_output=lines.append)
    tag = f"300.{uuid.uuid4().int % 10**9:09d}"
    task = asyncio.create_task(sandbox.exec(handle, ["sleep", tag]))
    await eventually(lambda: bool(processes_with(f"sleep {tag}")), "the command to start")
    # Then the command had it, but no output, file or command line shows it
    assert result.output.strip() == hashlib.sha256(value.encode()).hexdigest()
    assert echoed.output == "token=***\n" and lines == ["token=***\n"]
    for path in (sandbox.root / handle.id).rglob("*"):
        assert not path.is_file() or value not in path.read_text(errors="replace")
    assert not processes_with(value)
    # ... and the root-owned helpers starting the command never saw the command's environment
    record = json.loads(next((sandbox.root / handle.id / "pids").glob("*.json")).read_text())
    helper_env = [entry.split(b"=")[0] for entry in Path(f"/proc/{record['pid']}/environ").read_bytes().split(b"\0")]
    assert {name for name in helper_env if name} <= {b"PATH", b"PWD"}  # PWD: set by the wrapper shell
    await sandbox.teardown(handle)
    await task


async def test_a_secret_not_allow_listed_is_never_read(
        tmp_path: Path, provision: Provision, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a variable of the agent's environment that no operator allow-listed for secrets
    monkeypatch.setenv("DEVART_TEST_TOKEN", "tok-not-for-stages")
    monkeypatch.setenv("DEVART_SECRETS_ALLOWED", "SOMETHING_ELSE")
    sandbox = LocalSandbox(tmp_path / "sandboxes", isolation="none")
    handle = await provision(sandbox, SandboxSpec(secrets={"API_TOKEN": "env:DEVART_TEST_TOKEN"}))
    # When a command of a stage naming it would run, Then it does not, with the reason
    with pytest.raises(SandboxError, match="'API_TOKEN' refers to environment variable 'DEVART_TEST_TOKEN', which is "
                                           "not allow-listed for secrets") as caught:
        await sandbox.exec(handle, ["true"])
    assert not caught.value.retryable and caught.value.reason == "SecretNotAllowed"


async def test_a_missing_secret_is_a_clear_non_retryable_error(
        tmp_path: Path, provision: Provision, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_SECRETS_ALLOWED", "DEVART_NO_SUCH_VARIABLE")
    sandbox = LocalSandbox(tmp_path / "sandboxes", isolation="none")
    handle = await provision(sandbox, SandboxSpec(secrets={"API_TOKEN": "env:DEVART_NO_SUCH_VARIABLE"}))
    with pytest.raises(SandboxError, match="'API_TOKEN' refers to environment variable 'DEVART_NO_SUCH_VARIABLE', "
                                           "which is not set where this agent runs") as caught:
        await sandbox.exec(handle, ["true"])
    assert not caught.value.retryable and caught.value.reason == "SecretMissing"
    with pytest.raises(SkillError) as failed:  # what the agent reports for the stage
        await commands(sandbox, handle).run("build", ["true"])
    assert (failed.value.error_type, failed.value.non_retryable) == ("SecretMissing", True)
    assert str(failed.value).startswith("build: secret 'API_TOKEN' refers to environment variable")


async def test_unisolated_sandboxes_say_so(tmp_path: Path, provision: Provision) -> None:
    plain = LocalSandbox(tmp_path / "plain", isolation="none")
    handle = await provision(plain)
    assert handle.isolated is False and handle.created_at is not None and handle.run_id.startswith("run-")
    assert [listed.isolated for listed in await plain.list()] == [False]
    result = await plain.exec(handle, ["id", "-u"])
    assert result.output == f"{os.getuid()}\n" and result.limits == plain.limits


async def test_a_root_behind_a_closed_folder_still_works(provision: Provision) -> None:
    # Given a sandbox root (outside /tmp) below a folder the sandbox user may not enter
    if os.geteuid() != 0 or bubblewrap_available() is None:
        pytest.skip("needs root (the sandbox user differs from the operator only then) and bubblewrap")
    closed = Path("/var/tmp") / f"devart-closed-{uuid.uuid4().hex}"
    closed.mkdir(mode=0o700)
    try:
        sandbox = LocalSandbox(closed / "state" / "sandboxes")
        # When a command runs there, Then it reaches its workspace, but nothing else of the closed folder
        handle = await provision(sandbox)
        result = await sandbox.exec(handle, ["sh", "-c", f"cat README.md && ls -A {closed} {closed}/state"])
        assert (result.exit_code, result.output) == (0, f"hello\n{closed}:\nstate\n\n{closed}/state:\nsandboxes\n")
        await sandbox.teardown(handle)
    finally:
        shutil.rmtree(closed)


def test_plan_binds_the_toolchain_and_the_interpreter_and_nothing_around_them(tmp_path: Path) -> None:
    # Given an interpreter in a folder the sandbox user cannot enter, under /tmp (the sandbox gets its own)
    closed = tmp_path / "closed"
    python = closed / "python" / "3.11"
    python.mkdir(parents=True)
    closed.chmod(0o700)
    plan = Confinement.plan("/usr/bin/bwrap", Path("/var/lib/devart/sandboxes"), "/usr/bin/setpriv", [python])
    volume = Path("/var/lib/devart/sandboxes/x/volume")
    argv = plan.argv(volume, volume / "workspace", SandboxSpec(), ["true"])
    # Then it is bound read-only after the private /tmp, beside /usr and /etc; the host's root is not
    assert argv[argv.index(str(python)) - 1] == "--ro-bind" and argv.index(str(python)) > argv.index("/tmp")
    assert ["--ro-bind", "/usr", "/usr"] == argv[argv.index("/usr") - 1:argv.index("/usr") + 2]
    sources = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("--ro-bind", "--bind")]
    assert "/" not in sources and not [s for s in sources if s.startswith(("/run", "/var/", "/home", "/root", "/sys"))
                                       and not s.startswith(str(volume))]
    assert "--unshare-net" in argv and "--share-net" not in argv
    # ... and the folders down to the sandbox's volume are made on the empty root, traversable
    assert argv[argv.index("/var/lib/devart/sandboxes/x") - 3:argv.index("/var/lib/devart/sandboxes/x") + 1] == [
        "--perms", "0755", "--dir", "/var/lib/devart/sandboxes/x"]


def test_a_sandbox_root_or_state_folder_inside_a_bound_folder_is_covered(tmp_path: Path) -> None:
    # Given a venv at <project>/.venv, and the sandboxes and the state folder under /usr, which sandboxes see
    venv, state = tmp_path / "project" / ".venv", Path("/usr/local/devart")
    plan = Confinement.plan("/usr/bin/bwrap", state / "sandboxes", "/usr/bin/setpriv", [venv],
                            hide=[state, tmp_path / "project" / ".devart"])
    # Then only what lies in a bound folder is covered, once: the state folder, holding the sandboxes
    assert plan.hidden == (state,) and venv in plan.binds
    volume = state / "sandboxes" / "x" / "volume"
    argv = plan.argv(volume, volume / "workspace", SandboxSpec(), ["true"])
    assert argv[argv.index(str(state)) - 3:argv.index(str(state)) + 1] == ["--perms", "0755", "--tmpfs", str(state)]
    assert argv.index(str(state)) < argv.index(str(volume)) and ["--remount-ro", str(state)] == argv[
        argv.index("--remount-ro"):argv.index("--remount-ro") + 2]
    # ... and the project around the venv is nowhere: the folders down to the venv are made empty
    assert str(tmp_path / "project" / ".devart") not in argv
    assert argv[argv.index(str(tmp_path / "project")) - 3:argv.index(str(tmp_path / "project"))] == [
        "--perms", "0755", "--dir"]


@pytest.mark.parametrize(("machine", "size"), [("x86_64", 13 * 8), ("aarch64", 13 * 8), ("riscv64", None)])
def test_the_seccomp_filter_is_built_for_known_architectures(machine: str, size: int | None) -> None:
    program = no_user_namespaces(machine)
    assert (len(program) if program is not None else None) == size
