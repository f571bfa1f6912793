"""Whether Temporal already applied an agent's report, for a report retried after its reply was lost.

The API forwards a report to Temporal first and records it second. When the reply to the agent is lost after
Temporal took the report (the API restarted before its commit, or the connection dropped), the agent sends the
same report again and Temporal answers NOT_FOUND: the activity is closed. NOT_FOUND alone cannot tell that retry
from a report on an attempt that timed out, so the run's history decides: the stage's agent task closed with
*this* report (its result carries the attempt and the agent, so only this attempt's claim holder could have sent
it), or this attempt's failure is the one Temporal retried the activity after. Read only on that rare path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio.api.common.v1 import Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from devart.core.contracts import AgentTaskInput, StageResult
from devart.core.database.models import TaskAttempt

#: The activity every agent stage runs (``workflows.pipeline``).
AGENT_TASK = "run_agent_task"


async def completed(client: Client, row: TaskAttempt, result: StageResult) -> bool:
    """Whether the row's stage finished with exactly this result."""

    def same(event: HistoryEvent) -> bool:
        if not event.HasField("activity_task_completed_event_attributes"):
            return False
        return _values(client, event.activity_task_completed_event_attributes.result, StageResult) == [result]

    return await _closed_with(client, row, same)


async def failed(client: Client, row: TaskAttempt, error: ApplicationError) -> bool:
    """Whether the row's stage failed with exactly this error, or Temporal is retrying it after this attempt's."""

    def same(event: HistoryEvent) -> bool:
        if not event.HasField("activity_task_failed_event_attributes"):
            return False
        return _same_failure(client, event.activity_task_failed_event_attributes.failure, error)

    if await _closed_with(client, row, same):
        return True
    scheduled = await _scheduled(client, row)
    if scheduled is None:
        return False
    description = await client.get_workflow_handle(row.run_id).describe()
    return any(
        pending.activity_id == scheduled.activity_task_scheduled_event_attributes.activity_id
        and pending.attempt > row.attempt and _same_failure(client, pending.last_failure, error)
        for pending in description.raw_description.pending_activities
    )


def _values(client: Client, payloads: Payloads, kind: type) -> list[Any]:
    """Decoded by the payload converter alone: devart sets no payload codec, which would need awaiting."""
    if not payloads.payloads:
        return []
    return list(client.data_converter.payload_converter.from_payloads(list(payloads.payloads), [kind]))


def _same_failure(client: Client, failure: Failure, error: ApplicationError) -> bool:
    info = failure.application_failure_info
    if failure.message != error.message or info.type != error.type or info.non_retryable != error.non_retryable:
        return False
    return _values(client, info.details, StageResult) == list(error.details)


async def _scheduled(client: Client, row: TaskAttempt) -> HistoryEvent | None:
    """The latest agent task the run scheduled for the row's stage."""
    found = None
    async for event in client.get_workflow_handle(row.run_id).fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name != AGENT_TASK:
                continue
            inp = _values(client, attributes.input, AgentTaskInput)
            if inp and inp[0].stage == row.stage:
                found = event
    return found


async def _closed_with(client: Client, row: TaskAttempt, same: Callable[[HistoryEvent], bool]) -> bool:
    """Whether the stage's agent task closed with an event ``same`` recognises, in this row's attempt."""
    scheduled = await _scheduled(client, row)
    if scheduled is None:
        return False
    started_attempt = 0
    async for event in client.get_workflow_handle(row.run_id).fetch_history_events():
        if event.HasField("activity_task_started_event_attributes"):
            if event.activity_task_started_event_attributes.scheduled_event_id == scheduled.event_id:
                started_attempt = event.activity_task_started_event_attributes.attempt
            continue
        for name in ("activity_task_completed_event_attributes", "activity_task_failed_event_attributes"):
            if event.HasField(name) and getattr(event, name).scheduled_event_id == scheduled.event_id:
                return started_attempt == row.attempt and same(event)
    return False
