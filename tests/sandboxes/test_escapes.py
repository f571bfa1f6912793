"""Ways out of a local sandbox, tried for real as root under bubblewrap: each must fail, or the test does.

The machine runs PostgreSQL, MariaDB and RabbitMQ, and devart's state folder and checkout sit on the host: a
``network: none`` stage must reach none of their sockets or files, nor write more than ``disk_mb`` anywhere, and
a ``network: egress`` stage must reach public addresses only (the host's loopback, its own addresses and the
private ranges stay closed) while DNS still works. Every test runs with the sandbox root under ``/tmp`` (which the
sandbox gets a private copy of) and inside the repository (beside the checkout and the venv the sandbox sees).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest

from devart.core import settings
from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.sandboxes import egress, volumes
from devart.sandboxes.bubblewrap import INDEX_SOCKET, Confinement, interpreter_paths
from devart.sandboxes.local import LocalSandbox, bubblewrap_available
from devart.sandboxes.package_index import serve_package_index

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Known host sockets of the services this machine runs; those present are tried, with every other under /run.
SERVICE_SOCKETS = ("/var/run/postgresql/.s.PGSQL.5432", "/run/postgresql/.s.PGSQL.5432", "/run/mysqld/mysqld.sock")
#: Names tried for the DNS check (one the host resolves and /etc/hosts does not hold).
DNS_NAMES = ("deb.debian.org", "pypi.org", "files.pythonhosted.org", "github.com", "example.com")
#: Run inside: ``python -c PROBE '<json list of [kind, target, port]>'``; prints what became of each attempt.
PROBE = r"""
import ctypes, json, os, socket, sys
def attempt(kind, target, port):
    try:
        if kind == "tcp":
            family = socket.AF_INET6 if ":" in target else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(3)
                s.connect((target, port))
        elif kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(3)
                s.connect(target.replace("@", "\0", 1))
        elif kind == "dns":
            socket.getaddrinfo(target, 443)
        elif kind == "exists":
            return "exists" if os.path.lexists(target) else "absent"
        elif kind == "list":
            return sorted(os.listdir(target))
        elif kind == "read":
            with open(target, "rb") as f:
                return f.read().decode(errors="replace")
        elif kind == "write":
            with open(target, "w") as f:
                f.write("pwned")
        elif kind == "ptrace":
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.ptrace(16, port, 0, 0) != 0:  # PTRACE_ATTACH
                return "refused " + os.strerror(ctypes.get_errno())
        elif kind == "sockets":  # every unix socket anywhere in the sandbox's filesystem
            found = []
            for top, dirs, files in os.walk("/"):
                if top == "/":
                    dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
                for name in files:
                    path = os.path.join(top, name)
                    try:
                        if (os.lstat(path).st_mode & 0o170000) == 0o140000:
                            found.append(path)
                    except OSError:
                        pass
            return found
        return "connected" if kind in ("tcp", "unix") else "done"
    except OSError as exc:
        return type(exc).__name__ + " " + (exc.strerror or str(exc))
