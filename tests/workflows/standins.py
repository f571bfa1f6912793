"""Stand-in activities for ``PipelineWorkflow``: registered under the real activities' names, scripted per stage.

The workflow calls its activities by name (``record_run``, ``check_budget``, ``provision_sandbox``,
``run_agent_task``, ``teardown_sandbox``), so a worker carrying these instead of the real ones runs the real
workflow code without PostgreSQL, RabbitMQ, the API, sandboxes or agents (as Temporal's samples test workflows).
Each stand-in writes what it was called with to one ordered log, which the tests read to check order, concurrency,
retries and teardown. When an activity is renamed or gains a new one, only ``StandIns.activities`` changes.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from devart.core.contracts import (
    AgentTaskInput,
    BudgetCheck,
    BudgetDecision,
    GitHubReport,
    Prepared,
    PrepareInput,
    ProvisionInput,
    RunRecord,
    RunStatus,
    SandboxHandle,
    StageResult,
    TeardownInput,
)

#: What a stand-in agent task does with one attempt: return the stage's result or raise, as an agent reports.
Behaviour = Callable[[AgentTaskInput, int], Awaitable[StageResult]]
#: What the stand-in budget check answers for a stage, each time it is asked.
BudgetRule = Callable[[BudgetCheck], BudgetDecision]
#: A check the stand-in GitHub report runs first: it raises to make the report fail as the real one would.
ReportRule = Callable[[GitHubReport], None]
#: A check the stand-in provision runs first: it raises to make the provision fail as the real one would.
ProvisionRule = Callable[[ProvisionInput], None]


@dataclass(frozen=True)
class Call:
    """One event a stand-in saw: ``what`` is an activity name, or ``<name>.end`` / ``.cancelled`` when it ended."""

    what: str
    stage: str | None
    attempt: int
    detail: Any = None


async def succeed(task: AgentTaskInput, attempt: int) -> StageResult:
    """An agent that did its work at once."""
    return StageResult(status="succeeded", summary=f"{task.stage} done", output={"inputs": task.inputs},
                       attempt=attempt)


def fail(error_type: str, message: str, *, non_retryable: bool, until: int | None = None) -> Behaviour:
    """An agent failing with ``error_type`` (on every attempt, or on attempts before ``until``), as it reports it.

    The failure carries the agent's structured report in its details, as the API sends it, so the stage keeps it.
    """

    async def behave(task: AgentTaskInput, attempt: int) -> StageResult:
        if until is not None and attempt >= until:
            return await succeed(task, attempt)
        report = StageResult(status="failed", summary=message, log_tail=f"attempt {attempt}", attempt=attempt)
        raise ApplicationError(message, report.model_dump(mode="json"), type=error_type, non_retryable=non_retryable)

    return behave


class StandIns:
    """The pipeline's activities, scripted per stage, recording every call in order.

    ``tasks`` maps a stage to its agent task's behaviour (``succeed`` when absent); ``budget`` answers the budget
    check (``ok`` when absent); ``provision`` and ``github`` may raise to fail a stage's provision or a report to
    GitHub. ``rendezvous`` names stages whose tasks each wait until all of them have started: they can only succeed
    if the workflow runs them at the same time.
    """

    def __init__(
        self,
        tasks: dict[str, Behaviour] | None = None,
        budget: BudgetRule | None = None,
        provision: ProvisionRule | None = None,
        github: ReportRule | None = None,
        rendezvous: Sequence[str] = (),
        rendezvous_timeout: float = 10.0,
    ) -> None:
        self.tasks = tasks or {}
        self.budget = budget or (lambda _check: BudgetDecision(state="ok"))
        self.provision = provision or (lambda _inp: None)
        self.github = github or (lambda _rep: None)
        self.calls: list[Call] = []
        self.records: list[RunRecord] = []
        self._rendezvous = set(rendezvous)
        self._rendezvous_timeout = rendezvous_timeout
        self._arrived: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def activities(self) -> list[Callable[..., Any]]:
        """The stand-ins, one per activity name the workflow calls."""
        return [self.record_run, self.check_budget, self.provision_sandbox, self.prepare_stage, self.run_agent_task,
                self.teardown_sandbox, self.report_github]

    def _note(self, what: str, stage: str | None, detail: Any = None) -> None:
        self.calls.append(Call(what, stage, activity.info().attempt, detail))
        self._changed.set()

    def called(self, what: str, stage: str | None = None) -> list[Call]:
        """The calls of one kind, for one stage when given."""
        return [c for c in self.calls if c.what == what and (stage is None or c.stage == stage)]

    def index(self, what: str, stage: str) -> int:
        """Position of the first such call in the log: the order the stand-ins saw things happen in."""
        return next(i for i, c in enumerate(self.calls) if c.what == what and c.stage == stage)

    @property
    def final(self) -> RunRecord:
        """The last record the run wrote: what the API, the CLI and the feed would show."""
        assert self.records and self.records[-1].status != RunStatus.RUNNING, self.records
        return self.records[-1]

    @activity.defn(name="record_run")
    async def record_run(self, rec: RunRecord) -> None:
        self.records.append(rec)
        self._note("record_run", None, rec.status)

    @activity.defn(name="check_budget")
    async def check_budget(self, check: BudgetCheck) -> BudgetDecision:
        try:
            decision = self.budget(check)
        except Exception as exc:
            self._note("check_budget", check.stage, exc)
            raise
        self._note("check_budget", check.stage, decision.state)
        return decision

    @activity.defn(name="provision_sandbox")
    async def provision_sandbox(self, inp: ProvisionInput) -> SandboxHandle:
        self._note("provision_sandbox", inp.stage)
        self.provision(inp)
        return SandboxHandle(backend="standin", id=f"{inp.run_id}-{inp.stage}", run_id=inp.run_id,
                             workspace=f"/workspace/{inp.stage}", spec=inp.spec)

    @activity.defn(name="prepare_stage")
    async def prepare_stage(self, inp: PrepareInput) -> Prepared:
        """Engine 9's one step: the budget check, then the provision when the budget allows (both noted)."""
        decision = await self.check_budget(inp.budget)
        if decision.state == "ok" or (decision.state == "soft" and inp.approved):
            return Prepared(decision=decision, handle=await self.provision_sandbox(inp.provision))
        return Prepared(decision=decision)

    @activity.defn(name="teardown_sandbox")
    async def teardown_sandbox(self, inp: TeardownInput) -> None:
        self._note("teardown_sandbox", inp.handle.workspace.rsplit("/", 1)[-1], inp.handle.id)

    @activity.defn(name="report_github")
    async def report_github(self, rep: GitHubReport) -> None:
        self._note("report_github", rep.stage, rep.event)
        self.github(rep)

    @activity.defn(name="run_agent_task")
    async def run_agent_task(self, task: AgentTaskInput) -> StageResult:
        attempt = activity.info().attempt
        self._note("run_agent_task", task.stage, task)
        try:
            if task.stage in self._rendezvous:
                await self._meet(task.stage)
            result = await self.tasks.get(task.stage, succeed)(task, attempt)
        except asyncio.CancelledError:
            self._note("run_agent_task.cancelled", task.stage)
            raise
        except Exception as exc:
            self._note("run_agent_task.failed", task.stage, exc)
            raise
        self._note("run_agent_task.end", task.stage, result)
        return result

    async def _meet(self, stage: str) -> None:
        """Wait until every rendezvous stage has started; alone past the timeout, the stage fails for good."""
        self._arrived.add(stage)
        self._changed.set()
        try:
            async with asyncio.timeout(self._rendezvous_timeout):
                while not self._rendezvous <= self._arrived:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise ApplicationError(f"{stage} ran alone: {sorted(self._rendezvous - self._arrived)} never started "
                                   "beside it", type="NotConcurrent", non_retryable=True) from None


