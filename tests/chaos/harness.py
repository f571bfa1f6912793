"""Chaos: a batch of real runs while the stack's processes are SIGKILLed and started again, then what must hold.

``run_batch`` publishes the batch's pipelines, starts the runs of a ``Plan`` on schedule, cancels the ones meant to
be cancelled once an agent holds them, and meanwhile kills the planned parts one after the other: a part is killed,
stays down for its outage, is started again through the stack's own handles and must serve again before the next
kill. It returns once every run has ended (or the time they had passed); ``tests/chaos/checks.py`` then says what went
wrong. The stack is anything that can kill and revive its parts (``Target``): the test suite's session stack and the
benchmark's.

The client side is as careful as a real one: a start the API may or may not have taken (the connection broke after
the request went out) is looked up by the run's ``ticket`` parameter before it is sent again, so every planned run
has exactly one run to judge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, GetSystemInfoRequest
from temporalio.service import RPCError, RPCStatusCode

from devart.core.database.models import utcnow
from tests.chaos.clients import Database, Temporal, until
from tests.chaos.plan import Plan, PlannedKill, PlannedRun, pipelines

log = logging.getLogger("devart.chaos")

#: Seconds a killed part may take to serve again once started (Temporal's db file, the API's and worker's imports).
REVIVE_DEADLINE = 90.0
#: Seconds the client keeps trying one call (a start, a cancel) through outages.
CALL_DEADLINE = 120.0
#: Pause between two tries of a call the API could not take: paces the retries, waits for nothing in particular.
CALL_BACKOFF = 0.5
#: How often the batch's run rows are read while waiting for them to end.
POLL = 0.5


class Target(Protocol):
    """A running stack the chaos can take apart: its settings, and its parts by name."""

    @property
    def env(self) -> Mapping[str, str]: ...

    def pid(self, part: str) -> int: ...

    def sigkill(self, part: str) -> None: ...

    def revive(self, part: str) -> None: ...


@dataclass
class TrackedRun:
    planned: PlannedRun
    run_id: str | None = None
    how: str = ""  #: started | adopted (the API took a start whose answer was lost) | never started: why


@dataclass
class KillRecord:
    role: str
    part: str
    outage: float
    in_flight: int | None = None  #: the batch's runs going when the part was killed
    back_after: float | None = None  #: seconds from the kill until the part served again
    error: str | None = None


@dataclass
class Batch:
    """What happened: the runs, the kills, the client's view of the API, and how long it all took."""

    plan: Plan
    pipelines: dict[str, str]  #: kind -> pipeline name
    runs: list[TrackedRun]
    kills: list[KillRecord] = field(default_factory=list)
    refused_starts: int = 0  #: 503s from the API (Temporal was down): a recorded, failed start, retried by us
    #: Runs the API recorded without starting their workflow (it died in between); each was started again
    orphaned_starts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    unfinished: list[str] = field(default_factory=list)