print(json.dumps([attempt(*a) for a in json.loads(sys.argv[1])]))
"""
Probe = Callable[..., Awaitable[list[Any]]]
Network = Literal["none", "packages", "egress"]


@pytest.fixture(params=["under-tmp", "in-repository"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or bubblewrap_available() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the escape tests run as root with bubblewrap under CI")
        pytest.skip("needs root (commands then run as another user, on a tmpfs volume) and bubblewrap")
    if request.param == "under-tmp":
        yield tmp_path / "sandboxes"
        return
    folder = REPO_ROOT / f".pytest-sandboxes-{uuid.uuid4().hex[:8]}"
    try:
        yield folder / "sandboxes"
    finally:
        volumes.release(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def sandboxes(root: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[LocalSandbox, SandboxHandle]]]]:
    """Provisions sandboxes (``network: packages`` with a package index proxy of its own); tears them down after."""
    project = root.parent / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "README.md").write_text("a project\n")
    made: list[tuple[LocalSandbox, SandboxHandle]] = []
    socket_folder = Path(tempfile.mkdtemp(prefix="devart-esc-"))  # a socket path must fit in 108 bytes
    async with serve_package_index(socket_folder / "index.sock", socket_folder / "cache") as index:
        backend = LocalSandbox(root, package_index=index)

        async def make(network: Network = "none", **spec: Any) -> tuple[LocalSandbox, SandboxHandle]:
            handle = await backend.provision(f"run-{uuid.uuid4().hex[:8]}", "escape", Source(repo=str(project)),
                                             SandboxSpec(network=network, **spec))
            made.append((backend, handle))
            return backend, handle

        try:
            yield make
        finally:
            for owner, handle in made:
                await owner.teardown(handle)
            shutil.rmtree(socket_folder, ignore_errors=True)


async def probe(backend: LocalSandbox, handle: SandboxHandle, *attempts: tuple[str, str, int]) -> list[Any]:
    result = await backend.exec(handle, [sys.executable, "-I", "-c", PROBE, json.dumps(attempts)], timeout=60)
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output.strip().splitlines()[-1]))


def host_sockets() -> list[str]:
    """The unix sockets of this machine's services: under /run (so /var/run), and devart's state folder."""
    found = {path for path in SERVICE_SOCKETS if Path(path).exists()}
    for top in (Path("/run"), settings.state().root):
        for folder, _dirs, files in os.walk(top):
            for name in files:
                path = Path(folder) / name
                try:
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        found.add(str(path))
                except OSError:
                    continue
    return sorted(found)


async def test_host_unix_sockets_are_out_of_reach(sandboxes: Callable[..., Awaitable[Any]]) -> None:
    # Given the host's sockets (PostgreSQL's and MariaDB's among them when they run) and an abstract one of ours
    abstract = f"@devart-escape-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(abstract.replace("@", "\0", 1))
    listener.listen()
    paths = host_sockets()
    try:
        for network in ("none", "packages"):
            backend, handle = await sandboxes(network)
            # When a command looks for every socket it can see and connects to the host's
            found, *attempts = await probe(backend, handle, ("sockets", "/", 0),
                                           *(("unix", path, 0) for path in [*paths, abstract]))
            # Then the package index proxy's is the only one there is, and none of the host's answers
            assert found == ([str(INDEX_SOCKET)] if network == "packages" else []), found
            assert all(a.startswith("FileNotFoundError") for a in attempts[:-1]), attempts
            assert attempts[-1].startswith("ConnectionRefusedError"), attempts  # a network namespace of its own
    finally:
        listener.close()


async def test_the_state_folder_project_and_host_folders_are_invisible(
        sandboxes: Callable[..., Awaitable[Any]]) -> None:
    backend, handle = await sandboxes()
    state = settings.state().root
    hidden = [state, REPO_ROOT / ".devart", REPO_ROOT / "README.md", REPO_ROOT / "pyproject.toml", REPO_ROOT / ".git",
              Path("/run"), Path("/var"), Path("/home"), Path("/srv"), Path("/mnt"), Path("/media"), Path("/sys"),
              Path("/root/.bash_history"), Path("/proc/1/root") / str(REPO_ROOT / "README.md").lstrip("/"),
              Path("/proc/1/root/run")]
    results = await probe(backend, handle, *(("exists", str(path), 0) for path in hidden), ("list", "/root", 0),
                          ("list", str(REPO_ROOT), 0), ("list", "/", 0))
    *seen, in_root, in_repo, top = results
    # A folder made only as the way down to something is listed; one holding nothing bound is not there at all
    in_root, in_repo = ([] if isinstance(r, str) and r.startswith("FileNotFoundError") else r
                        for r in (in_root, in_repo))
    assert dict(zip(map(str, hidden), seen, strict=True)) == {str(path): "absent" for path in hidden}
    # /root and the checkout hold only the way down to the agent's Python (and here, to the sandboxes)
    ways = [path for path in [*interpreter_paths(), backend.root] if path.is_relative_to("/root")]
    assert set(in_root) <= {path.relative_to("/root").parts[0] for path in ways}
    allowed = {path.relative_to(REPO_ROOT).parts[0] for path in [*interpreter_paths(), backend.root]
               if path.is_relative_to(REPO_ROOT)}
    assert set(in_repo) <= allowed and "README.md" not in in_repo and ".devart" not in in_repo
    assert not {"run", "var", "home", "srv", "mnt", "media", "sys", "boot"} & set(top), top


@pytest.mark.parametrize("where", ["workspace", "home", "tmp", "shm"])
async def test_no_more_than_disk_mb_can_be_written(sandboxes: Callable[..., Awaitable[Any]], where: str) -> None:
    # Given a sandbox of 64 MiB
    backend, handle = await sandboxes(disk_mb=64)
    folder = {"workspace": ".", "home": "$HOME", "tmp": "/tmp", "shm": "/dev/shm"}[where]
    # When a command writes 300 MiB there in one file (which the file size limit may stop first), then in several
    script = (f"dd if=/dev/zero of={folder}/big bs=1M count=300 2>/dev/null; echo rc=$?; rm {folder}/big; "
              f"for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of={folder}/part$i bs=1M count=40 2>&1 || break; done; "
              f"df -k {folder} | tail -1")
    result = await backend.exec(handle, ["sh", "-c", script])
    # Then the writes fail inside the command, and at most the limit was written
    assert "rc=0" not in result.output and "No space left on device" in result.output, result.output
    assert int(result.output.split()[-4]) <= 64 << 10  # KiB used on its filesystem
    if where in ("workspace", "home"):  # the volume: on the host, full and reported as such
        taken, full = volumes.used(backend.root / handle.id, 64)
        assert taken <= 64 << 20 and full and result.disk_exceeded


async def test_egress_reaches_neither_the_host_nor_private_networks(
        sandboxes: Callable[..., Awaitable[Any]]) -> None:
    # Given a listener on all of the host's addresses, an abstract socket, and the host's own services
    accepted: list[asyncio.StreamWriter] = []

    def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        writer.close()

    server = await asyncio.start_server(accept, "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    abstract = f"@devart-escape-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(abstract.replace("@", "\0", 1))
    listener.listen()
    targets = [("127.0.0.1", port), ("127.0.0.1", 5672), ("127.0.0.1", 5432), ("0.0.0.0", port),
               ("10.0.2.2", port), ("10.0.2.2", 5672), ("10.1.2.3", port), ("172.16.0.1", port),
               ("192.168.0.1", port), ("100.64.0.1", port), ("169.254.169.254", 80), ("::1", port),
               *((address, port) for address in egress.host_addresses())]
    name = next((n for n in DNS_NAMES if n not in Path("/etc/hosts").read_text() and resolves(n)), None)
    try:
        async with server:
            backend, handle = await sandboxes("egress")
            # When an egress command connects to each of them
            results = await probe(backend, handle, *(("tcp", host, p) for host, p in targets),
                                  ("unix", abstract, 0), ("read", "/proc/net/route", 0),
                                  *([("dns", name, 0)] if name else []))
    finally:
        listener.close()
    # Then none answers: the host's loopback is the sandbox's own, everything else has no route
    outcomes = dict(zip([f"{host}:{p}" for host, p in targets] + ["abstract"], results, strict=False))
    assert not [t for t, outcome in outcomes.items() if not outcome.startswith(("OSError", "ConnectionRefused"))]
    assert not accepted
    # ... while the sandbox has a way out through slirp4netns, and names resolve when the host resolves them
    routes = results[len(targets) + 1]
    assert "\t00000000\t0202000A\t" in routes, routes  # default via 10.0.2.2
    if name is not None:
        assert results[-1] == "done", f"{name} did not resolve in the sandbox: {results[-1]}"
    # ... and the command cannot lift the routes that close the rest
    await routes_stay(backend, handle)


async def routes_stay(backend: LocalSandbox, handle: SandboxHandle) -> None:
    result = await backend.exec(handle, ["sh", "-c", "PATH=$PATH:/usr/sbin:/sbin; ip route del unreachable 10.0.0.0/8; "
                                         "ip route add 192.0.2.0/24 dev tap0; ip route show 10.0.0.0/8"])
    assert result.output.count("Operation not permitted") == 2 and "unreachable 10.0.0.0/8" in result.output, (
        result.output)


def resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, 443)
    except OSError:
        return False
    return True


def slirps() -> list[psutil.Process]:
    """The slirp4netns processes this test process started."""
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "slirp4netns"]


async def test_slirp4netns_goes_with_the_command(sandboxes: Callable[..., Awaitable[Any]]) -> None:
    backend, handle = await sandboxes("egress")
    assert (await backend.exec(handle, ["true"])).exit_code == 0 and not slirps()
    # A timed-out command and a cancelled one take their network with them
    timed_out = await backend.exec(handle, ["sleep", "30"], timeout=1)
    assert timed_out.timed_out and not slirps()
    task = asyncio.create_task(backend.exec(handle, ["sleep", "30"]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not slirps():
        assert loop.time() < deadline, "slirp4netns never started"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not slirps()


async def test_egress_without_slirp4netns_is_refused(sandboxes: Callable[..., Awaitable[Any]]) -> None:
    backend, handle = await sandboxes("egress")
    backend._egress = None  # as on a machine without it
    with pytest.raises(Exception, match="apt-get install -y slirp4netns") as refused:
        await sandboxes("egress")
    assert getattr(refused.value, "reason", None) == "EgressUnavailable"
    with pytest.raises(Exception, match="apt-get install -y slirp4netns"):
        await backend.exec(handle, ["true"])


async def test_no_privilege_can_be_gained_or_borrowed(sandboxes: Callable[..., Awaitable[Any]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a secret in the agent's environment
    marker = f"devart-marker-{uuid.uuid4().hex}"
    monkeypatch.setenv("DEVART_ESCAPE_MARKER", marker)
    backend, handle = await sandboxes()
    script = (f"cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c {marker}; "
              f"ls -d /proc/[0-9]* | wc -l; test -e /proc/{os.getpid()}/environ && echo agent-visible; "
              "grep -E '^(NoNewPrivs|CapEff|CapPrm)' /proc/self/status; "
              "su -c id root </dev/null 2>&1 | grep -c 'uid=0'; "
              "for f in /etc/devart-pwned /usr/devart-pwned /devart-pwned /proc/sys/kernel/hostname; do "
              "{ echo x > $f; } 2>/dev/null && echo wrote $f; done; "
              "awk '$5 == \"/\" || $5 == \"/usr\" || $5 ~ /\\/volume$/ {print $5, $6}' /proc/self/mountinfo")
    result = await backend.exec(handle, ["sh", "-c", script])
    lines = result.output.splitlines()
    # Then no process it sees carries the agent's environment, and the agent's process is not among them
    assert lines[0] == "0" and int(lines[1]) <= 6 and "agent-visible" not in result.output
    # ... it has no capability, and a setuid binary gives it none (no_new_privs, nosuid mounts)
    assert {"NoNewPrivs:\t1", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000"} <= set(lines[2:5])
    assert lines[5] == "0" and "wrote" not in result.output, result.output
    mounts = dict(line.split(" ", 1) for line in lines[6:])
    assert all("nosuid" in options for options in mounts.values()) and "ro" in mounts["/"].split(","), mounts
    assert "nodev" in next(o for point, o in mounts.items() if point.endswith("/volume"))
    # ... and tracing the sandbox's first process (bubblewrap's, root's) is refused
    assert (await probe(backend, handle, ("ptrace", "", 1)))[0].startswith("refused")


async def test_teardown_never_follows_a_link_out_of_the_sandbox(sandboxes: Callable[..., Awaitable[Any]],
                                                                tmp_path: Path) -> None:
    # Given a host folder with a file, and a sandbox whose command links to it from its workspace and home
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep me\n")
    backend, handle = await sandboxes()
    result = await backend.exec(handle, ["sh", "-c", f"ln -s {precious} link && ln -s {precious} $HOME/link "
                                         f"&& ln -s / root"])
    assert result.exit_code == 0, result.output
    # When it is torn down, Then the host folder is untouched, and the volume is unmounted and gone
    await backend.teardown(handle)
    assert (precious / "keep.txt").read_text() == "keep me\n"
    assert not (backend.root / handle.id).exists() and not volumes.mounts_under(backend.root / handle.id)


async def test_egress_is_the_same_under_an_unprivileged_bubblewrap(sandboxes: Callable[..., Awaitable[Any]]) -> None:
    # Given a backend planned as for a non-root agent: bubblewrap maps the user onto 65534 in a user namespace,
    # and slirp4netns and the routes enter that namespace too
    backend, _ = await sandboxes()
    assert backend._confinement is not None
    backend._confinement = Confinement.plan(backend._confinement.bwrap, backend.root, None, interpreter_paths())
    _, handle = await sandboxes("egress")  # its volume then belongs to this user, as without root
    # When its command connects to the host's loopback and reads its routes
    refused, routes = await probe(backend, handle, ("tcp", "10.0.2.2", 5672), ("read", "/proc/net/route", 0))
    # Then the host stays closed, the way out is slirp's, and the routes cannot be lifted
    assert refused.startswith("OSError") and "\t00000000\t0202000A\t" in routes
    await routes_stay(backend, handle)


def test_the_resolver_file_goes_where_resolv_conf_leads(tmp_path: Path) -> None:
    target = tmp_path / "run" / "resolv.conf"
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)  # as systemd-resolved's stub, under /run, which sandboxes do not get
    assert egress.resolv_conf_path(link) == target
    assert egress.resolv_conf_path(target) == target
