"""A pull-through caching proxy of a Python package index: the one server a ``network: packages`` sandbox reaches.

The agent runs it (``serve_package_index``) on a unix socket that is bind-mounted into each packages-mode
sandbox, where ``sandboxes/package_forwarder.py`` exposes it on the sandbox's own loopback. It answers only:

- ``GET /simple/<project>/``: the upstream index page (PEP 691 JSON or PEP 503 HTML, as the client's ``Accept``
  asks), with every link to the upstream files host rewritten to ``/files/...`` on this proxy. Pages are cached
  for ``page_ttl`` seconds, and served from the cache whatever their age while upstream can't be reached, so a
  build that ran once runs again offline.
- ``GET /files/<path>``: an upstream file (also a PEP 658 ``.metadata`` file), streamed to the client while it is
  written to the cache. Index files are immutable by URL, so they are cached for good.

Everything else is refused: other methods (``CONNECT`` included) with 405, other paths, other ``Host`` names and
absolute-form targets (a client using it as a forward proxy) with 403. The proxy never forwards a client's URL,
only a project name or a checked file path appended to the configured upstream, so a sandbox can't make it
fetch anything else. Only this process writes the cache (temp file, then rename), and sandboxes never see it:
one project can't poison the packages another one installs. Upstream is reached with httpx, which honours the
machine's CA bundle (``SSL_CERT_FILE``) and proxy variables.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx

from devart.sandboxes.index_cache import cached_size, read_chunks, read_if_fresh, tee, write_atomically
from devart.sandboxes.index_pages import (
    LOOPBACK_HOSTS,
    SIMPLE_HTML,
    SIMPLE_JSON,
    Refusal,
    Upstream,
    parse_target,
    rewrite_html,
    rewrite_json,
)

_UPSTREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
log = logging.getLogger("devart.package_index")


@dataclass
class IndexStats:
    """What the proxy did, by kind of answer: tests and operators read cache hits here."""

    page_fetches: int = 0  # index pages fetched from upstream
    page_hits: int = 0  # index pages served from a fresh cache entry
    page_stale: int = 0  # index pages served from an expired cache entry because upstream failed
    file_fetches: int = 0  # files fetched from upstream (and cached)
    file_hits: int = 0  # files served from the cache
    refused: int = 0  # requests answered 403/405


@dataclass
class PackageIndex:
    """A running proxy: its unix socket, its loopback TCP URL of ``/simple`` if it listens on one, its counters."""

    socket: Path
    url: str | None
    stats: IndexStats = field(default_factory=IndexStats)


@dataclass
class Reply:
    status: int
    body: bytes | AsyncGenerator[bytes, None] = b""
    content_type: str = "text/plain; charset=utf-8"
    length: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class IndexProxy:
    """The HTTP/1.1 server (``h11`` over asyncio streams) and its two routes."""

    def __init__(self, cache: Path, upstream: Upstream, client: httpx.AsyncClient, *, page_ttl: float = 300.0,
                 hosts: frozenset[str] = LOOPBACK_HOSTS) -> None:
        self.cache = cache
        self.upstream = upstream
        self.client = client
        self.page_ttl = page_ttl
        self.hosts = hosts
        self.stats = IndexStats()
        self._writers: set[asyncio.StreamWriter] = set()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests on one connection (keep-alive) until the client or a refusal closes it."""
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next_request(conn, reader)
                if request is None:
                    break
                reply = await self._answer(conn, reader, request)
                await self._send(conn, writer, request.method == b"HEAD", reply)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with suppress(Exception):
                    await self._send(conn, writer, False, Reply(exc.error_status_hint, f"{exc}\n".encode()))
        except (ConnectionError, asyncio.IncompleteReadError, h11.LocalProtocolError, httpx.HTTPError):
            pass  # the client left, or upstream broke off a file mid-stream: the client sees a cut response
        except Exception:
            log.exception("package index proxy: request failed")  # the connection goes; the server stays up
        finally:
            self._writers.discard(writer)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()

    def close_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _next_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                return event
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _answer(self, conn: h11.Connection, reader: asyncio.StreamReader, request: h11.Request) -> Reply:
        try:
            if request.method not in (b"GET", b"HEAD"):
                raise Refusal(405, "this package index proxy answers only GET and HEAD")
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):  # a GET with a body: drop it
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
            headers = {name.decode().lower(): value.decode("latin-1") for name, value in request.headers}
            return await self._route(request.target.decode("latin-1"), headers, request.method == b"HEAD")
        except Refusal as refusal:
            if refusal.status in (403, 405):
                self.stats.refused += 1
            extra = [("allow", "GET, HEAD")] if refusal.status == 405 else []
            return Reply(refusal.status, f"{refusal}\n".encode(), headers=extra)

    async def _route(self, target: str, headers: dict[str, str], head: bool) -> Reply:
        kind, name = parse_target(target, headers.get("host", ""), self.hosts)
        if kind == "page":
            return await self._page(name, headers.get("accept", ""))
        return await self._file(name, head)

    async def _page(self, project: str, accept: str) -> Reply:
        """An index page: fresh from the cache, else from upstream (rewritten and cached), else stale."""
        kind = "json" if SIMPLE_JSON in accept else "html"
        cached = self.cache / "pages" / kind / project
        content = await asyncio.to_thread(read_if_fresh, cached, self.page_ttl)
        if content is not None:
            self.stats.page_hits += 1
            return _page_reply(kind, content)
        url = f"{self.upstream.index_url}/{project}/"
        try:
            response = await self.client.get(url, headers={"Accept": accept or SIMPLE_HTML})
        except httpx.HTTPError as exc:
            return await self._stale(cached, kind, f"could not reach the package index ({type(exc).__name__})")
        if response.status_code == 404:
            return Reply(404, f"no project {project!r} on the package index\n".encode())
        if response.status_code != 200:
            return await self._stale(cached, kind, f"the package index answered {response.status_code}")
        page_url = str(response.url)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == SIMPLE_JSON:
            kind, body = "json", rewrite_json(response.content, page_url, self.upstream)
        elif content_type in (SIMPLE_HTML, "application/vnd.pypi.simple.v1+html"):
            kind, body = "html", rewrite_html(response.text, page_url, self.upstream).encode()
        else:
            return Reply(502, f"the package index answered with {content_type!r}\n".encode())
        self.stats.page_fetches += 1
        await asyncio.to_thread(write_atomically, self.cache / "pages" / kind / project, body)
        return _page_reply(kind, body)

    async def _stale(self, cached: Path, kind: str, problem: str) -> Reply:
        content = await asyncio.to_thread(read_if_fresh, cached, None)
        if content is None:
            return Reply(502, f"{problem}, and this page is not cached\n".encode())
        self.stats.page_stale += 1
        return _page_reply(kind, content)

    async def _file(self, path: str, head: bool) -> Reply:
        """A file: from the cache, else streamed from upstream while it is cached (a HEAD only asks upstream)."""
        cached = self.cache / "files" / path
        size = await asyncio.to_thread(cached_size, cached)
        if size is not None:
            self.stats.file_hits += 1
            return Reply(200, read_chunks(cached), "application/octet-stream", size)
        request = self.client.build_request("HEAD" if head else "GET", f"{self.upstream.files_url}/{path}",
                                            headers={"Accept-Encoding": "identity"})
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            return Reply(502, f"could not reach the package index's files ({type(exc).__name__})\n".encode())
        if response.status_code != 200:
            await response.aclose()
            status = 404 if response.status_code in (403, 404) else 502
            return Reply(status, f"the package index's files answered {response.status_code}\n".encode())
        length = response.headers.get("content-length")
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        size = int(length) if length and length.isdigit() and not encoded else None
        if head:
            await response.aclose()
            return Reply(200, b"", "application/octet-stream", size)
        self.stats.file_fetches += 1
        return Reply(200, tee(response, cached), "application/octet-stream", size)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, head: bool, reply: Reply) -> None:
        headers = [("content-type", reply.content_type), *reply.headers]
        if reply.length is not None:
            headers.append(("content-length", str(reply.length)))
        elif isinstance(reply.body, bytes):
            headers.append(("content-length", str(len(reply.body))))
        if reply.status >= 400:
            headers.append(("connection", "close"))
        writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        body = reply.body
        try:
            if isinstance(body, bytes):
                if body and not head:
                    writer.write(conn.send(h11.Data(data=body)))
            elif not head:
                async for chunk in body:
                    writer.write(conn.send(h11.Data(data=chunk)))
                    await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        finally:
            if not isinstance(body, bytes):
                await body.aclose()


