"""Queue keepers share the work: each keeps alive only the attempts it holds a lease on, and adopts those whose
keeper is gone (``workers.queue_keeper``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devart.workers.queue_keeper import Leases, tick
from tests.helpers import unique
from tests.stack import Stack, sql

#: The attempts' heartbeat timeout: due after a third of it, orphaned after two thirds.
TIMEOUT = 30.0


class Recorder:
    """A stand-in for the Temporal client: records which attempts a keeper heartbeated."""

    def __init__(self) -> None:
        self.heartbeats: list[bytes] = []

    async def for_org(self, org: str) -> Recorder:
        """Every organisation's attempts are recorded alike (``Namespaces.for_org``)."""
        return self

    def get_async_activity_handle(self, task_token: bytes) -> Any:
        recorder = self

        class Handle:
            async def heartbeat(self, *details: Any) -> None:
                recorder.heartbeats.append(task_token)

        return Handle()

    def seen(self, rows: dict[str, str]) -> list[str]:
        """The names of the attempts heartbeated, in order."""
        return [rows[token.decode()] for token in self.heartbeats]


def _attempt(name: str, age: float) -> str:
    """A queued, published attempt whose last heartbeat was ``age`` seconds ago; returns its id."""
    task_id = f"{name}-{uuid.uuid4().hex[:8]}"
    sql("INSERT INTO task_attempts (id, run_id, stage, attempt, lane, skill, task_token, heartbeat_timeout, "
        "wait_timeout, input, status, late_reports, cost_micros, created_at, heartbeat_at) VALUES (:id, :run, 'work', "
        "1, :lane, 'noop', :token, :timeout, 3600, '{}', 'queued', 0, 0, now(), now() - make_interval(secs => :age))",
        id=task_id, run=unique("keeper-run"), lane=unique("keeper-lane"), token=task_id.encode(), timeout=TIMEOUT,
        age=age)
    return task_id


def _age(task_ids: list[str], age: float) -> None:
    """Let time pass for these attempts: their last heartbeat was ``age`` seconds ago."""
    sql("UPDATE task_attempts SET heartbeat_at = now() - make_interval(secs => :age) WHERE id = ANY(:ids)",
        age=age, ids=task_ids)


@pytest.fixture
def no_session_worker(stack: Stack) -> Iterator[None]:
    """The session's worker stopped, so its keeper adopts none of this test's attempts."""
    assert stack.worker is not None
    stack.supervisor.stop(stack.worker)
    try:
        yield
    finally:
        stack.worker = stack.supervisor.worker()


async def test_each_keeper_keeps_its_own_attempts_and_adopts_those_of_a_dead_one(no_session_worker: None) -> None:
    # Given two workers' keepers, A having published two attempts and B one, all due for a heartbeat
    a_leases, b_leases = Leases(), Leases()
    a1, a2, b1 = _attempt("a1", TIMEOUT / 2), _attempt("a2", TIMEOUT / 2), _attempt("b1", TIMEOUT / 2)
    names = {a1: "a1", a2: "a2", b1: "b1"}
    a_leases.take(a1)
    a_leases.take(a2)
    b_leases.take(b1)
    a_client, b_client = Recorder(), Recorder()
    # When both tick
    await tick(a_client, a_leases)  # type: ignore[arg-type]
    await tick(b_client, b_leases)  # type: ignore[arg-type]
    # Then each heartbeated only its own
    assert sorted(a_client.seen(names)) == ["a1", "a2"] and b_client.seen(names) == ["b1"]
    # When A's worker dies, and its attempts go unkept past two thirds of their heartbeat timeout
    _age([a1, a2], TIMEOUT * 0.7)
    _age([b1], 0)
    c_leases, c_client = Leases(), Recorder()
    b_client.heartbeats.clear()
    await asyncio.gather(tick(b_client, b_leases), tick(c_client, c_leases))  # type: ignore[arg-type]
    # Then the live keepers adopt them, each exactly once, and heartbeat them before Temporal's timeout
    adopted = sorted(b_client.seen(names) + c_client.seen(names))
    assert adopted == ["a1", "a2"], adopted
    assert all((task in b_leases) != (task in c_leases) for task in (a1, a2))
    # And a finished attempt leaves its keeper's leases
    sql("UPDATE task_attempts SET status = 'succeeded' WHERE id = :i", i=b1)
    await tick(b_client, b_leases)  # type: ignore[arg-type]
    assert b1 not in b_leases
    sql("UPDATE task_attempts SET status = 'superseded' WHERE id = ANY(:ids)", ids=[a1, a2])



async def test_a_tick_heartbeats_only_the_due_and_keeps_the_leases_still_open(no_session_worker: None) -> None:
    # Given a keeper's leases: one attempt due, one heartbeated a moment ago, one claimed, one deleted since
    leases, client = Leases(), Recorder()
    due, fresh, claimed, gone = (_attempt("due", TIMEOUT / 2), _attempt("fresh", 1), _attempt("claimed", TIMEOUT / 2),
                                 _attempt("gone", TIMEOUT / 2))
    names = {due: "due", fresh: "fresh", claimed: "claimed", gone: "gone"}
    for task_id in names:
        leases.take(task_id)
    sql("UPDATE task_attempts SET status = 'claimed' WHERE id = :i", i=claimed)
    sql("DELETE FROM task_attempts WHERE id = :i", i=gone)
    # When it ticks
    await tick(client, leases)  # type: ignore[arg-type]
    # Then only the due one is heartbeated; the claimed one stays leased (a hand-back queues it again), the gone one
    # does not
    assert client.seen(names) == ["due"]
    assert due in leases and fresh in leases and claimed in leases and gone not in leases
    sql("UPDATE task_attempts SET status = 'superseded' WHERE id = ANY(:ids)", ids=[due, fresh, claimed])
