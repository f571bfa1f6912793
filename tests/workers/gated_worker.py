"""The pipeline worker with its dispatch held at a gate, so a test can stop it while an activity is in flight.

``python -m tests.workers.gated_worker`` runs ``workers.pipeline_worker.serve`` unchanged, except that each
dispatch, once its attempt is recorded and before it is published, touches ``$DEVART_TEST_GATE/in-flight`` and
waits until ``$DEVART_TEST_GATE/open`` exists.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from devart.activities.dispatch import Dispatcher
from devart.core import eventloop
from devart.core.telemetry import logs
from devart.workers.pipeline_worker import serve

GATE = Path(os.environ["DEVART_TEST_GATE"])
#: The longest a dispatch waits at the gate; a test that never opens it fails rather than hangs.
GATE_DEADLINE = 120.0

_ensure_band = Dispatcher._ensure_band


async def _gated(self: Dispatcher, lane: str, requires: list[str], priority: int, org: str) -> None:
    (GATE / "in-flight").touch()
    deadline = time.monotonic() + GATE_DEADLINE
    while not (GATE / "open").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {GATE} was never opened")
        await asyncio.sleep(0.05)
    await _ensure_band(self, lane, requires, priority, org)


if __name__ == "__main__":
    Dispatcher._ensure_band = _gated  # type: ignore[method-assign]
    logs.configure()
    eventloop.run(serve())
