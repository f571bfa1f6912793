"""GitHub activity: one report of a run to GitHub (engine 6), sent by the workflow and retried by Temporal.

A report GitHub refused (a 4xx) fails at once; one it did not answer (an outage, a rate limit, a timeout) is
retried by ``policies.GITHUB_REPORT_RETRY``. The attempt that gives up puts the reason in the run's feed
(``github.report_failed``); the workflow logs it and the run goes on.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.exceptions import ApplicationError

from devart.core.contracts import GitHubReport
from devart.github import reporter as github_reporter
from devart.workflows import policies

#: A report's own bound, short of its activity's timeout so that the last attempt still writes why it failed.
REPORT_BOUND = policies.GITHUB_REPORT_TIMEOUT.total_seconds() - 10


@activity.defn
async def report_github(rep: GitHubReport) -> None:
    """Send the report; raise ``GitHubRefused`` (final) or ``GitHubUnavailable`` (retried) when it failed."""
    try:
        async with asyncio.timeout(REPORT_BOUND):
            await github_reporter.report(rep)
    except Exception as exc:
        refused = github_reporter.refused(exc)
        why = github_reporter.describe(exc, REPORT_BOUND)
        if refused or activity.info().attempt >= (policies.GITHUB_REPORT_RETRY.maximum_attempts or 0):
            await github_reporter.report_failed(rep.record.run_id, rep.stage, github_reporter.what(rep), why)
        raise ApplicationError(why, type="GitHubRefused" if refused else "GitHubUnavailable",
                               non_retryable=refused) from exc
