"""Running the self-healing benchmark's scenarios on the stack, and reading back what each run did.

A scenario runs as a one-stage pipeline of its own per mode (``self_heal: off`` or ``apply``), up to three
attempts, on the benchmark stack's agents. What a run did is read from the API (the stage's status, its attempts,
the remedies applied) and its first attempt's failure from the database (``task_attempts``, as the learning loop
reads it), so the hints measured are those a retry of that failure would get.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from sqlalchemy import func
from sqlmodel import col, select

from bench.selfheal_scenarios import Scenario
from devart.activities.selfheal import signature_of
from devart.core.database import db, tenancy
from devart.core.database.models import TaskAttempt
from devart.core.database.models_knowledge import KnowledgeEntry
from devart.core.database.tenancy import DEFAULT_ORG, system_in
from devart.domain.knowledge import store as knowledge

#: Attempts a stage gets in either mode (Temporal's retry policy).
ATTEMPTS = 3
#: Seconds a run may take before the benchmark gives up on it (a test stage installs pytest on its first attempt).
RUN_DEADLINE = 300.0
#: Seconds between two looks at a running run.
POLL_EVERY = 0.5
#: Hints the top-3 measure looks at.
TOP = 3
#: Stage settings both modes share; only ``self_heal`` differs. A short retry interval keeps the benchmark brisk.
STAGE = {"name": "check", "timeout": 240, "heartbeat_timeout": 30,
         "retry": {"initial_interval": 1, "backoff_coefficient": 1.0, "maximum_interval": 1,
                   "maximum_attempts": ATTEMPTS}}


@dataclass
class Outcome:
    """One run of one scenario in one mode."""

    scenario: str
    kind: str
    mode: str
    run_id: str
    status: str
    attempts: list[str] = field(default_factory=list)  #: each attempt's status, in order
    errors: list[str] = field(default_factory=list)  #: each failed attempt's error, cut short
    remedies: list[str] = field(default_factory=list)  #: "name (change)" of each remedy applied
    from_knowledge: int = 0  #: remedies applied because a knowledge entry named them (not explored as built-ins)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def definition(scenario: Scenario, mode: str, capability: str, tag: str) -> dict[str, Any]:
    """The scenario's one-stage pipeline in ``mode``, on the benchmark's agents only."""
    stage = {**STAGE, "skill": scenario.skill, "requires": [capability], "inputs": scenario.inputs,
             "sandbox": scenario.sandbox, "self_heal": mode}
    return {"name": f"sh-{tag}-{scenario.id}-{mode}"[:63], "stages": [stage]}


async def run(api: httpx.AsyncClient, scenario: Scenario, mode: str, capability: str, tag: str) -> Outcome:
    """Publish the scenario's pipeline for ``mode``, run it on its repository, and wait for its end."""
    body = definition(scenario, mode, capability, tag)
    published = await api.post("/v1/pipelines", json=body)
    published.raise_for_status()
    started = time.monotonic()
    answer = await api.post("/v1/runs", json={"pipeline": body["name"], "repo": str(scenario.repo)})
    answer.raise_for_status()
    run_id = str(answer.json()["run_id"])
    deadline = started + RUN_DEADLINE
    while True:
        found = (await api.get(f"/v1/runs/{run_id}")).json()
        if found["status"] != "running":
            break
        if time.monotonic() > deadline:
            return Outcome(scenario.id, scenario.kind, mode, run_id, "timed out", seconds=RUN_DEADLINE)
        await asyncio.sleep(POLL_EVERY)  # polling the API, bounded by the deadline above
    stage = found["stages"][0]
    log = stage.get("attempt_log") or []
    result = stage.get("result") or {}
    applied = result.get("remedies") or []
    return Outcome(
        scenario.id, scenario.kind, mode, run_id, found["status"],
        attempts=[str(a.get("status")) for a in log],
        errors=[str(a.get("error"))[:160] for a in log if a.get("error")],
        remedies=[f"{r['name']} ({r.get('change', '')})" for r in applied],
        from_knowledge=sum(r.get("entry_id") is not None for r in applied),
        seconds=round(time.monotonic() - started, 1))


async def newest_entry() -> int:
    """The knowledge base's highest entry id: what the warm-up left, for the top-3 measure's frozen view."""
    async with db.session() as s:
        await tenancy.switch(s, system_in(DEFAULT_ORG))
        return (await s.exec(select(func.max(KnowledgeEntry.id)))).one() or 0


async def knowledge_size() -> dict[str, int]:
    """Entries by what they hold: a remedy, guidance only, or a bare recorded failure."""
    async with db.session() as s:
        await tenancy.switch(s, system_in(DEFAULT_ORG))
        rows = (await s.exec(select(KnowledgeEntry.remedy, KnowledgeEntry.guidance))).all()
    return {"with_remedy": sum(r is not None for r, _ in rows),
            "guidance_only": sum(r is None and g is not None for r, g in rows),
            "bare_failures": sum(r is None and g is None for r, g in rows)}


async def top_hints(outcome: Outcome, scenario: Scenario, frozen: int) -> dict[str, Any]:
    """The top-3 hints the warm-up's knowledge gives for the first failure of ``outcome``'s run.

    The failure is its first attempt's, as ``heal`` keys it (``signature_of``). The knowledge base is searched
    with the store's own ``similar``, keeping only entries up to ``frozen`` (the warm-up's last): entries the
    held-out runs learned meanwhile are dropped from the ranking, which is otherwise unchanged, so this is what a
    knowledge base that never saw the held-out set answers."""
    async with db.session() as s:
        await tenancy.switch(s, system_in(DEFAULT_ORG))
        row = (await s.exec(select(TaskAttempt).where(TaskAttempt.run_id == outcome.run_id)
                            .order_by(col(TaskAttempt.attempt)).limit(1))).first()
        signature = signature_of(row, scenario.skill) if row is not None else None
        if signature is None:
            return {"scenario": scenario.id, "kind": scenario.kind, "error_type": None, "hints": [], "hit": False}
        later = (await s.exec(select(func.count()).where(col(KnowledgeEntry.id) > frozen))).one()
        hints = [h for h in await knowledge.similar(s, signature, k=TOP + int(later)) if h.entry_id <= frozen][:TOP]
    return {"scenario": scenario.id, "kind": scenario.kind, "error_type": signature.error_type,
            "expected": scenario.expected_remedy,
            "hints": [{"remedy": h.remedy, "similarity": round(h.similarity, 3), "exact": h.exact,
                       "score": round(h.score, 3)} for h in hints],
            "hit": scenario.expected_remedy in {h.remedy for h in hints}}
