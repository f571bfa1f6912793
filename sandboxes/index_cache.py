"""The package index proxy's cache on disk: pages and files written whole or not at all, and read back.

Kept apart from ``sandboxes/package_index.py``, which decides what is served: these helpers only move bytes
between upstream, the cache folder and the client. Only the proxy writes the cache (a temp file, then a rename),
so a reader sees a previous file or a complete new one, never a part.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from pathlib import Path

import httpx

#: Bytes moved at a time between upstream, the cache, and the client.
CHUNK = 1 << 20


def write_atomically(target: Path, content: bytes) -> None:
    """Write ``content`` to ``target`` so that readers see the old file or the whole new one, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(temp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


def read_if_fresh(path: Path, ttl: float | None) -> bytes | None:
    """The file's content if it exists and is younger than ``ttl`` seconds (any age when ``ttl`` is None)."""
    try:
        if ttl is not None and time.time() - path.stat().st_mtime > ttl:
            return None
        return path.read_bytes()
    except OSError:
        return None


def cached_size(path: Path) -> int | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size if path.is_file() else None


async def read_chunks(path: Path) -> AsyncGenerator[bytes, None]:
    with await asyncio.to_thread(path.open, "rb") as source:
        while chunk := await asyncio.to_thread(source.read, CHUNK):
            yield chunk


async def tee(response: httpx.Response, target: Path) -> AsyncGenerator[bytes, None]:
    """Yield the upstream file and write it to ``target``: renamed into place only once complete."""
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    complete = False
    try:
        with os.fdopen(fd, "wb") as out:
            written = 0
            async for chunk in response.aiter_raw(CHUNK):
                await asyncio.to_thread(out.write, chunk)
                written += len(chunk)
                yield chunk
            expected = response.headers.get("content-length")
            if expected is not None and expected.isdigit() and int(expected) != written:
                raise httpx.ReadError(f"upstream sent {written} of {expected} bytes")
        await asyncio.to_thread(os.replace, temp, target)
        complete = True
    finally:
        await response.aclose()
        if not complete:
            with suppress(OSError):
                os.unlink(temp)
