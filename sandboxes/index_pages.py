"""What the package index proxy accepts and serves: project names, file paths, and upstream pages rewritten.

Kept apart from ``sandboxes/package_index.py``, which runs the proxy's HTTP server (its cache is
``sandboxes/index_cache.py``): the rules here are pure (no I/O), so what a sandbox may ask for, and how an
upstream page's file links become the proxy's own ``/files/...`` paths, read in one place.
``package_environment`` points a sandbox's uv and pip at the proxy.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urljoin

#: The PEP 691 JSON and PEP 503 HTML content types this proxy serves pages as.
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
SIMPLE_HTML = "text/html"
#: Host names a client may address the proxy by: it is only ever reached through a loopback address.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
_PROJECT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_+~!%=-][A-Za-z0-9._+~!%=-]*$")
_HREF = re.compile(r"""(\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Upstream:
    """Where the proxy fetches from: the simple index and the host its file links point to."""

    index_url: str = "https://pypi.org/simple"
    files_url: str = "https://files.pythonhosted.org"

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_url", self.index_url.rstrip("/"))
        object.__setattr__(self, "files_url", self.files_url.rstrip("/"))


class Refusal(Exception):
    """A request this proxy will not serve, with the status and the reason shown to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def package_environment(simple_url: str) -> dict[str, str]:
    """The variables that point uv and pip at the index ``simple_url`` and at nothing else.

    ``PIP_CONFIG_FILE=/dev/null`` and ``UV_NO_CONFIG`` keep the host's ``/etc/pip.conf`` and ``/etc/uv/uv.toml``
    (and their index settings) out; uv may not download Python builds (only the index is reachable), and it
    copies from its cache (under the sandbox's home, another mount than the workspace, so hard links fail).
    """
    return {"UV_DEFAULT_INDEX": simple_url, "UV_INDEX_URL": simple_url, "PIP_INDEX_URL": simple_url,
            "PIP_CONFIG_FILE": "/dev/null", "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never", "UV_LINK_MODE": "copy",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def normalized_project(name: str) -> str:
    """The PEP 503 normalized form of a project name; refuses anything that is not one."""
    if not _PROJECT.match(name):
        raise Refusal(404, f"not a project name: {name!r}")
    return re.sub(r"[-_.]+", "-", name).lower()


def file_path(path: str) -> str:
    """``path`` (below ``/files/``) checked to be plain segments, so it maps to one cache file and one URL."""
    segments = path.split("/")
    if not path or not all(_SEGMENT.match(segment) for segment in segments):
        raise Refusal(404, f"not an index file path: {path!r}")
    return path


def parse_target(target: str, host: str, hosts: frozenset[str]) -> tuple[Literal["page", "file"], str]:
    """What a request for ``target`` asks for: ``("page", project)`` or ``("file", path)``; refuses anything else.

    Only a path (never a forward proxy's absolute URL) on one of ``hosts`` (the ``Host`` header ``host``) is served.
    """
    if not target.startswith("/"):
        raise Refusal(403, "this is a package index, not a forward proxy: only its own /simple/ and /files/ "
                      "paths are served")
    if _hostname(host) not in hosts:
        raise Refusal(403, f"requests for host {host!r} are not served here")
    path = target.split("?", 1)[0]
    if path.startswith("/simple/") and 0 < len(name := path[len("/simple/"):].rstrip("/")) and "/" not in name:
        return "page", normalized_project(name)
    if path.startswith("/files/"):
        return "file", file_path(path[len("/files/"):])
    raise Refusal(403, "only /simple/<project>/ and /files/... are served by this package index proxy")


def rewrite_link(link: str, page_url: str, upstream: Upstream) -> str:
    """A file link of an upstream page as the proxy's ``/files/...`` path (fragment kept); others unchanged."""
    absolute = urljoin(page_url, link)
    prefix = upstream.files_url + "/"
    return "/files/" + absolute[len(prefix):] if absolute.startswith(prefix) else absolute


def rewrite_html(page: str, page_url: str, upstream: Upstream) -> str:
    """A PEP 503 page with its ``href`` values rewritten by ``rewrite_link``."""

    def replace(match: re.Match[str]) -> str:
        link = rewrite_link(html.unescape(match.group(3)), page_url, upstream)
        return f"{match.group(1)}{match.group(2)}{html.escape(link, quote=True)}{match.group(2)}"

    return _HREF.sub(replace, page)


def rewrite_json(page: bytes, page_url: str, upstream: Upstream) -> bytes:
    """A PEP 691 page with each file's ``url`` rewritten by ``rewrite_link``."""
    data = json.loads(page)
    for entry in data.get("files", []):
        if isinstance(entry, dict) and isinstance(entry.get("url"), str):
            entry["url"] = rewrite_link(entry["url"], page_url, upstream)
    return json.dumps(data).encode()


def _hostname(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:80`` gives ``[::1]``), lower-cased."""
    name = host[:host.index("]") + 1] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    return name.lower()
