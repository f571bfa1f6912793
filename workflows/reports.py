"""The run's reports to GitHub (engine 6): each a regular activity of the workflow, retried by Temporal.

Before engine 6 the API reported a stage's claim and end from background tasks, lost when it restarted, and the
records activity (a local one) called GitHub at the run's start and end. Now the workflow schedules every report
as an activity of its own, so a report outlives any process, and GitHub stays out of local activities.

Reports run beside the stages, never holding them up: a stage's reports go out in order (queued at the run's
start, in progress, completed), and the run's end (the leftover conclusions and the review) waits for all of
them. A report that fails for good is in the feed (``github.report_failed``), and the run goes on.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from devart.core.contracts import GITHUB_TRIGGER, GitHubReport, RunRecord
    from devart.workflows import policies
    from devart.workflows.steps import summary

#: What each report reads as in the Web UI.
_WHAT = {"run_started": "GitHub: queued checks", "run_finished": "GitHub: conclusions and review",
         "stage_started": "GitHub: check in progress", "stage_finished": "GitHub: check completed"}


class GitHubReports:
    """The reports of one run; a run GitHub did not start (or an engine before 6) sends none."""

    def __init__(self, engine: int, trigger: str) -> None:
        self._on = engine >= 6 and trigger == GITHUB_TRIGGER
        self._start: asyncio.Task[None] | None = None
        self._stages: dict[str, asyncio.Task[None]] = {}

    def run_started(self, record: RunRecord) -> None:
        """Queued check runs for every stage, in the background."""
        if self._on:
            self._start = asyncio.create_task(self._send(GitHubReport(event="run_started", record=record), []))

    def stage(self, event: str, record: RunRecord, stage: str) -> None:
        """A stage started or ended: sent after the run's start and the stage's earlier report."""
        if not self._on:
            return
        after = [t for t in (self._start, self._stages.get(stage)) if t is not None]
        report = GitHubReport.model_validate({"event": event, "record": record, "stage": stage})
        self._stages[stage] = asyncio.create_task(self._send(report, after))

    async def run_finished(self, record: RunRecord) -> None:
        """Conclude what is left and post the review, once every earlier report is through."""
        if self._on:
            after = [t for t in (self._start, *self._stages.values()) if t is not None]
            await self._send(GitHubReport(event="run_finished", record=record), after)

    async def _send(self, report: GitHubReport, after: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*after, return_exceptions=True)
        try:
            await workflow.execute_activity(
                "report_github", report, start_to_close_timeout=policies.GITHUB_REPORT_TIMEOUT,
                retry_policy=policies.GITHUB_REPORT_RETRY,
                summary=summary(report.stage or "run", _WHAT[report.event]),
            )
        except ActivityError as err:  # the activity put the reason in the feed; GitHub never breaks a run
            workflow.logger.warning("GitHub report %s of %s failed: %s", report.event, report.record.run_id,
                                    err.cause or err)
