"""The learning loop's activities: a retry gets the knowledge base's hints and remedies, and a stage's end teaches it.

Temporal still owns the retries: it runs the dispatch activity again, and the dispatch calls ``heal`` for every
attempt after the first. ``heal`` records the previous attempt's failure (its signature embedded here, in an
activity), finds the organisation's most similar failures whose remedies worked, applies the best trusted built-in
remedy to the task (``self_heal: apply``) and hands every hint to the agent. When the stage's task ends after a
retry, or fails, ``learn_from_stage`` (engine 8) counts each applied remedy's outcome and, for a success right after
a failure, records the pair as a learned entry: the next run starts knowing it. Its input names every remedy the
stage's attempts had, so they stand in the workflow's history.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from devart.core.contracts import AgentTaskInput, AppliedRemedy, LearnInput, TaskHint
from devart.core.database import db, tenancy
from devart.core.database.models import Run, TaskAttempt
from devart.core.database.tenancy import system_in
from devart.core.orgs import DEFAULT_ORG
from devart.domain import remedies
from devart.domain.events import add_event
from devart.domain.knowledge import store as knowledge
from devart.domain.knowledge.hints import FailureContext, Hint
from devart.domain.knowledge.signature import Signature

log = logging.getLogger(__name__)

#: Hints a retry is given.
HINTS = 3
OUTCOME = "stage.remedy.outcome"
_OUTCOME_SEEN = text(f"SELECT 1 FROM events WHERE run_id = :run AND stage = :stage AND kind = '{OUTCOME}' "
                     "AND data->>'attempt' = :attempt AND data->>'remedy' = :remedy LIMIT 1")


def signature_of(row: TaskAttempt, skill: str) -> Signature | None:
    """The failure of a failed attempt, as the knowledge base keys it; None when it did not fail with an error."""
    if row.status != "failed" or not row.error:
        return None
    error_type, _, message = row.error.partition(": ")
    log_tail = str((row.result or {}).get("log_tail") or "")
    return Signature(skill=skill, error_type=error_type, message=message or error_type, log_tail=log_tail)


def _context(inp: AgentTaskInput | LearnInput) -> FailureContext:
    return FailureContext(pipeline=inp.pipeline, stage=inp.stage)


def _choose(hints: list[Hint], error_type: str,
            caps: remedies.SelfHealSettings) -> list[tuple[str, dict[str, Any], int | None]]:
    """Remedies to try, best first: the hints' built-in remedies with a good record, then the built-in ones for
    the failure's kind that no hint named (an untried remedy explores; its outcome is learned). A remedy may come
    again on a later attempt: its change builds on the last one's, up to its cap."""
    chosen: list[tuple[str, dict[str, Any], int | None]] = []
    for hint in hints:
        # A built-in remedy applies only to the failure kinds it answers, however similar the texts read: more
        # memory never answers a test that fails for another reason.
        if hint.remedy in remedies.REMEDIES and error_type in remedies.REMEDIES[hint.remedy][1] \
                and hint.record.rate >= caps.min_success_rate:
            chosen.append((hint.remedy, dict(hint.parameters), hint.entry_id))
    # A remedy a hint of this very kind names is not explored again: with a poor record it is only suggested (the
    # guard against harmful memories), unless it is a diagnosis (re-run the failed tests), which comes anyway.
    named = {name for name, _, _ in chosen} | {h.remedy for h in hints if h.remedy and h.error_type == error_type
                                               and h.remedy not in remedies.DIAGNOSTIC}
    chosen += [(name, {}, None) for name in remedies.answering(error_type) if name not in named]
    return chosen


