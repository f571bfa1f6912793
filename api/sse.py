"""The Server-Sent Events response: ``sse-starlette``'s, which frames events, pings an idle stream and bounds every
write; this module adds only that the stream's place is always given back.

A client that stopped reading must not hold its stream (and its place under the caps) forever: sse-starlette gives
up on a write after ``send_timeout`` seconds. When the client leaves before the first event, or a write times out,
the body's own ``finally`` may never run; ``on_close`` runs however the response ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

#: A comment line is sent this often so proxies and clients keep an idle stream open.
KEEPALIVE = 15.0
#: Line separator of every frame: plain newlines, as EventSource clients and ``devart events --follow`` read them.
#: Frames encoded ahead of the response (``listener.FeedEvent``) use it too.
SEP = "\n"


class EventStreamResponse(EventSourceResponse):
    def __init__(self, content: AsyncIterable[ServerSentEvent | bytes], *, send_timeout: float,
                 on_close: Callable[[], None]) -> None:
        super().__init__(content, ping=KEEPALIVE, sep=SEP, send_timeout=send_timeout,
                         headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            # The connection is closed without its last chunk: the client resumes with Last-Event-ID if it returns.
            client = scope.get("client") or ("?", 0)
            log.warning("event stream of %s closed: the client read nothing for %.0fs", client[0], self.send_timeout)
        finally:
            self._on_close()
