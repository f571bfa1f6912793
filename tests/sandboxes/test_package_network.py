"""``network: packages`` on real local sandboxes: the package index and nothing else.

uv installs a small pinned package through the agent's index proxy, and a second sandbox gets it from the
proxy's cache; the host's services, DNS, the outside world and every other use of the proxy stay out of reach;
``none`` and ``egress`` are as before; exit codes, signals and timeouts read as without the relay. These tests
need PyPI: without it they are skipped on a laptop, and run (so fail) under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Literal

import httpx
import psutil
import pytest
from kubernetes.client import Configuration

from devart.core import settings
from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.core.errors import SandboxError
from devart.core.settings import KubernetesSettings
from devart.sandboxes.bubblewrap import INDEX_PORT, INDEX_SOCKET, Confinement, interpreter_paths, userns_problem
from devart.sandboxes.factory import package_index_for
from devart.sandboxes.index_pages import Upstream
from devart.sandboxes.kubernetes import KubernetesSandbox
from devart.sandboxes.local import LocalSandbox, bubblewrap_available
from devart.sandboxes.package_index import PackageIndex, serve_package_index

UV = str(Path(sys.executable).parent / "uv")
INSTALL = [UV, "pip", "install", "--python", sys.executable, "--target", "deps", "iniconfig==2.0.0"]
IMPORT = [sys.executable, "-c", "import sys; sys.path.insert(0, 'deps'); import iniconfig; print(iniconfig.__file__)"]
#: Run inside the sandbox: each way out, and what became of it.
PROBES = """import json, socket, sys
port = int(sys.argv[1])
results = {}
def attempt(name, action):
    try:
        results[name] = action()
    except OSError as exc:
        results[name] = type(exc).__name__
def connect(host, port):
    socket.create_connection((host, port), timeout=5).close()
    return "connected"
def ask(request):
    with socket.create_connection(("127.0.0.1", INDEX_PORT), timeout=10) as conn:
        conn.sendall(request.encode())
        return conn.makefile("rb").readline().decode().split(" ")[1]
