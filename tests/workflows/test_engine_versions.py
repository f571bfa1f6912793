"""Runs started by an older API (an older ``RunInput.engine``) still run and replay on today's worker.

``engine`` replaces patch markers: the starter picks the workflow's behaviour, so a new run's history carries no
marker and no ``TemporalChangeVersion`` search-attribute write. Runs from before ``engine`` existed carry the
budget check's patch marker and must keep working.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from devart.core.contracts import ENGINE, PipelineDefinition, RunInput, RunStatus, Source
from devart.core.temporal import DATA_CONVERTER
from devart.workflows.pipeline import PipelineWorkflow
from tests.helpers import noop_stage, publish, start, unique
from tests.stack import Stack


async def _history_kinds(temporal: Client, run_id: str) -> tuple[list[int], WorkflowHistory]:
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    return [e.event_type for e in history.events], history


@pytest.mark.parametrize("engine", [1, 2, 3, 4, 5, 6, 7, ENGINE])
async def test_each_engine_runs_and_replays(
    engine: int, stack: Stack, api: httpx.AsyncClient, temporal: Client, tmp_path: Path
) -> None:
    # Given a one-stage pipeline and an agent for it
    cap = unique("engine")
    stack.start_agent(unique("agent"), [cap])
    name = unique("engine")
    await publish(api, {"name": name, "stages": [noop_stage("s", cap)]})
    definition = PipelineDefinition.model_validate((await api.get(f"/v1/pipelines/{name}")).json())
    # When a run starts with that engine, as the API of that version started it
    run_id = f"{name}-e{engine}"
    result = await temporal.execute_workflow(
        PipelineWorkflow.run,
        RunInput(run_id=run_id, pipeline=definition, source=Source(repo=str(tmp_path)), engine=engine),
        id=run_id,
        task_queue=stack.env["TEMPORAL_TASK_QUEUE"],
    )
    # Then it succeeds with the behaviour of its engine, and its history replays on today's code
    assert result.status == RunStatus.SUCCEEDED, result
    kinds, history = await _history_kinds(temporal, run_id)
    scheduled = kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    # budget check, record, provision, task, teardown, record; as local activities only the task is left (engine 1
    # started now takes the budget check's patched path, as runs in flight when it was added did not); engine 6
    # made provision and teardown regular activities again, with heartbeats; 7 keeps them local for a local folder
    # on the local backend
    assert scheduled == {1: 6, 2: 6, 6: 3}.get(engine, 1)
    summaries = [e.user_metadata.summary.data for e in history.events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    if engine >= 6:  # each activity's summary names its stage
        assert all(d.startswith(b'"s \xc2\xb7 ') for d in summaries), summaries
    if engine == 6:
        heartbeats = [e.activity_task_scheduled_event_attributes.heartbeat_timeout.seconds for e in history.events
                      if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
        assert heartbeats[0] > 0 and heartbeats[2] > 0  # provision and teardown heartbeat
    upserts = kinds.count(EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES)
    assert upserts == (1 if engine == 1 else 0)  # engine 1 records the budget check's patch marker
    replayer = Replayer(workflows=[PipelineWorkflow], data_converter=DATA_CONVERTER)
    assert (await replayer.replay_workflow(history, raise_on_replay_failure=True)).replay_failure is None


async def test_the_api_starts_runs_with_the_current_engine(
    stack: Stack, api: httpx.AsyncClient, temporal: Client, tmp_path: Path
) -> None:
    cap = unique("engine")
    stack.start_agent(unique("agent"), [cap])
    name = unique("engine")
    await publish(api, {"name": name, "stages": [noop_stage("s", cap)]})
    run_id = await start(api, name, tmp_path)
    await temporal.get_workflow_handle(run_id).result()
    kinds, _ = await _history_kinds(temporal, run_id)
    assert EventType.EVENT_TYPE_MARKER_RECORDED in kinds  # the local activities
    assert EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES not in kinds
    assert kinds.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 2


async def test_a_remote_source_is_provisioned_by_a_regular_activity_that_heartbeats(
    stack: Stack, api: httpx.AsyncClient, temporal: Client
) -> None:
    # Given a run of the current engine on a remote repository (a name that never resolves, RFC 2606)
    name = unique("remote")
    await publish(api, {"name": name, "stages": [noop_stage("s", unique("nobody"))]})
    definition = PipelineDefinition.model_validate((await api.get(f"/v1/pipelines/{name}")).json())
    run_id = f"{name}-remote"
    source = Source(repo=f"https://{unique('nowhere')}.invalid/x.git")
    # When it runs (and its provision fails: the host is unknown)
    with pytest.raises(WorkflowFailureError):
        await temporal.execute_workflow(PipelineWorkflow.run, RunInput(run_id=run_id, pipeline=definition,
                                        source=source, engine=ENGINE), id=run_id,
                                        task_queue=stack.env["TEMPORAL_TASK_QUEUE"])
    # Then the clone was a regular activity with a heartbeat timeout, named after its stage
    _, history = await _history_kinds(temporal, run_id)
    scheduled = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    # (from engine 9 the step that checks the budget, then provisions)
    assert [e.activity_task_scheduled_event_attributes.activity_type.name for e in scheduled] == ["prepare_stage"]
    assert scheduled[0].activity_task_scheduled_event_attributes.heartbeat_timeout.seconds > 0
    assert b"s \xc2\xb7 budget check 1, then provision the sandbox" in scheduled[0].user_metadata.summary.data


@pytest.mark.parametrize("newer_field", [False, True])
async def test_a_run_from_a_newer_engine_fails_at_once_naming_both_versions(
    newer_field: bool, stack: Stack, api: httpx.AsyncClient, temporal: Client, tmp_path: Path
) -> None:
    # Given a run started by a newer API: a higher engine, and maybe a field this worker's contracts lack
    name = unique("newer")
    await publish(api, {"name": name, "stages": [noop_stage("s", unique("nobody"))]})
    definition = PipelineDefinition.model_validate((await api.get(f"/v1/pipelines/{name}")).json())
    run_id = f"{name}-e{ENGINE + 1}"
    newer = RunInput(run_id=run_id, pipeline=definition, source=Source(repo=str(tmp_path))).model_dump(mode="json")
    newer["engine"] = ENGINE + 1
    if newer_field:
        newer["rollout"] = {"canary": True}
    # When this worker gets it
    with pytest.raises(WorkflowFailureError) as failed:
        await temporal.execute_workflow("PipelineWorkflow", newer, id=run_id,
                                        task_queue=stack.env["TEMPORAL_TASK_QUEUE"])
    # Then the run fails for good in its first workflow task, naming both versions, and nothing ran
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "EngineUnknown", cause
    assert f"engine {ENGINE + 1}" in cause.message and f"up to {ENGINE}" in cause.message
    kinds, _ = await _history_kinds(temporal, run_id)
    assert kinds.count(EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED) == 0
    assert kinds.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in kinds
    assert EventType.EVENT_TYPE_MARKER_RECORDED not in kinds
