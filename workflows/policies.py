"""Timeouts and retry policies of the pipeline's housekeeping activities (stage policies come from templates)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

#: Cloning a repository into a fresh workspace; generous for large repositories over slow links.
PROVISION_TIMEOUT = timedelta(minutes=5)
#: Provisioning hits the filesystem and git only; a few quick retries ride over a transient hiccup.
PROVISION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=["SandboxUnavailable", "SandboxProvisionFailed"],
)
#: Tearing down kills processes and removes a folder.
TEARDOWN_TIMEOUT = timedelta(minutes=1)
#: Teardown must eventually happen, so it retries longer than anything else.
TEARDOWN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)
#: Writing a run's record to PostgreSQL.
RECORD_TIMEOUT = timedelta(seconds=30)
#: The database may restart; keep trying for about two minutes before the record write fails the run.
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=15,
)

#: A run paused on a soft budget limit looks again this often, in case the budget was raised.
BUDGET_RECHECK = timedelta(seconds=10)

#: One report to GitHub: a few requests (a check run, its annotations in pages of 50, the review), each bounded
#: by ``DEVART_GITHUB_TIMEOUT``.
GITHUB_REPORT_TIMEOUT = timedelta(seconds=60)
#: GitHub has outages and rate limits: keep a report trying for about five minutes; a refusal (a 4xx other than
#: 408 and 429, e.g. an App that lost access) will not change on retry.
GITHUB_REPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=10,
    non_retryable_error_types=["GitHubRefused"],
)
#: A sandbox step that waits on the network (clone, pod start or deletion) heartbeats every third of this; a
#: worker that dies mid-step is noticed this soon, not when the step's whole timeout runs out.
SANDBOX_HEARTBEAT = timedelta(seconds=30)

#: Learning from a stage is worth a few tries, never a stuck run: it gives up within about a minute.
LEARN_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
)
