"""The local sandbox backend, for real: bubblewrap confinement, git checkouts, killing process trees."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.core.errors import SandboxError, SandboxUnavailable
from devart.sandboxes.local import LocalSandbox, bubblewrap_available

PROBE_CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5); print('ok')"


def torn_down(sandbox: LocalSandbox) -> None:
    """Tear down whatever a test left in ``sandbox`` (as root each sandbox holds a mounted volume).

    Run on a thread of its own, so that it works from a fixture's finalizer whether or not a loop is running.
    """

    async def teardown_all() -> None:
        for handle in await sandbox.list():
            await sandbox.teardown(handle)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, teardown_all()).result()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[LocalSandbox]:
    """A bubblewrap backend whose root lies under /tmp, so hiding sandboxes must survive the private /tmp."""
    if bubblewrap_available() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bubblewrap (bwrap) is required under CI")
        pytest.skip("bubblewrap (bwrap) is not installed")
    backend = LocalSandbox(tmp_path / "sandboxes")
    yield backend
    torn_down(backend)


@pytest.fixture(params=["bubblewrap", "none"])
def any_sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalSandbox]:
    if request.param == "bubblewrap":
        yield request.getfixturevalue("sandbox")
        return
    backend = LocalSandbox(tmp_path / "plain", isolation="none")
    yield backend
    torn_down(backend)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    (src / "pkg").mkdir(parents=True)
    (src / "README.md").write_text("hello\n")
    (src / "pkg" / "__init__.py").write_text("")
    return src


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A git repository with two commits; returns it with both commit ids."""
    path = tmp_path / "repo"
    (path / "sub").mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "app.txt").write_text("v1\n")
    (path / "sub" / "note.txt").write_text("one\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    first = git(path, "rev-parse", "HEAD")
    (path / "app.txt").write_text("v2\n")
    git(path, "commit", "-q", "-am", "second")
    return path, first, git(path, "rev-parse", "HEAD")


def git(repo: Path, *args: str) -> str:
    # safe.directory: workspaces belong to the sandbox user, and git refuses other users' repositories by default.
    return subprocess.run(["git", "-c", "user.name=devart", "-c", "user.email=devart@example.com",
                           "-c", "safe.directory=*", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def marker() -> str:
    """A `sleep` duration no other process uses, to find this test's processes and only them."""
    return f"300.{uuid.uuid4().int % 10**9:09d}"


def sleepers(duration: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.info["cmdline"] == ["sleep", duration] and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str, deadline: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        if loop.time() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(0.05)


async def run(sandbox: LocalSandbox, handle: SandboxHandle, script: str, **kwargs: object) -> tuple[int, str]:
    result = await sandbox.exec(handle, ["sh", "-c", script], **kwargs)  # type: ignore[arg-type]
    return result.exit_code, result.output


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_provision_copies_a_working_tree_without_caches(sandbox: LocalSandbox, project: Path) -> None:
    (project / "pkg" / "build").mkdir()
    (project / "pkg" / "build" / "__init__.py").write_text("")  # a package named build is source, not output
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    for junk in (".venv/bin/python", "__pycache__/a.pyc", "pkg/mod.pyc", ".pytest_cache/x", ".ruff_cache/x",
                 "node_modules/x/index.js", "dist/x.whl", "build/lib/x.py", "pkg.egg-info/PKG-INFO"):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("junk")

    handle = await sandbox.provision("run-copy", "build", Source(repo=str(project)), SandboxSpec(network="egress"))

    workspace = Path(handle.workspace)
    assert handle.backend == "local" and handle.id.startswith("run-copy-build-")
    assert workspace == sandbox.root / handle.id / "volume" / "workspace"
    assert files(workspace) == [".git/HEAD", "README.md", "pkg/__init__.py", "pkg/build/__init__.py"]
    meta = json.loads((sandbox.root / handle.id / "meta.json").read_text())
    assert (meta["run_id"], meta["stage"], meta["spec"]["network"]) == ("run-copy", "build", "egress")
    assert handle.spec.network == "egress"


async def test_provision_checks_out_a_local_repository_at_a_ref(
        sandbox: LocalSandbox, repo: tuple[Path, str, str]) -> None:
    path, first, second = repo
    handle = await sandbox.provision("run-git", "test", Source(repo=str(path), ref=first), SandboxSpec())
    workspace = Path(handle.workspace)
    assert (workspace / "app.txt").read_text() == "v1\n"
    assert git(workspace, "rev-parse", "HEAD") == first
    assert (path / "app.txt").read_text() == "v2\n"  # the operator's repository is untouched

    # A sub-directory at a branch: the whole repository is cloned (so git works) and commands start in it.
    sub = await sandbox.provision("run-git", "sub", Source(repo=str(path / "sub"), ref="main"), SandboxSpec())
    assert sub.workspace == str(sandbox.root / sub.id / "volume" / "workspace" / "sub")
    assert await run(sandbox, sub, "cat note.txt && git rev-parse HEAD") == (0, f"one\n{second}\n")


async def test_provision_clones_a_git_url(sandbox: LocalSandbox, repo: tuple[Path, str, str]) -> None:
    path, first, _ = repo
    handle = await sandbox.provision("run-url", "test", Source(repo=f"file://{path}", ref=first), SandboxSpec())
    assert (Path(handle.workspace) / "app.txt").read_text() == "v1\n"


@pytest.mark.parametrize(("source", "message"), [
    (Source(repo="/no/such/dir"), "does not exist or is not a directory"),
    (Source(repo="file:///no/such/repo.git"), "cloning 'file:///no/such/repo.git' failed"),
])
async def test_provision_refuses_a_missing_source(sandbox: LocalSandbox, source: Source, message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        await sandbox.provision("run-bad", "test", source, SandboxSpec())
    assert list(sandbox.root.iterdir()) == []


async def test_provision_refuses_an_unknown_ref_and_leaves_nothing(
        sandbox: LocalSandbox, repo: tuple[Path, str, str], project: Path) -> None:
    with pytest.raises(SandboxError, match="ref 'no-such-branch' not found in .*check that the branch"):
        await sandbox.provision("run-bad", "test", Source(repo=str(repo[0]), ref="no-such-branch"), SandboxSpec())
    with pytest.raises(SandboxError, match="not inside a git repository"):
        await sandbox.provision("run-bad", "test", Source(repo=str(project), ref="main"), SandboxSpec())
    assert list(sandbox.root.iterdir()) == []


async def test_exec_streams_output_line_by_line_and_reports_the_exit_code(
        any_sandbox: LocalSandbox, project: Path) -> None:
    handle = await any_sandbox.provision("run-exec", "test", Source(repo=str(project)), SandboxSpec())
    lines: list[str] = []
    result = await any_sandbox.exec(handle, ["sh", "-c", "echo out; echo err >&2; printf partial; exit 3"],
                                    on_output=lines.append)
    assert (result.exit_code, result.output, result.truncated, result.timed_out) == (3, "out\nerr\npartial",
                                                                                        False, False)
    assert lines == ["out\n", "err\n", "partial"]
    assert result.duration > 0


async def test_workspace_writes_persist_and_the_host_stays_read_only(
        sandbox: LocalSandbox, project: Path) -> None:
    handle = await sandbox.provision("run-fs", "test", Source(repo=str(project)), SandboxSpec())
    probe = f"/etc/devart-probe-{uuid.uuid4().hex}"
    assert await run(sandbox, handle, "echo made > made.txt && mkdir -p ro/x && chmod -R a-w ro") == (0, "")
    assert await run(sandbox, handle, "cat made.txt; id -u; hostname") == (0, "made\n65534\nsandbox\n")
    assert (Path(handle.workspace) / "made.txt").read_text() == "made\n"
    code, output = await run(sandbox, handle, f"echo x > {probe}")
    assert code != 0 and "Read-only file system" in output
    assert not Path(probe).exists()
    # The folders down to the sandbox's volume are root's (here in the private /tmp); /tmp is writable but private.
    code, output = await run(sandbox, handle, f"touch {sandbox.root}/escape")
    assert code != 0 and ("Read-only file system" in output or "Permission denied" in output)
    assert (await run(sandbox, handle, f"touch /tmp/{handle.id}"))[0] == 0
    assert not (sandbox.root / "escape").exists() and not Path(f"/tmp/{handle.id}").exists()


async def test_environment_is_rebuilt_from_scratch(
        any_sandbox: LocalSandbox, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_TEST_SECRET", "s3cret")
    spec = SandboxSpec(env={"FROM_SPEC": "spec", "BOTH": "spec"})
    handle = await any_sandbox.provision("run-env", "test", Source(repo=str(project)), spec)
    result = await any_sandbox.exec(handle, ["sh", "-c", 'touch "$HOME/cache" && env'], env={"BOTH": "call"})
    env = dict(line.split("=", 1) for line in result.output.splitlines())
    assert result.exit_code == 0
    assert "DEVART_TEST_SECRET" not in env
    assert env["HOME"] == str(any_sandbox.root / handle.id / "volume" / "home")
    assert (env["FROM_SPEC"], env["BOTH"], env["LANG"], env["PYTHONDONTWRITEBYTECODE"]) == ("spec", "call",
                                                                                             "C.UTF-8", "1")
    assert env["PATH"] == os.environ["PATH"]


async def test_network_is_cut_unless_egress_is_asked_for(sandbox: LocalSandbox, project: Path) -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = str(server.sockets[0].getsockname()[1])
    async with server:
        for network, routes in (("none", False), ("egress", True)):
            handle = await sandbox.provision("run-net", network, Source(repo=str(project)),
                                             SandboxSpec(network=network))  # type: ignore[arg-type]
            # The host's loopback stays out of reach either way: the sandbox's loopback is its own
            result = await sandbox.exec(handle, [sys.executable, "-c", PROBE_CONNECT, port])
            assert result.exit_code != 0 and "ConnectionRefusedError" in result.output
            # Only egress has a way out: slirp4netns's gateway
            result = await sandbox.exec(handle, ["cat", "/proc/net/route"])
            assert ("\t00000000\t0202000A\t" in result.output) == routes, result.output


@pytest.fixture(params=["/tmp", "/var/tmp"])
def roots_sandbox(request: pytest.FixtureRequest, sandbox: LocalSandbox) -> Iterator[LocalSandbox]:
    """The private /tmp hides a root under /tmp anyway, so hiding is checked with a root elsewhere too."""
    if request.param == "/tmp":
        yield sandbox
        return
    root = Path(request.param) / f"devart-test-{uuid.uuid4().hex}"
    try:
        backend = LocalSandbox(root)
        yield backend
        torn_down(backend)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_other_sandboxes_and_control_files_are_hidden(roots_sandbox: LocalSandbox, project: Path) -> None:
    sandbox = roots_sandbox
    mine = await sandbox.provision("run-a", "test", Source(repo=str(project)), SandboxSpec())
    other = await sandbox.provision("run-b", "test", Source(repo=str(project)), SandboxSpec())
    folder = sandbox.root / mine.id
    assert await run(sandbox, mine, f"ls -A {sandbox.root} {folder} {folder}/volume") == (
        0, f"{sandbox.root}:\n{mine.id}\n\n{folder}:\nvolume\n\n{folder}/volume:\nhome\nworkspace\n")
    assert (await run(sandbox, mine, f"test -e {other.workspace}"))[0] == 1


@pytest.mark.parametrize("script", ["sleep {0} & sleep {0}", "sleep {0} & echo started"])
async def test_the_process_tree_is_killed_on_timeout_or_exit(
        any_sandbox: LocalSandbox, project: Path, script: str) -> None:
    # Given a command leaving a background child that holds its output open
    handle = await any_sandbox.provision("run-kill", "test", Source(repo=str(project)), SandboxSpec())
    duration = marker()
    # When it times out (or its main process exits)
    result = await any_sandbox.exec(handle, ["sh", "-c", script.format(duration)], timeout=2)
    # Then every process of it is gone
    if "echo" in script:
        assert (result.exit_code, result.output, result.timed_out) == (0, "started\n", False)
        assert result.duration < 2
    else:
        assert (result.exit_code, result.timed_out) == (-9, True) and result.duration >= 2
    await eventually(lambda: not sleepers(duration), "the sleeps to be killed")
    assert list((any_sandbox.root / handle.id / "pids").iterdir()) == []


async def test_cancelling_exec_kills_the_command(any_sandbox: LocalSandbox, project: Path) -> None:
    handle = await any_sandbox.provision("run-cancel", "test", Source(repo=str(project)), SandboxSpec())
    duration = marker()
    task = asyncio.create_task(any_sandbox.exec(handle, ["sh", "-c", f"sleep {duration}; true"]))
    await eventually(lambda: bool(sleepers(duration)), "the command to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: not sleepers(duration), "the sleep to be killed")
    assert list((any_sandbox.root / handle.id / "pids").iterdir()) == []


async def test_teardown_from_another_process_kills_running_commands(
        any_sandbox: LocalSandbox, project: Path) -> None:
    # Given a command running in a sandbox
    handle = await any_sandbox.provision("run-teardown", "test", Source(repo=str(project)), SandboxSpec())
    duration = marker()
    task = asyncio.create_task(any_sandbox.exec(handle, ["sh", "-c", f"sleep {duration}; true"]))
    await eventually(lambda: bool(sleepers(duration)), "the command to start")
    # When a second backend on the same root (as in the pipeline worker) tears the sandbox down
    await LocalSandbox(any_sandbox.root, isolation=any_sandbox.isolation).teardown(handle)
    # Then the command dies, the exec reports it, and the sandbox is gone
    result = await asyncio.wait_for(task, timeout=10)
    assert result.exit_code != 0 and not result.timed_out
    assert not (any_sandbox.root / handle.id).exists()
    await eventually(lambda: not sleepers(duration), "the sleep to be killed")
    with pytest.raises(SandboxError, match="torn down"):
        await any_sandbox.exec(handle, ["true"])


async def test_list_shows_live_sandboxes_and_teardown_is_idempotent(sandbox: LocalSandbox, project: Path) -> None:
    first = await sandbox.provision("run-list", "one", Source(repo=str(project)), SandboxSpec())
    second = await sandbox.provision("run-list", "two", Source(repo=str(project)), SandboxSpec(network="egress"))
    assert await sandbox.list() == [first, second]
    await sandbox.teardown(first)
    await sandbox.teardown(first)
    assert await sandbox.list() == [second]
    with pytest.raises(SandboxError, match="invalid local sandbox id"):
        await sandbox.teardown(SandboxHandle(backend="local", id="../escape", workspace="/"))


async def test_output_cap_keeps_the_tail(any_sandbox: LocalSandbox, project: Path) -> None:
    handle = await any_sandbox.provision("run-cap", "test", Source(repo=str(project)), SandboxSpec())
    lines: list[str] = []
    script = "for i in range(20000): print(f'line {i}')"
    result = await any_sandbox.exec(handle, [sys.executable, "-c", script], on_output=lines.append,
                                    output_cap=1000)
    assert result.exit_code == 0 and result.truncated
    assert len(result.output) == 1000 and result.output.endswith("line 19998\nline 19999\n")
    assert len(lines) == 20000 and lines[-1] == "line 19999\n"  # the callback still sees everything


async def test_cpu_seconds_are_measured(any_sandbox: LocalSandbox, project: Path) -> None:
    handle = await any_sandbox.provision("run-cpu", "test", Source(repo=str(project)), SandboxSpec())
    burn = "import time\nwhile time.process_time() < 1.5: pass"
    result = await any_sandbox.exec(handle, [sys.executable, "-c", burn])
    assert result.exit_code == 0
    assert 0.8 <= result.cpu_seconds <= result.duration * (os.cpu_count() or 1)


async def test_missing_command_without_isolation(tmp_path: Path, project: Path) -> None:
    plain = LocalSandbox(tmp_path / "plain", isolation="none")
    handle = await plain.provision("run-none", "test", Source(repo=str(project)), SandboxSpec())
    result = await plain.exec(handle, ["no-such-command-devart"])
    await plain.teardown(handle)
    assert result.exit_code == 127 and "no-such-command-devart" in result.output


def test_missing_bubblewrap_is_reported_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bubblewrap_available() is None
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap.*DEVART_SANDBOX_ISOLATION=none"):
        LocalSandbox(tmp_path / "sandboxes")