def _page_reply(kind: str, content: bytes) -> Reply:
    return Reply(200, content, SIMPLE_JSON if kind == "json" else f"{SIMPLE_HTML}; charset=utf-8")


@asynccontextmanager
async def serve_package_index(socket: Path, cache: Path, *, upstream: Upstream | None = None,
                              page_ttl: float = 300.0, tcp: bool = False,
                              transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[PackageIndex]:
    """Run the proxy on the unix socket ``socket`` (and on a loopback TCP port when ``tcp``) until the block ends.

    The socket is left connectable by any user (mode 0666): sandbox commands run as uid 65534 and reach it
    through a bind mount, while its folder (created 0700) keeps everyone else on the host away from it.
    ``transport`` replaces the network in tests.
    """
    await asyncio.to_thread(socket.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
    await asyncio.to_thread(cache.mkdir, mode=0o700, parents=True, exist_ok=True)
    async with httpx.AsyncClient(timeout=_UPSTREAM_TIMEOUT, follow_redirects=True, transport=transport) as client:
        proxy = IndexProxy(cache, upstream or Upstream(), client, page_ttl=page_ttl)
        servers = [await asyncio.start_unix_server(proxy.serve_connection, path=str(socket))]
        url = None
        try:
            os.chmod(socket, 0o666)
            if tcp:
                servers.append(await asyncio.start_server(proxy.serve_connection, "127.0.0.1", 0))
                url = f"http://127.0.0.1:{servers[-1].sockets[0].getsockname()[1]}/simple"
            yield PackageIndex(socket=socket, url=url, stats=proxy.stats)
        finally:
            for server in servers:
                server.close()
            proxy.close_connections()
            for server in servers:
                await server.wait_closed()
            with suppress(OSError):
                socket.unlink()
