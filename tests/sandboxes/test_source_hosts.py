"""A run's remote source never reaches the host's own services or private networks: real servers, real git.

A git server on 127.0.0.1 stands for the host's services: refused by default, it clones fine once the operator
allows it (``DEVART_SOURCE_ALLOWED_HOSTS``), and then only from the address that was checked.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from devart.core import settings
from devart.core.contracts import Source
from devart.core.errors import SandboxError
from devart.sandboxes import source_fetch
from devart.sandboxes.source_hosts import Remote, refusal
from devart.sandboxes.workspace import SOURCE_UNREACHABLE, materialize, plan_checkout

#: Seconds a cancelled clone may take to be gone.
CANCEL_DEADLINE = 5.0


@pytest.fixture
def allow(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the operator's allowlist for this test (empty until set)."""

    def setting(value: str) -> None:
        monkeypatch.setenv("DEVART_SOURCE_ALLOWED_HOSTS", value)
        settings.source.cache_clear()

    setting("")
    yield setting
    settings.source.cache_clear()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port on the host's loopback that counts as one of its services: nothing may connect to it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server
        with pytest.raises(BlockingIOError):
            server.accept()  # no source check or clone ever connected


class Handler(SimpleHTTPRequestHandler):
    """Serves a folder and counts the requests; quiet."""

    def log_message(self, format: str, *args: Any) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., tuple[str, ThreadingHTTPServer]]]:
    """Serve a bare repository (branch ``main``) over dumb HTTP at 127.0.0.1 (or another loopback address)."""
    work, www = tmp_path / "work", tmp_path / "www"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "app.txt").write_text("served\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")
    git(tmp_path, "clone", "-q", "--bare", str(work), str(www / "repo.git"))
    git(www / "repo.git", "update-server-info")
    servers: list[ThreadingHTTPServer] = []

    def serve(address: str = "127.0.0.1", host: str | None = None) -> tuple[str, ThreadingHTTPServer]:
        server = ThreadingHTTPServer((address, 0), functools.partial(Handler, directory=str(www)))
        server.requests = 0  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://{host or address}:{server.server_address[1]}/repo.git", server

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=devart", "-c", "user.email=devart@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize(("url", "address", "why"), [
    ("http://127.0.0.1:{port}/x.git", "127.0.0.1", "loopback"),
    ("http://localhost:{port}/x.git", "127.0.0.1", "loopback"),
    ("http://[::1]:{port}/x.git", "::1", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/x.git", "::ffff:127.0.0.1", "loopback"),
    ("http://127.1:{port}/x.git", "127.0.0.1", "loopback"),
    ("http://2130706433:{port}/x.git", "127.0.0.1", "loopback"),
    ("http://0.0.0.0:{port}/x.git", "0.0.0.0", "unspecified"),
    ("https://10.1.2.3/x.git", "10.1.2.3", "private"),
    ("https://192.168.1.1/x.git", "192.168.1.1", "private"),
    ("http://[fd00::1]/x.git", "fd00::1", "private"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
    ("http://100.64.0.1/x.git", "100.64.0.1", "shared (CGNAT)"),
    ("http://224.0.0.1/x.git", "224.0.0.1", "multicast"),
    ("ssh://git@127.0.0.1:{port}/x.git", "127.0.0.1", "loopback"),
    ("git@localhost:team/x.git", "127.0.0.1", "loopback"),
    ("git://127.0.0.1:{port}/x.git", "127.0.0.1", "loopback"),
    ("http://{hostname}:{port}/x.git", "", ""),  # this machine's own name
])
async def test_the_hosts_own_and_private_addresses_are_refused(
        allow: Callable[[str], None], listener: socket.socket, url: str, address: str, why: str) -> None:
    url = url.format(port=listener.getsockname()[1], hostname=socket.gethostname())
    with pytest.raises(SandboxError) as caught:
        await plan_checkout(Source(repo=url, ref="main"))
    message = str(caught.value)
    assert not caught.value.retryable and caught.value.reason == "SourceRefused"
    assert f"source {url} is refused" in message and "DEVART_SOURCE_ALLOWED_HOSTS=" in message
    assert address in message and why in message


@pytest.mark.parametrize("url", ["ext::sh -c touch% {marker}", "fd::3", "ext::git-upload-pack %S"])
async def test_remote_helpers_are_refused(tmp_path: Path, url: str) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(SandboxError, match="asks git for a remote helper") as caught:
        await plan_checkout(Source(repo=url.format(marker=marker)))
    assert not caught.value.retryable and not marker.exists()


async def test_an_allowed_loopback_server_clones(
        allow: Callable[[str], None], served: Callable[..., tuple[str, ThreadingHTTPServer]], tmp_path: Path) -> None:
    url, server = served()
    allow("git.internal.example, 127.0.0.1")
    plan = await plan_checkout(Source(repo=url, ref="main"))
    assert plan.remote is not None and plan.remote.addresses == ("127.0.0.1",)
    workspace = await materialize(plan, tmp_path / "workspace", limit_bytes=64 << 20)
    assert (workspace / "app.txt").read_text() == "served\n"
    assert git(workspace, "remote", "get-url", "origin") == url
    assert server.requests > 0  # type: ignore[attr-defined]

    # Allowed by name, or by a network
    for allowed, host in (("localhost", "localhost"), ("127.0.0.0/8", "127.0.0.1")):
        allow(allowed)
        other = url.replace("127.0.0.1", host)
        workspace = await materialize(await plan_checkout(Source(repo=other)), tmp_path / f"by-{host}")
        assert (workspace / "app.txt").read_text() == "served\n"


async def test_git_connects_only_to_the_checked_address(
        served: Callable[..., tuple[str, ThreadingHTTPServer]], tmp_path: Path) -> None:
    # Given a server on 127.0.0.2 only, and a name that now resolves elsewhere (127.0.0.1: nothing listens there)
    url, server = served("127.0.0.2", host="localhost")
    port = server.server_address[1]
    remote = Remote(url=url, scheme="http", host="localhost", port=port, addresses=("127.0.0.2",))
    # When git clones from what was checked
    await source_fetch.clone_remote(remote, tmp_path / "pinned", over=None)
    # Then it went to the checked address, never resolving the name again
    assert (tmp_path / "pinned" / "app.txt").read_text() == "served\n"
    with pytest.raises(source_fetch.GitFailed, match="Failed to connect|Couldn't connect"):
        unpinned = Remote(url=url, scheme="http", host="localhost", port=port, addresses=("127.0.0.1",))
        await source_fetch.clone_remote(unpinned, tmp_path / "unpinned", over=None)


async def test_redirects_are_not_followed(
        allow: Callable[[str], None], served: Callable[..., tuple[str, ThreadingHTTPServer]], tmp_path: Path) -> None:
    target, target_server = served()

    class Redirect(Handler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target + self.path.removeprefix("/repo.git"))
            self.end_headers()

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    redirector.requests = 0  # type: ignore[attr-defined]
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    try:
        allow("127.0.0.1")
        url = f"http://127.0.0.1:{redirector.server_address[1]}/repo.git"
        with pytest.raises(SandboxError, match="returned error: 302") as caught:
            await materialize(await plan_checkout(Source(repo=url)), tmp_path / "workspace")
        assert not caught.value.retryable
        assert target_server.requests == 0  # type: ignore[attr-defined]
        assert not (tmp_path / "workspace").exists()
    finally:
        redirector.shutdown()
        redirector.server_close()


async def test_an_unreachable_server_is_retried(allow: Callable[[str], None], tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again: connections are refused
    allow("127.0.0.1")
    url = f"http://127.0.0.1:{port}/x.git"
    with pytest.raises(SandboxError, match=f"cannot reach repository {url}") as caught:
        await materialize(await plan_checkout(Source(repo=url)), tmp_path / "workspace")
    assert caught.value.retryable and caught.value.reason == SOURCE_UNREACHABLE

    url = "http://no-such-host.invalid/x.git"  # a name that never resolves (RFC 2606)
    with pytest.raises(SandboxError, match="could not resolve host no-such-host.invalid") as caught:
        await plan_checkout(Source(repo=url))
    assert caught.value.retryable and caught.value.reason == SOURCE_UNREACHABLE


async def test_cancelling_a_clone_from_a_hung_server_stops_it(allow: Callable[[str], None], tmp_path: Path) -> None:
    # Given a server that accepts and never answers
    connected = asyncio.Event()

    async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await asyncio.Event().wait()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    try:
        allow("127.0.0.1")
        dest = tmp_path / "hung-workspace"
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x.git"
        task = asyncio.create_task(materialize(await plan_checkout(Source(repo=url)), dest))
        await asyncio.wait_for(connected.wait(), 15)
        # When the provision is cancelled
        started = time.monotonic()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CANCEL_DEADLINE)
        # Then git is gone at once, and so is the workspace
        assert task in done and task.cancelled()
        assert time.monotonic() - started < CANCEL_DEADLINE
        assert not dest.exists()
        assert not [p for p in psutil.process_iter(["cmdline"]) if str(dest) in " ".join(p.info["cmdline"] or [])]
    finally:
        server.close()


def test_single_address_transports_are_pinned_too() -> None:
    ssh = Remote(url="ssh://git@example.com:2222/a.git", scheme="ssh", host="example.com", port=2222,
                 addresses=("2001:db8::1", "93.184.216.34"))
    assert ssh.ssh_command({}) == ("ssh -o BatchMode=yes -o HostName=93.184.216.34 "
                                   "-o HostKeyAlias='[example.com]:2222'")
    daemon = Remote(url="git://example.com/a.git", scheme="git", host="example.com", port=9418,
                    addresses=("93.184.216.34",))
    assert daemon.clone_url() == "git://93.184.216.34:9418/a.git"
    assert "protocol.git.allow=always" in daemon.git_options() and "protocol.allow=never" in daemon.git_options()
    assert refusal(ipaddress.ip_address("93.184.216.34")) is None
