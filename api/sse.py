"""The Server-Sent Events response: it gives up on a client that stopped reading, and always frees its stream.

Starlette's ``StreamingResponse`` would wait forever on a client whose socket is full, holding the stream's place
under the caps; and when the client leaves before the first event, the body's own ``finally`` never runs. This
response bounds each write by ``send_timeout`` and calls ``on_close`` however the response ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class ClientStalled(Exception):
    """The client has not read what was sent for ``send_timeout`` seconds."""


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterable[str], *, send_timeout: float, on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._send_timeout = send_timeout
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientStalled:
            # The connection is closed without its last chunk: the client resumes with Last-Event-ID if it returns.
            client = scope.get("client") or ("?", 0)
            log.warning("event stream of %s closed: the client read nothing for %.0fs", client[0], self._send_timeout)
        finally:
            self._on_close()

    async def stream_response(self, send: Send) -> None:
        async def bounded(message: Message) -> None:
            try:
                async with asyncio.timeout(self._send_timeout):
                    await send(message)
            except TimeoutError:
                raise ClientStalled from None

        await super().stream_response(bounded)
