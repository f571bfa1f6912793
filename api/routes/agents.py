"""Administrator routes of the agent registry (bearer ``DEVART_ADMIN_TOKEN``)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query

from devart.api.auth import access
from devart.api.deps import SessionDep
from devart.api.schemas import AgentCreate, AgentCreated, AgentView, SkillStats
from devart.core.database.models import Agent
from devart.domain import agents
from devart.domain.identity import Role

router = APIRouter(prefix="/v1/agents", tags=["agents (admin)"])


async def _view(session: SessionDep, agent: Agent, with_stats: bool = False) -> AgentView:
    stats = []
    if with_stats:
        stats = [
            SkillStats(skill=s.skill, tasks=s.tasks, successes=s.successes,
                       success_rate=s.successes / s.tasks if s.tasks else 0.0,
                       mean_seconds=s.total_seconds / s.tasks if s.tasks else 0.0, cost=s.cost)
            for s in await agents.stats(session, agent.name)
        ]
    return AgentView(name=agent.name, capabilities=agent.capabilities, skills=agent.skills, active=agent.active,
                     status=agents.effective_status(agent), current_task=agent.current_task, owner=agent.owner,
                     key_prefix=agent.key_prefix, created_at=agent.created_at, last_seen_at=agent.last_seen_at,
                     stats=stats)


@router.post("", status_code=201, response_model=AgentCreated, **access(Role.ADMIN))
async def create(req: AgentCreate, session: SessionDep) -> AgentCreated:
    """Register an agent; the response holds its key, which is never shown again. 422 past the capability limit."""
    try:
        key = await agents.create(session, req.name, req.capabilities, req.owner)
    except agents.AnnouncementInvalid as exc:
        raise HTTPException(422, str(exc)) from None
    await session.commit()
    return AgentCreated(name=req.name, capabilities=sorted(set(req.capabilities)), key=key)


@router.get("", response_model=list[AgentView], **access(Role.VIEWER))
async def list_agents(session: SessionDep) -> list[AgentView]:
    return [await _view(session, a) for a in await agents.list_agents(session)]


@router.get("/{name}", response_model=AgentView, **access(Role.VIEWER))
async def show(name: str, session: SessionDep) -> AgentView:
    return await _view(session, await agents.get(session, name), with_stats=True)


@router.post("/{name}/activate", response_model=AgentView, **access(Role.SUPERVISOR))
async def activate(name: str, session: SessionDep) -> AgentView:
    agent = await agents.set_active(session, name, True)
    await session.commit()
    return await _view(session, agent)


@router.post("/{name}/deactivate", response_model=AgentView, **access(Role.SUPERVISOR))
async def deactivate(
    name: str, session: SessionDep,
    handback: bool = Query(default=False, description="Return the current task now instead of finishing it."),
) -> AgentView:
    agent = await agents.set_active(session, name, False, handback=handback)
    await session.commit()
    return await _view(session, agent)


@router.post("/{name}/rotate-key", response_model=AgentCreated, **access(Role.ADMIN))
async def rotate_key(name: str, session: SessionDep) -> AgentCreated:
    agent = await agents.get(session, name)
    key = await agents.rotate_key(session, name, agent)
    await session.commit()
    return AgentCreated(name=name, capabilities=agent.capabilities, key=key)


@router.delete("/{name}", status_code=204, **access(Role.ADMIN))
async def remove(name: str, session: SessionDep) -> None:
    await agents.remove(session, name)
    await session.commit()
