"""PipelineWorkflow: runs a pipeline's stages as a DAG, each stage being sandbox → agent task → teardown.

The workflow owns ordering and the stage states; Temporal owns retries, backoff, timeouts and heartbeats of the
agent task through the stage's ``RetryPolicy``. Independent stages run concurrently; a failed stage skips its
dependents and fails the run with the reason.

From engine 5 on the verdict is the truth: any error in a stage (a local step's failure, an approval never given,
an unexpected exception) fails that stage with its reason, a run succeeds only when every stage did, and a failed
run ends as a *failed workflow* (``RunFailed``) once its record is written, so Temporal and its Web UI agree with
the API. From engine 6 the sandbox steps are regular activities with heartbeats (``steps``; from 7 only those
that go over the network), GitHub hears of the run from activities of the workflow's own (``reports``), and
every activity's summary names its stage. Older
engines keep their behaviour, so their histories replay unchanged; a newer one than this worker knows fails the
run at once (``EngineUnknown``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from devart.core.contracts import (
        AgentTaskInput,
        BudgetCheck,
        BudgetDecision,
        EngineUnknown,
        LearnInput,
        Prepared,
        PrepareInput,
        ProvisionInput,
        RunInput,
        RunRecord,
        RunResult,
        RunStatus,
        SandboxHandle,
        StageResult,
        StageSpec,
        StageState,
        StageStatus,
        TeardownInput,
    )
    from devart.core.pipelines import substitute
    from devart.core.temporal import ORG
    from devart.sandboxes.source_hosts import is_remote
    from devart.workflows import policies
    from devart.workflows.dag import ready, skip_blocked
    from devart.workflows.failures import describe_failure, failed_result, raise_escaped, stage_retry_policy
    from devart.workflows.reports import GitHubReports
    from devart.workflows.steps import Steps, summary


# A run from a newer engine fails at once instead of its first workflow task failing forever (RunInput).
@workflow.defn(failure_exception_types=[EngineUnknown])
class PipelineWorkflow:
    def __init__(self) -> None:
        self._states: dict[str, StageState] = {}
        self._approved = False
        self._engine = 1
        self._steps = Steps(1)
        self._github = GitHubReports(1, "api")
        self._verdicts = False
        #: Set once the run is being cancelled: whatever ends a stage's task from then on ends it as cancelled.
        self._cancelling = False

    @workflow.signal
    def approve(self) -> None:
        """A supervisor lets the run go on past its soft budget limits."""
        self._approved = True

    @workflow.query
    def stages(self) -> list[StageState]:
        """Every stage's current state, in template order."""
        return list(self._states.values())

    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        self._steps = Steps(inp.engine)
        self._github = GitHubReports(inp.engine, inp.trigger)
        self._verdicts = inp.engine >= 5
        self._engine = inp.engine
        specs = {s.name: s for s in inp.pipeline.stages}
        self._states = {s.name: StageState(name=s.name, depends_on=s.depends_on) for s in inp.pipeline.stages}
        self._github.run_started(self._record_of(inp, RunStatus.RUNNING))
        tasks: dict[str, asyncio.Task[None]] = {}
        started: asyncio.Task[None] | None = None
        try:
            # Inside the try: a cancel that lands during the first record still records the run as cancelled.
            # From engine 9 the API records the run's start, as it starts the workflow: no step here.
            if 4 <= inp.engine < 9:  # recorded while the first stages prepare (all in the first workflow task)
                started = asyncio.create_task(self._record(inp, RunStatus.RUNNING))
            elif inp.engine < 4:
                await self._record(inp, RunStatus.RUNNING)
            while True:
                skip_blocked(self._states)
                for name in ready(self._states, tasks):
                    tasks[name] = asyncio.create_task(self._run_stage(inp, specs[name]))
                running = [t for t in tasks.values() if not t.done()]
                if not running:
                    break
                done, _ = await workflow.wait(running, return_when=asyncio.FIRST_COMPLETED)
                if self._verdicts:
                    raise_escaped(done)
        except asyncio.CancelledError:
            self._cancelling = True
            for task in tasks.values():
                task.cancel()
            # Let every stage run its teardown before the run is reported cancelled.
            await asyncio.gather(*tasks.values(), *([started] if started else []), return_exceptions=True)
            for state in self._states.values():
                if state.status in (StageStatus.PENDING, StageStatus.RUNNING, StageStatus.AWAITING_APPROVAL):
                    state.status = StageStatus.CANCELLED
            await self._record(inp, RunStatus.CANCELLED, "cancelled")
            await self._github.run_finished(self._record_of(inp, RunStatus.CANCELLED, "cancelled"))
            raise
        if started is not None:
            await started  # the start is on record before the end is
        if self._verdicts:
            return await self._conclude(inp)
        failed = [s for s in self._states.values() if s.status == StageStatus.FAILED]
        status = RunStatus.FAILED if failed else RunStatus.SUCCEEDED
        error = "; ".join(f"stage '{s.name}' failed: {s.error}" for s in failed) or None
        await self._record(inp, status, error)
        return RunResult(run_id=inp.run_id, status=status, stages=self.stages(), error=error)

    async def _conclude(self, inp: RunInput) -> RunResult:
        """Record the verdict (engine 5), then end the workflow as the run ended.

        The record comes first: the API, the CLI, the feed, the metrics and GitHub read the run's row, which holds
        every stage's result; the workflow's failure then carries the same result in its details, for Temporal
        clients and the Web UI.
        """
        for state in self._states.values():
            if state.status in (StageStatus.PENDING, StageStatus.RUNNING, StageStatus.AWAITING_APPROVAL):
                state.status, state.error = StageStatus.FAILED, "the stage ended without a verdict"
        failed = [s for s in self._states.values() if s.status == StageStatus.FAILED]
        if all(s.status == StageStatus.SUCCEEDED for s in self._states.values()):
            status, error = RunStatus.SUCCEEDED, None
        else:
            status = RunStatus.FAILED
            error = "; ".join(f"stage '{s.name}' failed: {s.error}" for s in failed) or "not every stage succeeded"
        await self._record(inp, status, error)
        await self._github.run_finished(self._record_of(inp, status, error))
        result = RunResult(run_id=inp.run_id, status=status, stages=self.stages(), error=error)
        if status == RunStatus.FAILED:
            raise ApplicationError(error or "run failed", result, type="RunFailed", non_retryable=True)
        return result

    async def _run_stage(self, inp: RunInput, spec: StageSpec) -> None:
        """Run one stage; from engine 5 on, whatever goes wrong in it becomes the stage's failure and reason."""
        state = self._states[spec.name]
        try:
            await self._stage(inp, spec, state)
            self._stage_report(inp, "stage_finished", state)
        except Exception as err:
            # Before engine 5 the error escaped the stage's task (and the stage stayed running): replay it so.
            if not self._verdicts or state.status == StageStatus.CANCELLED:
                raise
            if isinstance(err, CancelledError):  # a local step cancelled along with the run
                state.status, state.error = StageStatus.CANCELLED, "cancelled"
                raise
            state.status, state.error = StageStatus.FAILED, describe_failure(err)
            state.finished_at = workflow.now()
            if isinstance(err, workflow.NondeterminismError):
                raise  # a workflow bug: fail the workflow task, so a fixed worker can take the run on
            workflow.logger.warning("stage %s failed: %s", spec.name, state.error)
            self._stage_report(inp, "stage_finished", state)

    async def _stage(self, inp: RunInput, spec: StageSpec, state: StageState) -> None:
        # Runs recorded before budgets existed replay without the check; runs started in between (no engine in
        # their input) carry the check's patch marker.
        prepared: list[SandboxHandle] = []  # engine 9: the sandbox the budget check's step provisioned
        if self._engine >= 9:
            try:
                if not await self._within_budget(inp, state, lambda n: self._prepare(inp, spec, n, prepared)):
                    return
            except ActivityError as err:  # the sandbox could not be provisioned (or the budget not read)
                state.status, state.error, state.finished_at = StageStatus.FAILED, describe_failure(err), workflow.now()
                return
        elif (inp.engine >= 2 or workflow.patched("budget-check")) and not await self._within_budget(
                inp, state, lambda n: self._check_budget(inp, state, n)):
            return
        state.status = StageStatus.RUNNING
        state.started_at = workflow.now()
        self._stage_report(inp, "stage_started", state)
        handle: SandboxHandle | None = prepared[-1] if prepared else None
        try:
            handle = handle or await self._steps.sandbox(
                "provision_sandbox",
                ProvisionInput(run_id=inp.run_id, stage=spec.name, source=inp.source, spec=spec.sandbox),
                SandboxHandle, policies.PROVISION_TIMEOUT, policies.PROVISION_RETRY, policies.SANDBOX_HEARTBEAT,
                summary(spec.name, f"provision the sandbox (network: {spec.sandbox.network})"),
                networked=is_remote(inp.source.repo),
            )
            task = AgentTaskInput(
                run_id=inp.run_id,
                pipeline=inp.pipeline.name,
                stage=spec.name,
                skill=spec.skill,
                requires=spec.requires,
                inputs=substitute(spec.inputs, inp.params),
                sandbox=handle,
                source=inp.source,
                wait_timeout=spec.wait_timeout.total_seconds(),
                priority=inp.priority,
                self_heal=spec.self_heal,
            )
            result = await workflow.execute_activity(
                "run_agent_task",
                task,
                result_type=StageResult,
                start_to_close_timeout=spec.timeout,
                heartbeat_timeout=spec.heartbeat_timeout,
                retry_policy=stage_retry_policy(spec, self_heal=self._engine >= 8),
                # On cancel, wait for the agent to stop (it learns on its next heartbeat, or the heartbeat times
                # out) so the sandbox is torn down only once nothing runs in it.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=self._steps.name(summary(spec.name, f"agent task: {spec.skill} on {', '.join(spec.requires)} "
                                                 f"(up to {spec.retry.maximum_attempts} attempts)")),
            )
            state.result = result
            state.attempts = result.attempt
            state.status = StageStatus.SUCCEEDED
        except ActivityError as err:
            # The agent acknowledged the run's cancellation, or the task ended otherwise once it was asked to stop
            # (its agent died, so its heartbeat timed out instead): either way the cancellation ended the stage.
            if isinstance(err.cause, CancelledError) or self._cancelling:
                state.status = StageStatus.CANCELLED
                state.error = "cancelled"
                raise
            state.status = StageStatus.FAILED
            state.error = describe_failure(err)
            state.result = failed_result(err)
            if state.result is not None:
                state.attempts = state.result.attempt
        except asyncio.CancelledError:
            state.status = StageStatus.CANCELLED
            state.error = "cancelled"
            raise
        finally:
            state.finished_at = workflow.now()
            if handle is not None:
                await self._steps.sandbox(
                    "teardown_sandbox", TeardownInput(handle=handle), None, policies.TEARDOWN_TIMEOUT,
                    policies.TEARDOWN_RETRY, policies.SANDBOX_HEARTBEAT, summary(spec.name, "tear the sandbox down"),
                    networked=handle.backend != "local",
                )
        if self._engine >= 8:
            await self._learn(inp, spec, state)

    async def _learn(self, inp: RunInput, spec: StageSpec, state: StageState) -> None:
        """Teach the knowledge base how a stage that needed a retry, or failed, ended (engine 8). The remedies its
        attempts had are the step's input, so the history shows them. A stage that succeeded at once teaches
        nothing and costs no step; a failure to learn never changes the stage's verdict."""
        result = state.result
        if result is None or spec.self_heal == "off" or state.status not in (StageStatus.SUCCEEDED,
                                                                            StageStatus.FAILED):
            return
        if state.status == StageStatus.SUCCEEDED and result.attempt <= 1:
            return
        learned = LearnInput(run_id=inp.run_id, pipeline=inp.pipeline.name, stage=spec.name, skill=spec.skill,
                             status="succeeded" if state.status == StageStatus.SUCCEEDED else "failed",
                             attempts=result.attempt, remedies=result.remedies)
        try:
            # A regular activity, not a local one: its input, with every remedy applied, stands in the history.
            await workflow.execute_activity(
                "learn_from_stage", learned, start_to_close_timeout=policies.RECORD_TIMEOUT,
                retry_policy=policies.LEARN_RETRY,
                summary=summary(spec.name, f"learn from {result.attempt} attempt(s)" + (
                    f", remedies: {', '.join(r.name for r in result.remedies)}" if result.remedies else "")))
        except ActivityError as err:
            workflow.logger.warning("stage %s: the knowledge base learned nothing: %s", spec.name, err)

    def _budget(self, inp: RunInput, stage: str) -> BudgetCheck:
        return BudgetCheck(run_id=inp.run_id, pipeline=inp.pipeline.name, repository=inp.source.repo, stage=stage,
                           org=self._org() if self._engine >= 9 else None)

    async def _check_budget(self, inp: RunInput, state: StageState, checks: int) -> BudgetDecision:
        """The budget check as a step of its own (engines 2 to 8)."""
        return await self._steps.short(  # type: ignore[no-any-return]
            "check_budget", self._budget(inp, state.name), BudgetDecision, policies.RECORD_TIMEOUT,
            policies.RECORD_RETRY, summary(state.name, f"budget check {checks}"),
        )

    async def _prepare(self, inp: RunInput, spec: StageSpec, checks: int, handles: list[SandboxHandle]
                       ) -> BudgetDecision:
        """The budget check and, if the budget allows, the sandbox, in one step (engine 9): a local activity for a
        local folder on the local backend, else a regular one with heartbeats, as the provision alone was."""
        step = PrepareInput(
            budget=self._budget(inp, spec.name), approved=self._approved,
            provision=ProvisionInput(run_id=inp.run_id, stage=spec.name, source=inp.source, spec=spec.sandbox))
        prepared: Prepared = await self._steps.sandbox(
            "prepare_stage", step, Prepared, policies.PROVISION_TIMEOUT, policies.PROVISION_RETRY,
            policies.SANDBOX_HEARTBEAT,
            summary(spec.name, f"budget check {checks}, then provision the sandbox (network: {spec.sandbox.network})"),
            networked=is_remote(inp.source.repo),
        )
        if prepared.handle is not None:
            handles.append(prepared.handle)
        return prepared.decision

    async def _within_budget(self, inp: RunInput, state: StageState,
                             check: Callable[[int], Awaitable[BudgetDecision]]) -> bool:
        """Check the budgets before dispatch: pause on a soft limit until approved, stop on a hard one."""
        deadline: datetime | None = None
        checks = 0
        while True:
            checks += 1
            decision = await check(checks)
            if decision.state == "ok" or (decision.state == "soft" and self._approved):
                state.status, state.error = StageStatus.PENDING, None
                return True
            if decision.state == "hard":
                state.status, state.error = StageStatus.FAILED, f"budget exceeded: {decision.message}"
                return False
            wait = policies.BUDGET_RECHECK
            if self._verdicts:
                deadline = deadline or workflow.now() + inp.approval_timeout
                if workflow.now() >= deadline:
                    state.status = StageStatus.FAILED
                    state.error = (f"approval timed out: nobody approved the run within {inp.approval_timeout} "
                                   f"({decision.message})")
                    return False
                wait = min(wait, deadline - workflow.now())
            state.status = StageStatus.AWAITING_APPROVAL
            state.error = f"paused: {decision.message}; approve the run or raise the budget"
            try:
                await workflow.wait_condition(lambda: self._approved, timeout=wait)
            except TimeoutError:  # the builtin, which wait_condition raises
                if not self._verdicts:
                    raise  # before engine 5 this escaped the stage: replay it so
                # look again: the budget may have been raised, or the deadline passed

    @staticmethod
    def _org() -> str | None:
        """The run's organisation, from the search attribute the API started it with (None if it has none)."""
        return workflow.info().typed_search_attributes.get(ORG) or None

    def _record_of(self, inp: RunInput, status: RunStatus, error: str | None = None,
                   stages: list[StageState] | None = None) -> RunRecord:
        """The run as it stands; from engine 6 its records leave GitHub to the workflow's own reports."""
        return RunRecord(
            run_id=inp.run_id, pipeline=inp.pipeline.name, repository=inp.source.repo, ref=inp.source.ref,
            trigger=inp.trigger, params=inp.params, status=status, stages=self.stages() if stages is None else stages,
            error=error, report_github=self._engine < 6,
        )

    async def _record(self, inp: RunInput, status: RunStatus, error: str | None = None) -> None:
        await self._steps.short("record_run", self._record_of(inp, status, error), None, policies.RECORD_TIMEOUT,
                                policies.RECORD_RETRY, summary("run", f"record: {status.value}"))

    def _stage_report(self, inp: RunInput, event: str, state: StageState) -> None:
        """Tell GitHub of a stage's start or end (engine 6, runs a webhook started), beside the run's progress."""
        stage = state.model_copy(deep=True)  # as it is now: the state goes on changing while the report waits
        self._github.stage(event, self._record_of(inp, RunStatus.RUNNING, stages=[stage]), state.name)
