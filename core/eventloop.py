"""The event loop of devart's long-running processes: uvloop where it is installed, asyncio's otherwise.

The worker, the agents and the API spend much of their CPU in the event loop and in HTTP parsing (a run is a
handful of small requests and AMQP frames); uvloop and httptools (which uvicorn picks up by itself) cut that
cost without changing any behaviour, so they are used wherever the platform has them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the standard loop does the same work, a little slower
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest available loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
