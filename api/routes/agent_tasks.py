"""Routes agents call with their API key: lanes to consume, and claim / heartbeat / complete / fail a task."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlmodel import select

from api.deps import CurrentAgent, IdentifiedAgent, PreviousSeen, SessionDep, TemporalDep
from api.schemas import (
    CancelledRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatReply,
    HeartbeatRequest,
    KeepaliveReply,
    KeepaliveRequest,
    ReleaseRequest,
)
from api.services import tasks
from core.agents import AnnouncementInvalid, check_skills, effective_status
from core.contracts import TaskDetail
from core.events import add_event
from core.models import Lane, utcnow
from core.topology import band_key, can_serve

router = APIRouter(prefix="/v1/agent", tags=["agents"])


@router.get("/me")
async def me(agent: IdentifiedAgent) -> dict[str, object]:
    return {"name": agent.name, "capabilities": agent.capabilities, "active": agent.active}


@router.post("/keepalive", response_model=KeepaliveReply)
async def keepalive(
    req: KeepaliveRequest, agent: IdentifiedAgent, session: SessionDep, previous_seen: PreviousSeen
) -> KeepaliveReply:
    """Liveness and control in one call: the agent says what it is doing, the API says whether to go on.

    422 naming the limit when the announced skills are too many or badly named (``core.bounds``); nothing is stored.
    """
    try:
        skills = check_skills(req.skills)
    except AnnouncementInvalid as exc:
        raise HTTPException(422, str(exc)) from None
    # deactivate(handback=True) marks the agent draining; keep that mark until the agent goes offline.
    handback = not agent.active and agent.status == "draining"
    was_online = effective_status(agent, previous_seen) != "offline"
    if not handback or req.status == "offline":
        agent.status = req.status
    if req.status == "offline" and was_online:
        add_event(session, "agent.offline", f"agent {agent.name} went offline", agent=agent.name)
    elif req.status != "offline" and not was_online:
        add_event(session, "agent.online", f"agent {agent.name} is online ({req.status})", agent=agent.name,
                  capabilities=agent.capabilities)
    agent.skills = skills
    agent.last_seen_at = utcnow()  # the liveness signal itself: always written, not throttled
    session.add(agent)
    await session.commit()
    return KeepaliveReply(active=agent.active, handback=handback)


@router.get("/lanes", response_model=list[str])
async def lanes(agent: CurrentAgent, session: SessionDep) -> list[str]:
    """The band keys of every known lane this agent can serve (its requirements are a subset of its capabilities).

    A lane's default band is its plain name, as before priorities; other bands are ``lane,pN`` (core.topology),
    which an older agent's capability check never matches, so it keeps consuming just the default bands.
    """
    rows = (await session.exec(select(Lane))).all()
    return sorted(band_key(r.name, p) for r in rows if can_serve(agent.capabilities, r.name) for p in r.priorities)


@router.post("/tasks/{task_id}/claim", response_model=TaskDetail)
async def claim(task_id: str, agent: CurrentAgent, session: SessionDep, client: TemporalDep) -> TaskDetail:
    return await tasks.claim(session, client, task_id, agent)


@router.post("/tasks/{task_id}/heartbeat", response_model=HeartbeatReply)
async def heartbeat(
    task_id: str, req: HeartbeatRequest, agent: IdentifiedAgent, session: SessionDep, client: TemporalDep
) -> HeartbeatReply:
    """Keep the claim alive; 403 for a task this agent did not claim, 413 for details past the limit."""
    return await tasks.heartbeat(session, client, task_id, agent, req.claim_id, req.details)


@router.post("/tasks/{task_id}/complete", status_code=204)
async def complete(
    task_id: str, req: CompleteRequest, agent: IdentifiedAgent, session: SessionDep, client: TemporalDep
) -> None:
    """Report the stage's result. 403 for a task this agent did not claim (nothing is written); 413 naming the limit
    for a result Temporal or the run's record cannot carry: nothing is stored and the task stays claimed, so the
    agent can report a smaller result or fail the stage."""
    await tasks.complete(session, client, task_id, agent, req)


@router.post("/tasks/{task_id}/fail", status_code=204)
async def fail(
    task_id: str, req: FailRequest, agent: IdentifiedAgent, session: SessionDep, client: TemporalDep
) -> None:
    """Report the stage's failure; 403 and 413 as for ``complete`` (without its result, a report whose message is
    within the limit always fits)."""
    await tasks.fail(session, client, task_id, agent, req)


@router.post("/tasks/{task_id}/cancelled", status_code=204)
async def cancelled(
    task_id: str, req: CancelledRequest, agent: IdentifiedAgent, session: SessionDep, client: TemporalDep
) -> None:
    await tasks.cancelled(session, client, task_id, agent, req.claim_id)


@router.post("/tasks/{task_id}/release", status_code=204)
async def release(
    task_id: str, req: ReleaseRequest, agent: IdentifiedAgent, session: SessionDep, client: TemporalDep
) -> None:
    """Hand the task back (the agent is draining or was deactivated): it is queued again, in the same attempt, for
    another agent; the caller can no longer report on it."""
    await tasks.release(session, client, task_id, agent, req.claim_id, req.reason)
