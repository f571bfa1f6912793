"""Choose the sandbox backend from settings, and give it the package index proxy its agent serves."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import lru_cache
from pathlib import Path

from devart.core import settings
from devart.sandboxes.base import Sandbox
from devart.sandboxes.index_pages import Upstream
from devart.sandboxes.package_index import PackageIndex, serve_package_index

#: A unix socket's path must fit in 108 bytes (with its terminating NUL); longer state folders use a temp folder.
MAX_SOCKET_PATH = 100


@lru_cache
def get_sandbox() -> Sandbox:
    """The configured backend; raises ``SandboxUnavailable`` with a fix when it cannot run here."""
    cfg = settings.sandbox()
    if cfg.backend == "kubernetes":
        from devart.sandboxes.kubernetes import KubernetesSandbox

        return KubernetesSandbox(settings.k8s())
    from devart.sandboxes.local import LocalSandbox

    root = cfg.root or settings.state().root / "sandboxes"
    return LocalSandbox(root.expanduser().resolve(), isolation=cfg.isolation)


@asynccontextmanager
async def package_index_for(sandbox: Sandbox, owner: str) -> AsyncIterator[PackageIndex | None]:
    """Serve the package index proxy to ``sandbox``'s ``network: packages`` commands while the block runs.

    The agent runs this around its whole life, as only the process that execs commands needs the proxy. Only
    the local backend uses it (Kubernetes pods reach the in-cluster proxy of ``DEVART_K8S_PACKAGE_PROXY``), and
    a sandbox that already has one keeps it. The socket is ``<home>/run/package-index-<owner>-<pid>.sock``
    (a private temp folder when that path is too long for a socket); the cache is shared by every agent using
    the same state folder.
    """
    from devart.sandboxes.local import LocalSandbox

    if not isinstance(sandbox, LocalSandbox) or sandbox.package_index is not None:
        yield None
        return
    cfg = settings.package_index()
    home = settings.state().root
    cache = (cfg.cache or home / "cache" / "packages").expanduser().resolve()
    name = f"package-index-{re.sub(r'[^A-Za-z0-9_.-]+', '-', owner)[:40]}-{os.getpid()}.sock"
    async with AsyncExitStack() as stack:
        socket = home / "run" / name
        if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
            socket = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="devart-index-"))) / name
        index = await stack.enter_async_context(serve_package_index(
            socket, cache, upstream=Upstream(cfg.url, cfg.files_url), page_ttl=cfg.page_ttl,
            tcp=sandbox.isolation == "none"))
        sandbox.package_index = index
        try:
            yield index
        finally:
            sandbox.package_index = None
