"""Starting, listing, inspecting and cancelling runs."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from pydantic import ValidationError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from devart.api.schemas import AttemptView, RunCreated, RunRequest, RunView, StageView
from devart.core import bounds, pipelines, settings
from devart.core.contracts import (
    ENGINE,
    PipelineDefinition,
    RunInput,
    RunStatus,
    StageResult,
    StageState,
    StageStatus,
)
from devart.core.database import db, tenancy
from devart.core.database.models import Run, TaskAttempt, utcnow
from devart.core.database.models_identity import Organisation
from devart.core.errors import Conflict, DevartError, InvalidPipeline, RunNotFound, ServiceUnavailable
from devart.core.orgs import DEFAULT_ORG
from devart.core.telemetry import metrics
from devart.core.temporal import search_attributes, ui_link
from devart.domain import catalog, run_feed
from devart.domain.costs import to_money
from devart.domain.events import add_event
from devart.domain.sources import SourcePolicy, check_source
from devart.workflows.pipeline import PipelineWorkflow

#: Temporal's terminal states that the workflow itself could not record (it was not running to do so).
_EXTERNAL_END = {
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed out",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.FAILED: "failed",
}


class RunConflict(Conflict):
    """The run is not in a state that allows the request (e.g. cancelling a finished run)."""


def new_run_id(pipeline: str) -> str:
    return f"{pipeline}-{uuid.uuid4().hex[:12]}"


async def start(session: AsyncSession, client: Client, req: RunRequest, *,
                definition: PipelineDefinition | None = None, run_id: str | None = None) -> RunCreated:
    """Validate everything, record the run, then start its workflow (workflow id = run id).

    ``definition`` and ``run_id`` (GitHub hook): run a derived definition (a single stage re-run) under an id chosen
    beforehand, so that rows the caller added to ``session`` for that id are committed with the run.
    """
    definition = definition or await catalog.get(session, req.pipeline, req.version)
    params = pipelines.resolve_params(definition, req.params)
    source = check_source(req.repo, req.ref, await source_policy(session))
    run_id = run_id or new_run_id(definition.name)
    priority = req.priority if req.priority is not None else definition.priority
    run_input = RunInput(run_id=run_id, pipeline=definition, source=source, params=params, trigger=req.trigger,
                         priority=priority, engine=ENGINE,
                         approval_timeout=timedelta(seconds=settings.run_policy().approval_timeout))
    check_workflow_input(client, run_input)
    stages = [StageState(name=s.name, depends_on=s.depends_on).model_dump(mode="json") for s in definition.stages]
    run = Run(
        id=run_id,
        pipeline=definition.name,
        pipeline_version=definition.version,
        repository=source.repo,
        ref=source.ref,
        trigger=req.trigger,
        params=params,
        priority=priority,
        status="running",
        stages=stages,
    )
    session.add(run)  # in the session's organisation (core.database.tenancy), read back on commit
    add_event(session, "run.requested", f"{definition.name} on {source.repo}", run_id=run_id, trigger=req.trigger)
    await session.commit()
    try:
        await client.start_workflow(
            PipelineWorkflow.run,
            run_input,
            id=run_id,
            task_queue=settings.temporal().task_queue,
            search_attributes=search_attributes(definition.name, source.repo, req.trigger, run.org_id or ""),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except Exception as exc:
        if (refusal := await _not_started(session, client, run_id, exc)) is not None:
            raise refusal from exc
    # The run's start, once, now that its workflow exists: from engine 9 the workflow records none of its own. Under
    # load it waits for a connection: the run is started, an error now would make the client start it twice. Should
    # this process die first, the run's end or the sweep records it (``domain.run_feed``).
    org = run.org_id

    async def started(s: AsyncSession) -> None:
        await tenancy.switch(s, tenancy.system_in(org or DEFAULT_ORG))
        await run_feed.record_started(s, run_id)

    await db.patiently(started)
    metrics.RUNS_STARTED.labels(definition.name, req.trigger).inc()
    return RunCreated(
        run_id=run_id, pipeline=definition.name, version=definition.version, status="running",
        ui_url=ui_link(run_id, client.namespace),
    )


def check_workflow_input(client: Client, run_input: RunInput) -> None:
    """Refuse a run whose workflow Temporal or the worker could not take, before anything is stored or started.

    The input is encoded with the client's data converter and read back as the worker reads it (pydantic's JSON
    parser stops at 200 levels of nesting); its size is held to ``MAX_WORKFLOW_INPUT_BYTES``, and each stage's task
    input with its parameters substituted (an activity input of its own) to ``MAX_STAGE_INPUT_BYTES``. Definitions
    published within the limits always pass; one stored before they existed may not.
    """
    converter = client.data_converter.payload_converter
    name, problems = run_input.pipeline.name, []
    try:
        payload = converter.to_payloads([run_input])[0]
        if payload.ByteSize() > bounds.MAX_WORKFLOW_INPUT_BYTES:
            problems.append(f"the run's workflow input is {payload.ByteSize()} bytes; Temporal takes at most "
                            f"{bounds.size(bounds.MAX_WORKFLOW_INPUT_BYTES)} (MAX_WORKFLOW_INPUT_BYTES)")
        else:
            converter.from_payloads([payload], [RunInput])
    except Exception as exc:  # any encoder or decoder error means the worker could not run it
        problems.append(f"the run's workflow input cannot be encoded and read back: {str(exc).splitlines()[0]}")
    for stage in run_input.pipeline.stages:
        found = pipelines.substituted_size(stage.inputs, run_input.params)
        if found > bounds.MAX_STAGE_INPUT_BYTES:
            problems.append(f"stage '{stage.name}': its inputs with the parameters substituted are {found} bytes; a "
                            f"task takes at most {bounds.size(bounds.MAX_STAGE_INPUT_BYTES)} (MAX_STAGE_INPUT_BYTES)")
    if problems:
        raise InvalidPipeline(name, problems)


async def _not_started(session: AsyncSession, client: Client, run_id: str, exc: Exception) -> DevartError | None:
    """The run's workflow did not start: fail its row with the reason and return the error to answer with.

    Without this the row would say 'running' forever, with no workflow to ever end it. A timeout may hide a start
    that reached Temporal: when the workflow exists after all, the run is running and None is returned.
    """
    message = exc.message if isinstance(exc, RPCError) else str(exc) or type(exc).__name__
    error: DevartError
    if isinstance(exc, WorkflowAlreadyStartedError):
        why = f"a workflow with id '{run_id}' already exists"
        error = RunConflict(f"run '{run_id}' not started: {why}")
    elif isinstance(exc, RPCError) and exc.status == RPCStatusCode.INVALID_ARGUMENT:
        why = f"Temporal refused the run's workflow: {message}"
        error = InvalidPipeline(run_id, [why])
    else:
        try:
            await client.get_workflow_handle(run_id).describe()
            return None
        except Exception:  # not there, or Temporal unreachable: either way the run did not start
            pass
        why = f"Temporal could not start the run: {message}"
        error = ServiceUnavailable(why)
    run = await session.get(Run, run_id)
    if run is not None and run.status == RunStatus.RUNNING:
        run.status, run.error, run.finished_at = RunStatus.FAILED.value, f"could not start: {why}", utcnow()
        add_event(session, "run.finished", f"run failed: could not start: {why}", run_id=run_id,
                  pipeline=run.pipeline, status=RunStatus.FAILED.value)
        await session.commit()
    return error


async def source_policy(session: AsyncSession) -> SourcePolicy:
    """The session's organisation's narrowing of run sources (none for a session of no organisation)."""
    org = await session.get(Organisation, tenancy.org_of(session)) if tenancy.org_of(session) else None
    return SourcePolicy(tuple(org.source_roots), tuple(org.source_hosts)) if org is not None else SourcePolicy()


async def list_runs(session: AsyncSession, *, pipeline: str | None, status: str | None, limit: int) -> list[Run]:
    """The newest runs of the session's organisation. The policy alone would keep the others out, but as a filter
    the planner cannot see through (it also lets devart's services see all), so the organisation is named here
    too: the (org_id, created_at) index then serves the newest first (``bench.rls``)."""
    query = select(Run).where(Run.org_id == tenancy.org_of(session))
    if pipeline:
        query = query.where(Run.pipeline == pipeline)
    if status:
        query = query.where(Run.status == status)
    return list((await session.exec(query.order_by(col(Run.created_at).desc()).limit(limit))).all())


def _agent_report(attempts: list[TaskAttempt]) -> StageResult | None:
    """The report the agent of a failed stage's last attempt sent, for a stage that carries no result.

    The workflow takes a failed stage's result from the failure's details; when those were lost or unreadable, the
    agent's report (failing tests, log tail) is still on the attempt's row, and it is what says why the stage failed.
    """
    last = attempts[-1] if attempts else None
    if last is None or last.status != "failed" or not last.result:
        return None
    try:
        return StageResult.model_validate(last.result)
    except ValidationError:
        return None  # a report from an older agent: the stage keeps its error alone


async def view(session: AsyncSession, client: Client, run_id: str) -> RunView:
    """The run as PostgreSQL records it, with live stage states from the workflow while it runs."""
    run = await session.get(Run, run_id)
    if run is None:
        raise RunNotFound(f"run '{run_id}' not found")
    stages = [StageState.model_validate(s) for s in run.stages]
    if run.status == RunStatus.RUNNING:
        handle = client.get_workflow_handle(run_id)
        try:
            stages = await handle.query(PipelineWorkflow.stages)
        except RPCError:
            pass  # no worker is polling right now; the last recorded states stand
        try:
            ended = _EXTERNAL_END.get((await handle.describe()).status)  # type: ignore[arg-type]
        except RPCError:
            ended = None
        if ended:
            # A run fails or is cancelled as a workflow right after recording its end: look again before
            # overwriting that record with this guess.
            await session.refresh(run)
        if ended and run.status == RunStatus.RUNNING:
            status = "cancelled" if ended == "cancelled" else "failed"
            run.status, run.error, run.finished_at = status, f"workflow {ended} before recording its end", utcnow()
            await session.commit()
    attempts = (
        await session.exec(select(TaskAttempt).where(TaskAttempt.run_id == run_id).order_by(col(TaskAttempt.attempt)))
    ).all()
    by_stage: dict[str, list[TaskAttempt]] = {}
    for a in attempts:
        by_stage.setdefault(a.stage, []).append(a)
    views = []
    for stage in stages:
        mine = by_stage.get(stage.name, [])
        if stage.status == StageStatus.FAILED and stage.result is None:
            stage = stage.model_copy(update={"result": _agent_report(mine)})
        log = [
            AttemptView(
                attempt=a.attempt,
                status=a.status,
                agent=a.claimed_by,
                lane=a.lane,
                created_at=a.created_at,
                claimed_at=a.claimed_at,
                finished_at=a.finished_at,
                error=a.error,
                late_reports=a.late_reports,
                waiting_reason=a.waiting_reason,
            )
            for a in mine
        ]
        waiting = log[-1].waiting_reason if log and log[-1].status == "queued" else None
        isolated = all(a.input.get("sandbox", {}).get("isolated", True) for a in mine)
        warnings = [] if isolated else ["ran WITHOUT sandbox isolation (DEVART_SANDBOX_ISOLATION=none)"]
        cost = to_money(sum(a.cost_micros for a in mine))
        views.append(StageView(**stage.model_dump(), attempt_log=log, waiting=waiting, warnings=warnings, cost=cost))
    return RunView(
        run_id=run.id,
        pipeline=run.pipeline,
        status=run.status,
        repository=run.repository,
        ref=run.ref,
        trigger=run.trigger,
        params=run.params,
        priority=run.priority,
        error=run.error,
        created_at=run.created_at,
        finished_at=run.finished_at,
        stages=views,
        cost=to_money(sum(a.cost_micros for a in attempts)), ui_url=ui_link(run.id, client.namespace),
    )


async def cancel(session: AsyncSession, client: Client, run_id: str) -> None:
    """Ask the workflow to cancel; its stages tear down their sandboxes and the agents learn on heartbeat."""
    handle = client.get_workflow_handle(run_id)
    await _tell_running(session, run_id, "cancelled", handle.cancel, "run.cancel_requested", "cancellation requested")


async def approve(session: AsyncSession, client: Client, run_id: str) -> None:
    """Let a run paused on a soft budget limit go on (a workflow signal)."""
    handle = client.get_workflow_handle(run_id)
    await _tell_running(session, run_id, "approved", lambda: handle.signal(PipelineWorkflow.approve), "run.approved",
                        "a supervisor approved the run past its soft budget")


async def _tell_running(session: AsyncSession, run_id: str, verb: str, call: Callable[[], Awaitable[object]],
                        kind: str, message: str) -> None:
    """Deliver ``call`` to a running run's workflow and record it in the feed: not found for no such run, a conflict
    for one that has ended, unavailable when Temporal cannot take it."""
    run = await session.get(Run, run_id)
    if run is None:
        raise RunNotFound(f"run '{run_id}' not found")
    if run.status != RunStatus.RUNNING:
        raise RunConflict(f"run '{run_id}' already {run.status}; only a running run can be {verb}")
    try:
        await call()
    except RPCError as exc:
        raise ServiceUnavailable(f"Temporal could not take the request ({verb}): {exc.message}") from exc
    add_event(session, kind, message, run_id=run_id)
    await session.commit()
