"""How many live event streams one API process admits: in total, and per client address.

Streams are anonymous, so without a cap one client could hold every socket and coroutine the process has; the
per-client cap keeps one greedy dashboard (or attacker) from starving the rest, the total cap bounds the process.
Counted in the process, like the streams themselves (``api.services.listener``).
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import Gauge

from devart.core import settings
from devart.core.errors import TooMany

STREAMS = Gauge("devart_feed_streams", "Live event streams open in this API process")


class StreamRefused(TooMany):
    """A new stream would pass a cap; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after: int = retry_after


class Slot:
    """One admitted stream; ``release`` (idempotent) gives its place back."""

    def __init__(self, caps: StreamCaps, client: str) -> None:
        self._caps = caps
        self._client: str | None = client

    def release(self) -> None:
        if self._client is not None:
            self._caps._release(self._client)
            self._client = None


class StreamCaps:
    def __init__(self, total: int, per_client: int, retry_after: int) -> None:
        self.total = total
        self.per_client = per_client
        self.retry_after = retry_after
        self._open: Counter[str] = Counter()

    def admit(self, client: str) -> Slot:
        """A slot for a new stream of ``client``, or ``StreamRefused`` naming the cap it would pass."""
        if self._open[client] >= self.per_client:
            raise StreamRefused(f"client {client} already has {self._open[client]} event streams open, the limit "
                                f"per client (DEVART_FEED_STREAMS_PER_CLIENT={self.per_client}); close one or retry "
                                f"in {self.retry_after}s", self.retry_after)
        if self._open.total() >= self.total:
            raise StreamRefused(f"the API serves {self._open.total()} event streams, its limit "
                                f"(DEVART_FEED_MAX_STREAMS={self.total}); retry in {self.retry_after}s",
                                self.retry_after)
        self._open[client] += 1
        STREAMS.inc()
        return Slot(self, client)

    def _release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]
        STREAMS.dec()


_caps: StreamCaps | None = None


def shared() -> StreamCaps:
    """The process's caps, from ``DEVART_FEED_*`` (read once)."""
    global _caps
    if _caps is None:
        cfg = settings.feed()
        _caps = StreamCaps(cfg.max_streams, cfg.streams_per_client, cfg.retry_after)
    return _caps