class Harness:
    def __init__(self, target: Target, plan: Plan, *, prefix: str, capability: str, agents: list[str],
                 repo: Path, agents_api_url: str) -> None:
        self.target = target
        self.plan = plan
        self.agents = agents
        self.repo = repo
        self.definitions = pipelines(prefix, capability)
        self.db = Database(target.env["DATABASE_URL"])
        self.temporal = Temporal(target.env["TEMPORAL_ADDRESS"])
        self.api = httpx.AsyncClient(base_url=target.env["DEVART_API_URL"], timeout=60.0,
                                     headers={"Authorization": f"Bearer {target.env['DEVART_ADMIN_TOKEN']}"})
        #: The agents' API, where the batch's agents claim and report: only its health is asked, with no key.
        self.agents_api = httpx.AsyncClient(base_url=agents_api_url, timeout=60.0)
        self._ends = 0.0  #: when the batch's deadline passes (monotonic clock)
        self.batch = Batch(plan=plan, pipelines={k: d["name"] for k, d in self.definitions.items()},
                           runs=[TrackedRun(r) for r in plan.runs])

    async def close(self) -> None:
        await self.api.aclose()
        await self.agents_api.aclose()
        self.db.close()

    async def run_batch(self, settle: float) -> Batch:
        """Publish, start, kill and revive as planned, then wait until every run has ended.

        Every run must end within ``settle`` seconds of the chaos being over (the last killed part serving again):
        on a busy machine the kills run late, as each waits for the previous part to come back, and what they cost
        the runs is only known once they are done.
        """
        for definition in self.definitions.values():
            r = await self.api.post("/v1/pipelines", json=definition)
            assert r.status_code == 201, r.text
        started = time.monotonic()
        last = max([r.at for r in self.plan.runs] + [k.at for k in self.plan.kills])
        self._ends = started + last + settle
        runs = [asyncio.create_task(self._start(run, started)) for run in self.batch.runs]
        await self._chaos(started)
        self._ends = max(self._ends, time.monotonic() + settle)
        await asyncio.gather(*runs)
        await self._wait_ended()
        self.batch.seconds = round(time.monotonic() - started, 1)
        return self.batch

    # --- the runs -------------------------------------------------------------------------------------------

    async def _start(self, run: TrackedRun, started: float) -> None:
        await asyncio.sleep(max(0.0, started + run.planned.at - time.monotonic()))  # the plan's schedule
        planned = run.planned
        body = {"pipeline": self.batch.pipelines[planned.kind], "repo": str(self.repo),
                "params": {"ticket": planned.ticket, "nap": str(planned.nap)}}
        end = time.monotonic() + CALL_DEADLINE
        while time.monotonic() < end:
            try:
                r = await self.api.post("/v1/runs", json=body)
            except httpx.ConnectError:
                pass  # the API is down: the request never went out
            except httpx.TransportError as exc:
                log.warning("start of %s lost its answer: %r", planned.ticket, exc)
                try:
                    run.run_id = await self._adopt(planned.ticket)  # it went out: the API may have taken it
                except TimeoutError as gone:
                    run.how = f"never started: {gone}"
                    return
                if run.run_id:
                    run.how = "adopted"
                    break
            else:
                if r.status_code == 201:
                    run.run_id, run.how = r.json()["run_id"], "started"
                    break
                if r.status_code != 503:
                    run.how = f"never started: {r.status_code} {r.text[:300]}"
                    return
                self.batch.refused_starts += 1
                log.warning("start of %s refused: %s", planned.ticket, r.text[:300])
            await asyncio.sleep(CALL_BACKOFF)
        else:
            run.how = f"never started: the API did not take it within {CALL_DEADLINE:.0f}s"
            return
        if planned.kind == "cancel":
            await self._cancel(run)

    async def _adopt(self, ticket: str) -> str | None:
        """The run a start created before its answer was lost, if that start happened (a refused one does not count).

        A run the API recorded but whose workflow it did not start before it died never runs: it is remembered as an
        orphan (the sweep must fail it) and None is returned, so the run is started again. Temporal is asked only once
        the API answers again, when no start of the dead process can still be on its way.
        """
        rows = await self.db.rows(
            "SELECT id FROM runs WHERE params->>'ticket' = :t AND pipeline = ANY(:p) "
            "AND coalesce(error, '') NOT LIKE 'could not start%%' AND NOT id = ANY(:o) ORDER BY created_at DESC",
            t=ticket, p=list(self.batch.pipelines.values()), o=self.batch.orphaned_starts)
        if not rows:
            return None
        run_id = str(rows[0]["id"])

        async def api_back() -> bool:
            return (await self.api.get("/healthz")).status_code == 200

        found: list[bool] = []

        async def known() -> bool:
            try:
                await (await self.temporal.client()).get_workflow_handle(run_id).describe()
                found.append(True)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise  # Temporal is down: ask again
                found.append(False)
            return True

        await until(api_back, deadline=CALL_DEADLINE, what="the API to answer again")
        await until(known, deadline=CALL_DEADLINE, what=f"Temporal to say whether {run_id} started")
        if found[-1]:
            return run_id
        self.batch.orphaned_starts.append(run_id)
        log.warning("start of %s: the API recorded %s but never started its workflow", ticket, run_id)
        return None

    async def _cancel(self, run: TrackedRun) -> None:
        """Cancel once an agent holds the run's task (its command is running in the sandbox), through outages.

        A busy batch may keep the task queued for long: the claim is waited for until the batch's deadline.
        """

        async def claimed() -> bool:
            rows = await self.db.rows("SELECT 1 FROM task_attempts WHERE run_id = :r AND status = 'claimed'",
                                      r=run.run_id)
            return bool(rows)

        while not await claimed():  # polled until the batch's end, which moves later while the kills run late
            if time.monotonic() > self._ends:
                log.error("not cancelling %s: no agent claimed its task before the batch's end", run.run_id)
                return  # the checks find it not cancelled
            await asyncio.sleep(POLL)
        end = time.monotonic() + CALL_DEADLINE
        while time.monotonic() < end:
            try:
                r = await self.api.post(f"/v1/runs/{run.run_id}/cancel")
            except httpx.TransportError:
                r = None  # down, or died while cancelling: asking again is harmless
            if r is not None and r.status_code in (202, 409):  # 409: it is no longer running
                return
            await asyncio.sleep(CALL_BACKOFF)

    async def _wait_ended(self) -> None:
        ids = [r.run_id for r in self.batch.runs if r.run_id]

        async def ended() -> bool:
            rows = await self.db.rows("SELECT id FROM runs WHERE id = ANY(:ids) AND status = 'running'", ids=ids)
            self.batch.unfinished = sorted(str(r["id"]) for r in rows)
            return not rows

        try:
            await until(ended, deadline=max(self._ends - time.monotonic(), 1.0), what="every run to end", every=POLL)
        except TimeoutError:
            log.warning("runs still running at the deadline: %s", self.batch.unfinished)

    # --- the chaos ------------------------------------------------------------------------------------------

    async def _chaos(self, started: float) -> None:
        for kill in self.plan.kills:
            await asyncio.sleep(max(0.0, started + kill.at - time.monotonic()))  # the plan's schedule
            self.batch.kills.append(await self._kill(kill))

    async def _kill(self, kill: PlannedKill) -> KillRecord:
        record = KillRecord(kill.role, kill.part, kill.outage)
        log.info("killing %s (%s) for %.1fs", kill.part, kill.role, kill.outage)
        ids = [r.run_id for r in self.batch.runs if r.run_id]
        going = await self.db.rows("SELECT count(*) AS n FROM runs WHERE id = ANY(:ids) AND status = 'running'",
                                   ids=ids)
        record.in_flight = int(going[0]["n"])
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self.target.sigkill, kill.part)
            if kill.part == "temporal":
                self.temporal.forget()
            await asyncio.sleep(kill.outage)  # the outage itself
            since = utcnow()
            await asyncio.to_thread(self.target.revive, kill.part)
            await until(lambda: self._serving(kill.part, since), deadline=REVIVE_DEADLINE,
                        what=f"{kill.part} to serve again")
            record.back_after = round(time.monotonic() - t0, 2)
        except Exception as exc:  # recorded: the checks fail the batch on a part that did not come back
            record.error = f"{type(exc).__name__}: {exc}"
            log.error("%s did not come back: %s", kill.part, record.error)
        return record

    async def _serving(self, part: str, since: Any) -> bool:
        """Whether a revived part does its job again: Temporal and both APIs answer, the worker polls its task
        queue, an agent has told the API it is alive."""
        if part == "temporal":
            await (await self.temporal.client()).workflow_service.get_system_info(GetSystemInfoRequest())
            return True
        if part == "api":
            return (await self.api.get("/healthz")).status_code == 200
        if part == "agents-api":
            return (await self.agents_api.get("/healthz")).status_code == 200
        if part == "worker":
            client = await self.temporal.client()
            reply = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
                namespace=client.namespace, task_queue=TaskQueue(name=self.target.env["TEMPORAL_TASK_QUEUE"]),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
            pid = self.target.pid("worker")
            return any(p.identity.startswith(f"{pid}@") for p in reply.pollers)
        rows = await self.db.rows("SELECT 1 FROM agents WHERE name = :n AND last_seen_at > :since", n=part,
                                  since=since)
        return bool(rows)