async def until_cancelled(task: AgentTaskInput, attempt: int) -> StageResult:
    """An agent busy until the run is cancelled: it heartbeats, which is how a cancellation reaches it."""
    while True:
        activity.heartbeat(task.stage)
        await asyncio.sleep(0.1)  # the pace of a working agent's heartbeats, not a wait for a condition


class Recorded:
    """Stand-ins that answer as a recorded run's activities did: the same results and failures, stage by stage.

    They record a history for a workflow engine that has none yet, from a run of another engine on the same
    pipeline: the payloads are the recorded ones, byte for byte in meaning, and only the workflow's own commands
    differ. Results are returned as the recorded JSON, so their shape is that of the release that recorded them.
    """

    def __init__(self, history: dict[str, Any]) -> None:
        self.provisions: dict[str, Any] = {}
        self.tasks: dict[str, tuple[str, Any]] = {}
        scheduled: dict[str, str] = {}
        for event in history["events"]:
            kind = event["eventType"]
            if kind == "EVENT_TYPE_MARKER_RECORDED":
                details = event["markerRecordedEventAttributes"]["details"]
                data = _decoded(details["data"])
                if data.get("activity_type") in ("provision_sandbox", "prepare_stage"):
                    handle = _decoded(details["result"])
                    if data["activity_type"] == "prepare_stage":
                        if not handle.get("handle"):
                            continue
                        handle = handle["handle"]
                    stage = handle["id"].removeprefix(f"{handle['run_id']}-").rsplit("-", 1)[0]
                    self.provisions[stage] = handle
            elif kind == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED":
                attrs = event["activityTaskScheduledEventAttributes"]
                if attrs["activityType"]["name"] == "run_agent_task":
                    scheduled[event["eventId"]] = _decoded(attrs["input"])["stage"]
            elif kind == "EVENT_TYPE_ACTIVITY_TASK_COMPLETED":
                attrs = event["activityTaskCompletedEventAttributes"]
                self.tasks[scheduled[attrs["scheduledEventId"]]] = ("completed", _decoded(attrs["result"]))
            elif kind == "EVENT_TYPE_ACTIVITY_TASK_FAILED":
                attrs = event["activityTaskFailedEventAttributes"]
                self.tasks[scheduled[attrs["scheduledEventId"]]] = ("failed", attrs["failure"])

    @property
    def activities(self) -> list[Callable[..., Any]]:
        return [self.record_run, self.check_budget, self.provision_sandbox, self.prepare_stage, self.run_agent_task,
                self.teardown_sandbox]

    @activity.defn(name="record_run")
    async def record_run(self, rec: dict[str, Any]) -> None:
        return None

    @activity.defn(name="check_budget")
    async def check_budget(self, check: dict[str, Any]) -> dict[str, Any]:
        return {"state": "ok", "message": ""}

    @activity.defn(name="provision_sandbox")
    async def provision_sandbox(self, inp: dict[str, Any]) -> dict[str, Any]:
        return dict(self.provisions[inp["stage"]])

    @activity.defn(name="prepare_stage")
    async def prepare_stage(self, inp: dict[str, Any]) -> dict[str, Any]:
        return {"decision": {"state": "ok", "message": ""},
                "handle": dict(self.provisions[inp["provision"]["stage"]])}

    @activity.defn(name="teardown_sandbox")
    async def teardown_sandbox(self, inp: dict[str, Any]) -> None:
        return None

    @activity.defn(name="run_agent_task")
    async def run_agent_task(self, task: dict[str, Any]) -> dict[str, Any]:
        outcome, value = self.tasks[task["stage"]]
        if outcome == "completed":
            return dict(value)
        info = value["applicationFailureInfo"]
        details = [_decoded(info["details"])] if info.get("details") else []
        raise ApplicationError(value["message"], *details, type=info["type"], non_retryable=info["nonRetryable"])


def _decoded(payloads: dict[str, Any]) -> Any:
    """The JSON value of a history's first payload (``{"payloads": [{"data": base64}]}``)."""
    return json.loads(base64.b64decode(payloads["payloads"][0]["data"]))
