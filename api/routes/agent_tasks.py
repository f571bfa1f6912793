"""Routes agents call with their API key: lanes to consume, and claim / heartbeat / complete / fail a task."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from devart.api.auth import AGENT, declared
from devart.api.deps import (
    CurrentAgent,
    IdentifiedAgent,
    PresentedKey,
    PreviousSeen,
    SessionDep,
    TemporalDep,
    client_for,
)
from devart.api.schemas import (
    BrokerAccess,
    CancelledRequest,
    ClaimRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatReply,
    HeartbeatRequest,
    KeepaliveReply,
    KeepaliveRequest,
    ReleaseRequest,
)
from devart.core.contracts import TaskDetail
from devart.domain import agents, tasks

router = APIRouter(prefix="/v1/agent", tags=["agents"])


@router.get("/me", **declared(AGENT))
async def me(agent: IdentifiedAgent) -> dict[str, object]:
    return {"name": agent.name, "capabilities": agent.capabilities, "active": agent.active, "org": agent.org_id}


@router.post("/broker", response_model=BrokerAccess, **declared(AGENT))
async def broker(agent: IdentifiedAgent, key: PresentedKey) -> BrokerAccess:
    """The agent's own RabbitMQ user, set (again) for the key presented, so an agent registered before broker
    administration was configured, or on a broker since reset, gets one; 503 when the management API does not
    answer. ``enforced`` false: broker administration is off, use AMQP_URL's credentials."""
    user = await agents.broker_access(agent, key)
    return BrokerAccess(enforced=user is not None, user=user)


@router.post("/keepalive", response_model=KeepaliveReply, **declared(AGENT))
async def keepalive(
    req: KeepaliveRequest, agent: IdentifiedAgent, session: SessionDep, previous_seen: PreviousSeen
) -> KeepaliveReply:
    """Liveness and control in one call: the agent says what it is doing, the API says whether to go on.

    422 naming the limit when the announced skills are too many or badly named (``core.bounds``); nothing is stored.
    """
    handback = await agents.keepalive(session, agent, req.status, req.skills, previous_seen)
    return KeepaliveReply(active=agent.active, handback=handback)


@router.get("/lanes", response_model=list[str], **declared(AGENT))
async def lanes(agent: CurrentAgent, session: SessionDep) -> list[str]:
    """The band keys of every known lane this agent can serve."""
    return await agents.lanes(session, agent)


@router.post("/tasks/{task_id}/claim", response_model=TaskDetail, **declared(AGENT))
async def claim(task_id: str, agent: CurrentAgent, session: SessionDep, temporal: TemporalDep,
                req: Annotated[ClaimRequest | None, Body()] = None) -> TaskDetail:
    """Claim a queued task; 409 when it is taken, cancelled or over. The same claim asked again (the same
    ``claim_id``, by the same agent) is answered as the first time."""
    wanted = req.claim_id if req is not None else None
    return await tasks.claim(session, await client_for(temporal, session), task_id, agent, wanted)


@router.post("/tasks/{task_id}/heartbeat", response_model=HeartbeatReply, **declared(AGENT))
async def heartbeat(
    task_id: str, req: HeartbeatRequest, agent: IdentifiedAgent, session: SessionDep, temporal: TemporalDep
) -> HeartbeatReply:
    """Keep the claim alive; 403 for a task this agent did not claim, 413 for details past the limit."""
    client = await client_for(temporal, session)
    return await tasks.heartbeat(session, client, task_id, agent, req.claim_id, req.details)


@router.post("/tasks/{task_id}/complete", status_code=204, **declared(AGENT))
async def complete(
    task_id: str, req: CompleteRequest, agent: IdentifiedAgent, session: SessionDep, temporal: TemporalDep
) -> None:
    """Report the stage's result. 403 for a task this agent did not claim (nothing is written); 413 naming the limit
    for a result Temporal or the run's record cannot carry: nothing is stored and the task stays claimed, so the
    agent can report a smaller result or fail the stage."""
    await tasks.complete(session, await client_for(temporal, session), task_id, agent, req)


@router.post("/tasks/{task_id}/fail", status_code=204, **declared(AGENT))
async def fail(
    task_id: str, req: FailRequest, agent: IdentifiedAgent, session: SessionDep, temporal: TemporalDep
) -> None:
    """Report the stage's failure; 403 and 413 as for ``complete`` (without its result, a report whose message is
    within the limit always fits)."""
    await tasks.fail(session, await client_for(temporal, session), task_id, agent, req)


@router.post("/tasks/{task_id}/cancelled", status_code=204, **declared(AGENT))
async def cancelled(
    task_id: str, req: CancelledRequest, agent: IdentifiedAgent, session: SessionDep, temporal: TemporalDep
) -> None:
    await tasks.cancelled(session, await client_for(temporal, session), task_id, agent, req.claim_id)


@router.post("/tasks/{task_id}/release", status_code=204, **declared(AGENT))
async def release(
    task_id: str, req: ReleaseRequest, agent: IdentifiedAgent, session: SessionDep, temporal: TemporalDep
) -> None:
    """Hand the task back (the agent is draining or was deactivated): it is queued again, in the same attempt, for
    another agent; the caller can no longer report on it."""
    await tasks.release(session, await client_for(temporal, session), task_id, agent, req.claim_id, req.reason)