attempt("host service", lambda: connect("127.0.0.1", port))
attempt("postgresql", lambda: connect("127.0.0.1", 5432))
attempt("rabbitmq", lambda: connect("127.0.0.1", 5672))
attempt("outside", lambda: connect("1.1.1.1", 443))
attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443) and "resolved")
attempt("proxy to postgresql", lambda: ask("GET http://127.0.0.1:5432/ HTTP/1.1\\r\\nHost: 127.0.0.1:5432\\r\\n\\r\\n"))
attempt("proxy to example.com", lambda: ask("GET http://example.com/ HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n"))
attempt("other host", lambda: ask("GET /simple/iniconfig/ HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n"))
attempt("connect", lambda: ask("CONNECT pypi.org:443 HTTP/1.1\\r\\nHost: pypi.org:443\\r\\n\\r\\n"))
attempt("other path", lambda: ask("GET /pypi/iniconfig/json HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"))
attempt("post", lambda: ask("POST /simple/iniconfig/ HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nContent-Length: 0\\r\\n\\r\\n"))
attempt("index page", lambda: ask("GET /simple/iniconfig/ HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"))
print(json.dumps(results))
""".replace("INDEX_PORT", str(INDEX_PORT))
Provision = Callable[..., Awaitable[SandboxHandle]]


@pytest.fixture(scope="module")
def pypi() -> None:
    """Skip (locally) when PyPI is out of reach; under CI the tests run and show the failure."""
    if os.environ.get("CI") == "true":
        return
    try:
        httpx.get(f"{Upstream().index_url}/iniconfig/", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.skip(f"PyPI is not reachable from here ({exc}); these tests install from it")


@pytest.fixture
def bwrap() -> None:
    if bubblewrap_available() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bubblewrap (bwrap) is required under CI")
        pytest.skip("bubblewrap (bwrap) is not installed")


@pytest.fixture
def short_folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="devart-pkg-"))  # a unix socket path must fit in 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def index(pypi: None, short_folder: Path) -> AsyncIterator[PackageIndex]:
    async with serve_package_index(short_folder / "index.sock", short_folder / "cache", tcp=True) as served:
        yield served


@pytest.fixture
def sandbox(bwrap: None, tmp_path: Path, index: PackageIndex) -> LocalSandbox:
    return LocalSandbox(tmp_path / "sandboxes", package_index=index)


@pytest.fixture
async def provision(tmp_path: Path) -> AsyncIterator[Provision]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("a project\n")
    handles: list[tuple[LocalSandbox, SandboxHandle]] = []

    async def make(backend: LocalSandbox, network: Literal["none", "packages", "egress"] = "packages",
                   **spec: object) -> SandboxHandle:
        handle = await backend.provision(f"run-{uuid.uuid4().hex[:8]}", "build", Source(repo=str(project)),
                                         SandboxSpec(network=network, **spec))  # type: ignore[arg-type]
        handles.append((backend, handle))
        return handle

    yield make
    for backend, handle in handles:
        await backend.teardown(handle)


async def install(backend: LocalSandbox, handle: SandboxHandle) -> None:
    installed = await backend.exec(handle, INSTALL, timeout=120)
    assert installed.exit_code == 0, installed.output
    imported = await backend.exec(handle, IMPORT)
    assert imported.exit_code == 0 and imported.output.strip().endswith("deps/iniconfig/__init__.py"), imported.output


async def test_uv_installs_through_the_proxy_and_a_second_sandbox_is_served_from_its_cache(
        sandbox: LocalSandbox, provision: Provision, index: PackageIndex) -> None:
    # Given a packages-mode sandbox, whose commands run as nobody with uv's cache in the sandbox's home
    first = await provision(sandbox)
    whoami = await sandbox.exec(first, ["sh", "-c", "id -u; echo $UV_DEFAULT_INDEX $PIP_INDEX_URL $PIP_CONFIG_FILE"])
    simple = f"http://127.0.0.1:{INDEX_PORT}/simple"
    assert whoami.output.split() == ["65534", simple, simple, "/dev/null"]
    # When uv installs a pinned package, Then it comes from upstream through the proxy
    await install(sandbox, first)
    fetched = index.stats.file_fetches
    assert fetched >= 1 and index.stats.page_fetches >= 1
    # When a second sandbox (a fresh uv cache) installs the same package, Then the proxy serves it from its cache
    second = await provision(sandbox)
    hits = index.stats.file_hits
    await install(sandbox, second)
    assert index.stats.file_fetches == fetched and index.stats.file_hits > hits


async def test_pip_installs_through_the_proxy(sandbox: LocalSandbox, provision: Provision) -> None:
    handle = await provision(sandbox)
    result = await sandbox.exec(handle, [sys.executable, "-m", "pip", "install", "--no-input", "--target", "deps",
                                         "iniconfig==2.0.0"], timeout=120)
    assert result.exit_code == 0, result.output
    assert f"Looking in indexes: http://127.0.0.1:{INDEX_PORT}/simple" in result.output


async def test_a_packages_sandbox_reaches_the_index_and_nothing_else(
        sandbox: LocalSandbox, provision: Provision, index: PackageIndex) -> None:
    # Given a service on the host's loopback
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        handle = await provision(sandbox)
        result = await sandbox.exec(handle, [sys.executable, "-c", PROBES, str(port)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "host service": "ConnectionRefusedError", "postgresql": "ConnectionRefusedError",
        "rabbitmq": "ConnectionRefusedError", "outside": "OSError", "dns": "gaierror",
        "proxy to postgresql": "403", "proxy to example.com": "403", "other host": "403", "connect": "405",
        "other path": "403", "post": "405", "index page": "200",
    }
    assert index.stats.refused == 6


@pytest.mark.parametrize("network", ["none", "egress"])
async def test_other_modes_get_no_proxy(sandbox: LocalSandbox, provision: Provision,
                                        network: Literal["none", "egress"]) -> None:
    handle = await provision(sandbox, network)
    script = (f"test -e {INDEX_SOCKET} && echo socket; env | grep -c -E '^(UV|PIP)_' ; "
              "readlink /proc/self/ns/net")
    result = await sandbox.exec(handle, ["sh", "-c", script])
    lines = result.output.split()
    assert lines[0] == "0"  # no socket, and no index variables
    assert lines[1] != os.readlink("/proc/self/ns/net")  # egress too: a network of its own (slirp4netns)
    relay = await sandbox.exec(handle, [sys.executable, "-c", PROBES, "1"])
    assert "ConnectionRefusedError" in json.loads(relay.output)["index page"]


async def test_exit_codes_signals_and_timeouts_read_as_without_the_relay(
        sandbox: LocalSandbox, provision: Provision) -> None:
    packages, closed = await provision(sandbox), await provision(sandbox, "none")
    for command in (["sh", "-c", "exit 7"], ["sh", "-c", "kill -TERM $$"], ["sh", "-c", "kill -KILL $$"],
                    ["no-such-command"], ["sh", "-c", "echo out; echo err >&2"]):
        with_relay, without = await sandbox.exec(packages, command), await sandbox.exec(closed, command)
        assert with_relay.exit_code == without.exit_code, command
        if command[0] == "sh":
            assert with_relay.output == without.output, command
    # A command outliving its timeout is killed with its whole tree, relay included
    tag = f"300.{uuid.uuid4().int % 10**9:09d}"
    result = await sandbox.exec(packages, ["sh", "-c", f"sleep {tag} & sleep {tag}"], timeout=1.5)
    assert (result.timed_out, result.exit_code) == (True, -9)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    # the sleeps, and the relay (its command line holds the command's)
    while any(tag in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        assert loop.time() < deadline, "the command or its relay outlived the timeout"
        await asyncio.sleep(0.05)


async def test_running_out_of_memory_is_still_reported(sandbox: LocalSandbox, provision: Provision) -> None:
    if sandbox.cgroups is None:
        pytest.skip("no writable cgroup hierarchy here: limits fall back to prlimit")
    handle = await provision(sandbox, memory_mb=256)
    result = await sandbox.exec(handle, [sys.executable, "-c", "bytearray(2 << 30)"])
    assert (result.exit_code, result.oom_killed, result.timed_out) == (137, True, False)


async def test_unprivileged_bubblewrap_works_the_same(tmp_path: Path, bwrap: None, index: PackageIndex,
                                                      provision: Provision) -> None:
    if (problem := userns_problem()) is not None:
        pytest.skip(problem)
    # Given a backend planned as for a non-root agent: bubblewrap maps the user onto 65534 in a user namespace
    backend = LocalSandbox(tmp_path / "unprivileged", package_index=index)
    assert backend._confinement is not None
    backend._confinement = Confinement.plan(backend._confinement.bwrap, backend.root, None, interpreter_paths())
    handle = await provision(backend)
    argv = backend._confinement.argv(backend.root / handle.id, Path(handle.workspace), handle.spec, ["true"],
                                     index_socket=index.socket)
    assert "--unshare-user" in argv and "--unshare-net" in argv
    await install(backend, handle)


async def test_unisolated_sandboxes_use_the_proxys_loopback_port(tmp_path: Path, index: PackageIndex,
                                                                 provision: Provision) -> None:
    backend = LocalSandbox(tmp_path / "plain", isolation="none", package_index=index)
    handle = await provision(backend)
    script = ("import os, urllib.request; "
              "print(urllib.request.urlopen(os.environ['PIP_INDEX_URL'] + '/iniconfig/').status)")
    result = await backend.exec(handle, [sys.executable, "-c", script])
    assert result.output.strip() == "200", result.output
    async with serve_package_index(Path(index.socket).with_name("unix-only.sock"), tmp_path / "cache") as unix_only:
        with pytest.raises(SandboxError, match="tcp=True"):
            await LocalSandbox(tmp_path / "plain", isolation="none", package_index=unix_only).exec(handle, ["true"])


async def test_without_a_proxy_packages_mode_is_refused(bwrap: None, tmp_path: Path, provision: Provision) -> None:
    backend = LocalSandbox(tmp_path / "sandboxes")
    handle = await provision(backend)
    with pytest.raises(SandboxError) as caught:
        await backend.exec(handle, ["true"])
    assert caught.value.reason == "PackageIndexUnavailable" and not caught.value.retryable


@pytest.fixture
def state_home(monkeypatch: pytest.MonkeyPatch, short_folder: Path) -> Iterator[Path]:
    """``DEVART_HOME`` set to a fresh folder, with the settings read anew (and again once the test is over)."""
    home = short_folder / "home"
    monkeypatch.setenv("DEVART_HOME", str(home))
    monkeypatch.delenv("DEVART_PACKAGE_INDEX_CACHE", raising=False)  # the test session's own shared cache
    settings.state.cache_clear()
    settings.package_index.cache_clear()
    yield home
    monkeypatch.undo()
    settings.state.cache_clear()
    settings.package_index.cache_clear()


async def test_an_agent_serves_the_proxy_to_its_local_sandbox(state_home: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalSandbox(tmp_path / "plain", isolation="none")
    async with package_index_for(backend, "agent one") as index:
        assert index is not None and backend.package_index is index
        assert index.socket == state_home / "run" / f"package-index-agent-one-{os.getpid()}.sock"
        assert stat.S_ISSOCK(index.socket.stat().st_mode) and stat.S_IMODE(index.socket.stat().st_mode) == 0o666
        assert index.url is not None  # unisolated commands reach it over loopback TCP
        assert (state_home / "cache" / "packages").is_dir()
        async with package_index_for(backend, "agent one") as again:
            assert again is None and backend.package_index is index  # a sandbox keeps the proxy it has
    assert backend.package_index is None and not index.socket.exists()
    # A state folder too deep for a socket path: the socket goes to a private temp folder
    monkeypatch.setenv("DEVART_HOME", str(state_home / ("deep" * 30)))
    settings.state.cache_clear()
    async with package_index_for(backend, "agent one") as index:
        assert index is not None and len(str(index.socket)) < 108 and index.socket.name.startswith("package-index")
    assert not index.socket.parent.exists()


async def test_other_backends_need_no_local_proxy() -> None:
    backend = KubernetesSandbox(KubernetesSettings(), configuration=Configuration())
    async with package_index_for(backend, "agent") as index:
        assert index is None
