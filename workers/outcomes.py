"""How an agent reports a task's outcome so that the API can accept it.

A refused report (413: past a size limit; 422: not a valid result) is never sent again as it was: it would be
refused again, and a task left claimed only lets its heartbeat time out and a retry produce the same result, so
the run would fail later and for the wrong reason. The stage fails instead, with the API's reason.
"""

from __future__ import annotations

import logging

from devart.core import reports
from devart.core.contracts import StageResult, TaskDetail
from devart.workers.agent_client import AgentClient, Refused, TooLarge

log = logging.getLogger("devart.agent")

#: The error type of a stage whose result was too large to report (the message names the limit).
RESULT_TOO_LARGE = "ResultTooLarge"
#: The error type of a stage whose result the API found invalid (the message says which field and why).
INVALID_RESULT = "InvalidResult"


async def complete(client: AgentClient, task: TaskDetail, result: StageResult) -> None:
    """Report a result; one the API cannot accept fails the stage, non-retryably, with the reason instead."""
    if problem := reports.result_problem(reports.report_size(result)):  # saves uploading it only to be refused
        await fail(client, task, RESULT_TOO_LARGE, problem, True, reports.shrunk(result, problem))
        return
    try:
        await client.complete(task, result)
    except Refused as exc:
        if exc.status_code not in (413, 422):
            raise
        log.warning("result of %s/%s refused: %s", task.run_id, task.stage, exc.detail)
        error_type = RESULT_TOO_LARGE if isinstance(exc, TooLarge) else INVALID_RESULT
        await fail(client, task, error_type, exc.detail, True, reports.shrunk(result, exc.detail))


async def fail(client: AgentClient, task: TaskDetail, error_type: str, message: str, non_retryable: bool,
               report: StageResult | None) -> None:
    """Report a failure; a report too large to send goes without the skill's output, and if refused still, without
    any result (the stage's error keeps the reason)."""
    if report is not None and (problem := reports.result_problem(reports.report_size(report, message))):
        report = reports.shrunk(report, problem)
    try:
        await client.fail(task, error_type, message, non_retryable, report)
    except Refused as exc:
        if report is None or exc.status_code not in (413, 422):
            raise
        log.warning("failure report of %s/%s refused (%s); sending it without its result", task.run_id, task.stage,
                    exc.detail)
        await client.fail(task, error_type, message, non_retryable, None)
