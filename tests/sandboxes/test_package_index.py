"""The package index proxy against a fake upstream: link rewriting, caching, offline pages, and refusals."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devart.sandboxes.index_pages import SIMPLE_JSON, Upstream, rewrite_html, rewrite_json
from devart.sandboxes.package_index import PackageIndex, serve_package_index

UPSTREAM = Upstream("https://index.example/simple", "https://files.example")
WHEEL = "packages/ab/cd/demo-1.0-py3-none-any.whl"
PAGE_HTML = (f'<html><body><a href="https://files.example/{WHEEL}#sha256=00" data-core-metadata="sha256=11">'
             'demo-1.0-py3-none-any.whl</a><a href="../../files-elsewhere/demo-0.9.tar.gz">old</a>'
             '<a href="https://elsewhere.example/demo-0.8.tar.gz">older</a></body></html>')
PAGE_JSON = {"meta": {"api-version": "1.1"}, "name": "demo",
             "files": [{"filename": "demo-1.0-py3-none-any.whl", "url": f"https://files.example/{WHEEL}",
                        "hashes": {"sha256": "00"}, "core-metadata": {"sha256": "11"}}]}


@dataclass
class FakeUpstream:
    """Answers like an index and its files host; ``down`` makes every request fail to connect."""

    down: bool = False
    requests: list[httpx.Request] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=lambda: {WHEEL: b"wheel" * 1000, f"{WHEEL}.metadata": b"M"})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("unreachable", request=request)
        url = str(request.url)
        if url == "https://index.example/simple/demo/":
            if SIMPLE_JSON in request.headers.get("accept", ""):
                return httpx.Response(200, json=PAGE_JSON, headers={"content-type": SIMPLE_JSON})
            return httpx.Response(200, text=PAGE_HTML, headers={"content-type": "text/html"})
        if url.startswith("https://files.example/") and (body := self.files.get(url[len("https://files.example/"):])):
            return httpx.Response(200, stream=httpx.ByteStream(body), headers={"content-length": str(len(body))})
        return httpx.Response(404)


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="devart-idx-"))  # short: a unix socket path must fit in 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def index(folder: Path, upstream: FakeUpstream) -> AsyncIterator[PackageIndex]:
    async with serve_package_index(folder / "index.sock", folder / "cache", upstream=UPSTREAM,
                                   transport=httpx.MockTransport(upstream)) as served:
        yield served


@pytest.fixture
async def client(index: PackageIndex) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(index.socket)),
                                 base_url="http://127.0.0.1:3141") as http:
        yield http


async def raw(index: PackageIndex, request: bytes) -> bytes:
    """Send ``request`` as is and return the whole answer (the proxy closes after a refusal)."""
    reader, writer = await asyncio.open_unix_connection(str(index.socket))
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer


def test_html_links_to_the_files_host_go_through_the_proxy() -> None:
    page = rewrite_html(PAGE_HTML, "https://index.example/simple/demo/", UPSTREAM)
    assert f'href="/files/{WHEEL}#sha256=00"' in page
    assert 'href="https://index.example/files-elsewhere/demo-0.9.tar.gz"' in page  # not the files host: unchanged
    assert 'href="https://elsewhere.example/demo-0.8.tar.gz"' in page
    relative = rewrite_html(f'<a href="../../{WHEEL}">x</a>', "https://files.example/simple/demo/",
                            Upstream("https://files.example/simple", "https://files.example"))
    assert relative == f'<a href="/files/{WHEEL}">x</a>'


def test_json_file_urls_go_through_the_proxy() -> None:
    page = json.loads(rewrite_json(json.dumps(PAGE_JSON).encode(), "https://index.example/simple/demo/", UPSTREAM))
    assert page["files"][0]["url"] == f"/files/{WHEEL}"
    assert page["files"][0]["core-metadata"] == {"sha256": "11"} and page["meta"] == PAGE_JSON["meta"]


async def test_pages_follow_the_clients_accept_header_and_are_cached_briefly(
        client: httpx.AsyncClient, upstream: FakeUpstream, index: PackageIndex) -> None:
    as_json = await client.get("/simple/Demo/", headers={"Accept": SIMPLE_JSON})
    assert as_json.headers["content-type"] == SIMPLE_JSON
    assert as_json.json()["files"][0]["url"] == f"/files/{WHEEL}"
    as_html = await client.get("/simple/demo", headers={"Accept": "text/html"})
    assert as_html.headers["content-type"].startswith("text/html") and f"/files/{WHEEL}" in as_html.text
    assert [r.headers["accept"] for r in upstream.requests] == [SIMPLE_JSON, "text/html"]
    again = await client.get("/simple/demo/", headers={"Accept": SIMPLE_JSON})
    assert again.content == as_json.content and len(upstream.requests) == 2
    assert (index.stats.page_fetches, index.stats.page_hits) == (2, 1)


async def test_expired_pages_are_served_while_upstream_is_down(folder: Path, upstream: FakeUpstream) -> None:
    async with serve_package_index(folder / "index.sock", folder / "cache", upstream=UPSTREAM, page_ttl=0,
                                   transport=httpx.MockTransport(upstream)) as index:
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(index.socket))) as http:
            first = await http.get("http://localhost/simple/demo/", headers={"Accept": SIMPLE_JSON})
            upstream.down = True
            offline = await http.get("http://localhost/simple/demo/", headers={"Accept": SIMPLE_JSON})
            unknown = await http.get("http://localhost/simple/other/", headers={"Accept": SIMPLE_JSON})
    assert offline.status_code == 200 and offline.content == first.content
    assert unknown.status_code == 502 and "not cached" in unknown.text
    assert (index.stats.page_fetches, index.stats.page_stale) == (1, 1)


async def test_files_and_metadata_are_cached_for_good(client: httpx.AsyncClient, upstream: FakeUpstream,
                                                      index: PackageIndex, folder: Path) -> None:
    for _ in range(2):
        wheel = await client.get(f"/files/{WHEEL}")
        assert wheel.status_code == 200 and wheel.content == upstream.files[WHEEL]
        assert wheel.headers["content-length"] == str(len(upstream.files[WHEEL]))
        assert (await client.get(f"/files/{WHEEL}.metadata")).content == b"M"
    assert [str(r.url) for r in upstream.requests] == [f"https://files.example/{WHEEL}",
                                                       f"https://files.example/{WHEEL}.metadata"]
    assert (index.stats.file_fetches, index.stats.file_hits) == (2, 2)
    assert (folder / "cache" / "files" / WHEEL).read_bytes() == upstream.files[WHEEL]
    assert not list((folder / "cache").rglob(".part-*"))  # written through a temp file, renamed when complete
    assert (await client.get("/files/packages/missing.whl")).status_code == 404


async def test_head_asks_upstream_without_fetching_or_caching(client: httpx.AsyncClient, upstream: FakeUpstream,
                                                              index: PackageIndex, folder: Path) -> None:
    answer = await client.head(f"/files/{WHEEL}")
    assert answer.status_code == 200 and answer.headers["content-length"] == str(len(upstream.files[WHEEL]))
    assert [r.method for r in upstream.requests] == ["HEAD"] and index.stats.file_fetches == 0
    assert not (folder / "cache" / "files" / WHEEL).exists()
    page = await client.head("/simple/demo/")
    assert page.status_code == 200 and int(page.headers["content-length"]) > 0


async def test_a_file_cut_short_upstream_is_not_cached(client: httpx.AsyncClient, upstream: FakeUpstream,
                                                       folder: Path) -> None:
    def short(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(b"partial"), headers={"content-length": "100"})

    upstream.files.clear()
    client_transport = httpx.MockTransport(short)
    async with serve_package_index(folder / "short.sock", folder / "cache", upstream=UPSTREAM,
                                   transport=client_transport) as index:
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(index.socket))) as http:
            with pytest.raises(httpx.HTTPError):
                await http.get(f"http://localhost/files/{WHEEL}")
    assert not (folder / "cache" / "files" / WHEEL).exists()
    assert not list((folder / "cache").rglob(".part-*"))


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET http://127.0.0.1:5432/ HTTP/1.1\r\nHost: 127.0.0.1:5432\r\n\r\n", 403),
    (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 403),
    (b"GET https://pypi.org/simple/demo/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n", 403),
    (b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n", 405),
    (b"POST /simple/demo/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi", 405),
    (b"GET /simple/demo/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 403),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 403),
    (b"GET /simple/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 403),
    (b"GET /etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 403),
    (b"GET /files/../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    (b"GET /files/packages/.hidden HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    (b"GET /simple/..%2F..%2Fetc/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    (b"garbage\r\n\r\n", 400),
])
async def test_anything_but_index_pages_and_files_is_refused(index: PackageIndex, upstream: FakeUpstream,
                                                             request_bytes: bytes, status: int) -> None:
    answer = await raw(index, request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert upstream.requests == []  # nothing was fetched on the client's behalf


async def test_keep_alive_serves_several_requests_on_one_connection(index: PackageIndex) -> None:
    get = b"GET /simple/demo/ HTTP/1.1\r\nHost: 127.0.0.1:3141\r\nAccept: text/html\r\n\r\n"
    answer = await raw(index, get + get + b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 ") == 2 and answer.count(b"HTTP/1.1 403 ") == 1
