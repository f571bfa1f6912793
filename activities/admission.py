"""How many agent tasks one pipeline worker lets wait in their lanes at once.

A task waiting in its lane is kept alive by its worker's queue keeper: one Temporal heartbeat per waiting task every
third of its heartbeat timeout (``workers.queue_keeper``). Thousands waiting at once is hundreds of heartbeats a
second, more than Temporal answers on a small machine beside the runs themselves; the keeper falls behind, waiting
attempts time out, Temporal retries them (one more task each), and a stage can run out of attempts without any
agent having failed. So the worker admits at most ``limit`` waiting tasks (``DEVART_WORKER_MAX_WAITING_TASKS``,
counted by the keeper's ``Leases``).
A dispatch beyond that holds its activity slot, heartbeating in-process (the SDK sends one heartbeat per heartbeat
timeout at most), until a waiting task is claimed or ends; the dispatches after it stay unstarted in Temporal's task
queue, where waiting costs no heartbeat at all. The backlog then waits in Temporal instead of RabbitMQ, and nothing
times out for want of a heartbeat.

Held dispatches take the worker's activity slots (``max_concurrent_activities``): other regular activities (a remote
provision, learning) wait behind them until the lanes drain, which agents do without the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from temporalio import activity

#: Seconds between looks at the waiting count while a dispatch holds (the queue keeper updates it every tick).
LOOK_EVERY = 0.5


class Admission:
    """Admits a dispatch while fewer than ``limit`` of this worker's tasks wait in their lanes (``waiting()``).

    ``enter`` and ``leave`` bracket the dispatch's recording and publishing, so dispatches admitted at the same time
    count against the limit before their tasks are waiting ones.
    """

    def __init__(self, limit: int, waiting: Callable[[], int]) -> None:
        self.limit = limit
        self._waiting = waiting
        self._entering = 0

    def full(self) -> bool:
        return self._waiting() + self._entering >= self.limit

    async def enter(self) -> None:
        """Wait for room, heartbeating the activity (when called from one) while the lanes are full."""
        while self.full():
            if activity.in_activity():
                activity.heartbeat(f"waiting for room: {self._waiting()} tasks of this worker wait in their lanes "
                                   f"(at most {self.limit})")
            await asyncio.sleep(LOOK_EVERY)
        self._entering += 1

    def leave(self) -> None:
        self._entering -= 1
