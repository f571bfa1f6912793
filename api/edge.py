"""What every HTTP request passes through before routing: URL text, body size, and a last answer for the unexpected.

A pure ASGI middleware, so it sees the request before FastAPI reads anything: a body whose ``Content-Length`` is past
the route's limit is refused without reading a byte of it, and a body sent in chunks is counted as it arrives and
refused at the first chunk past the limit, so neither a 200 MB upload nor a slow stream is ever held in memory.
Everything it refuses is a JSON ``{"detail": ...}`` naming the limit, declared in the OpenAPI document.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devart.core.bounds import size

log = logging.getLogger(__name__)


def too_large(limit: int) -> str:
    return f"the request body is larger than {size(limit)}, the limit of this route"


def url_problem(scope: Scope) -> str | None:
    """Why the URL cannot be served, or None: PostgreSQL text cannot hold NUL, so an id or filter with one never
    matches anything and would only fail the query."""
    if "\x00" in scope["path"]:
        return "the URL path contains a NUL byte (%00), which no devart name or id contains"
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return f"query parameter '{name.replace(chr(0), '%00')}' contains a NUL byte (%00), which no devart " \
                   "filter accepts"
    return None


class RequestGuard:
    """Refuses a URL with NUL bytes (400) and a body past its route's limit (413); turns an unexpected error into a
    JSON 500 that keeps the connection open (uvicorn closes it when an exception escapes the application)."""

    def __init__(self, app: ASGIApp, *, default_limit: int, limits: dict[str, int]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if problem := url_problem(scope):
            await JSONResponse({"detail": problem}, status_code=400)(scope, receive, send)
            return
        limit = self.limits.get(scope["path"].rstrip("/"), self.default_limit)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": too_large(limit)}, status_code=413)(scope, receive, send)
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI's HTTPException: its body parsing passes it on as it is, to the 413 handler.
                    raise HTTPException(413, too_large(limit))
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except Exception:
            if started:
                raise
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            body = {"detail": "internal error: the API could not answer this request; its log has the details"}
            await JSONResponse(body, status_code=500)(scope, receive, send)
