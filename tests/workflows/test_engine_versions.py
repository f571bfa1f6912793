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
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.contracts import ENGINE, PipelineDefinition, RunInput, RunStatus, Source
from tests.helpers import noop_stage, publish, start, unique
from tests.stack import Stack
from workflows.pipeline import PipelineWorkflow


async def _history_kinds(temporal: Client, run_id: str) -> tuple[list[int], WorkflowHistory]:
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    return [e.event_type for e in history.events], history


@pytest.mark.parametrize("engine", [1, 2, 3, 4, ENGINE])
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
    # started now takes the budget check's patched path, as runs in flight when it was added did not)
    assert scheduled == (1 if engine >= 3 else 6)
    upserts = kinds.count(EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES)
    assert upserts == (1 if engine == 1 else 0)  # engine 1 records the budget check's patch marker
    replayer = Replayer(workflows=[PipelineWorkflow], data_converter=pydantic_data_converter)
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