async def heal(inp: AgentTaskInput, attempt: int) -> AgentTaskInput:
    """The task attempt ``attempt`` receives: the previous attempt's task (with the remedies it had), plus the
    hints for how that attempt failed and, under ``self_heal: apply``, one more remedy. Unchanged for a first
    attempt, ``self_heal: off``, or a previous attempt that did not fail with an error (it timed out, its agent
    died): there is no failure to look up."""
    if attempt < 2 or inp.self_heal == "off":
        return inp
    async with db.session() as s:
        await tenancy.switch(s, system_in(await _org(s, inp.run_id)))  # its organisation's knowledge only
        previous = (await s.exec(select(TaskAttempt).where(
            TaskAttempt.run_id == inp.run_id, TaskAttempt.stage == inp.stage, col(TaskAttempt.attempt) < attempt)
            .order_by(col(TaskAttempt.attempt).desc()).limit(1))).first()
        base = inp
        if previous is not None and previous.input:
            base = AgentTaskInput.model_validate(previous.input)  # remedies accumulate over the attempts
        signature = signature_of(previous, inp.skill) if previous is not None else None
        if previous is None or signature is None:
            return base.model_copy(update={"hints": []})
        await knowledge.record_failure(s, signature, _context(inp), inp.run_id, previous.attempt)
        hints = await knowledge.similar(s, signature, k=HINTS)
        task = base.model_copy(update={"hints": [
            TaskHint(entry_id=h.entry_id, remedy=h.remedy, parameters=h.parameters, guidance=h.guidance,
                     similarity=round(h.similarity, 4), success_rate=round(h.record.rate, 4)) for h in hints]})
        if inp.self_heal != "apply":
            return task
        caps = remedies.SelfHealSettings()
        failure = remedies.Failure(error_type=signature.error_type, message=signature.message,
                                   output=_output(previous))
        for name, parameters, entry_id in _choose(hints, signature.error_type, caps):
            change = remedies.apply(name, task, parameters, caps, failure)
            if change is None:
                continue  # at its cap, or not a failure it can answer: it would change nothing
            applied = AppliedRemedy(name=name, parameters=parameters, attempt=attempt, after=signature.error_type,
                                    entry_id=entry_id, change=change.change)
            add_event(s, "stage.remedy", f"attempt {attempt}: {name} ({change.change}) after "
                      f"{signature.error_type}" + (f", as knowledge entry {entry_id} suggests" if entry_id else ""),
                      run_id=inp.run_id, stage=inp.stage, attempt=attempt, remedy=name, entry_id=entry_id,
                      change=change.change)
            return change.task.model_copy(update={"remedies": [*base.remedies, applied]})
        return task


@activity.defn
async def learn_from_stage(inp: LearnInput) -> None:
    """Count each remedy's outcome and learn the fix of a failure the next attempt got past.

    Idempotent per attempt: a retried activity counts nothing twice (``knowledge.learn`` keys on run and attempt;
    an outcome is counted once, when the attempt's row says it was not yet)."""
    async with db.session() as s:
        await tenancy.switch(s, system_in(await _org(s, inp.run_id)))
        rows = (await s.exec(select(TaskAttempt).where(TaskAttempt.run_id == inp.run_id,
                                                       TaskAttempt.stage == inp.stage)
                             .order_by(col(TaskAttempt.attempt)))).all()
        by_attempt = {r.attempt: r for r in rows}
        for remedy in inp.remedies:
            row = by_attempt.get(remedy.attempt)
            if row is None or row.status not in ("succeeded", "failed") or await _counted(s, inp, remedy):
                continue
            succeeded = row.status == "succeeded"
            add_event(s, OUTCOME, f"attempt {remedy.attempt} with {remedy.name} {row.status}", run_id=inp.run_id,
                      stage=inp.stage, attempt=remedy.attempt, remedy=remedy.name, entry_id=remedy.entry_id,
                      succeeded=succeeded)
            before = by_attempt.get(remedy.attempt - 1)
            signature = signature_of(before, inp.skill) if before is not None else None
            same_entry = False
            if remedy.entry_id is not None:
                await knowledge.record_outcome(s, remedy.entry_id, applied=True, succeeded=succeeded)
                entry = await knowledge.get_entry(s, remedy.entry_id)
                same_entry = signature is not None and entry.digest == signature.digest()
            if signature is None or same_entry:
                continue
            if succeeded:
                await knowledge.learn(s, signature, remedy.name, remedy.parameters, None, inp.run_id,
                                      remedy.attempt, context=_context(inp))
            elif remedies.effective(remedy.name, succeeded, _output(row)):
                await knowledge.learn_diagnosis(s, signature, remedy.name, remedy.parameters, inp.run_id,
                                                remedy.attempt, context=_context(inp))
        last = rows[-1] if rows else None
        if inp.status == "failed" and last is not None and (signature := signature_of(last, inp.skill)):
            await knowledge.record_failure(s, signature, FailureContext(pipeline=inp.pipeline, stage=inp.stage),
                                           inp.run_id, last.attempt)


def _output(row: TaskAttempt) -> dict[str, Any]:
    """The skill's structured output of a failed attempt (the diagnosis some remedies act on); {} when none."""
    output = (row.result or {}).get("output")
    return output if isinstance(output, dict) else {}


async def _org(s: AsyncSession, run_id: str) -> str:
    async with tenancy.as_system(s):
        run = await s.get(Run, run_id)
    return (run.org_id if run is not None else None) or DEFAULT_ORG


async def _counted(s: AsyncSession, inp: LearnInput, remedy: AppliedRemedy) -> bool:
    """Whether this remedy's outcome is on record already (a retried activity counts nothing twice)."""
    found = await s.execute(_OUTCOME_SEEN, {"run": inp.run_id, "stage": inp.stage, "attempt": str(remedy.attempt),
                                            "remedy": remedy.name})
    return found.first() is not None
