"""The agent registry: create agents, issue and rotate their keys (shown once, stored hashed), (de)activate.

Used by the API's admin routes, ``devart up`` (for its default pool) and the test suite, so every path that
creates an agent stores the key the same way.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.bounds import MAX_AGENT_CAPABILITIES, skills_problem
from devart.core.database.models import Agent, AgentSkillStat, Lane, utcnow
from devart.core.errors import Conflict, Invalid, NotFound
from devart.core.messaging import broker_users
from devart.core.messaging.topology import band_key, can_serve
from devart.core.security import generate_key
from devart.domain.events import add_event

#: An agent that has not called the API for this long is shown offline, whatever it last said.
OFFLINE_AFTER = timedelta(seconds=30)
#: An agent's calls move its last-seen time at most this often (its keepalive always does).
SEEN_EVERY = timedelta(seconds=1)


class AgentNotFound(NotFound):
    """No agent of that name is registered."""


class AgentExists(Conflict):
    """An agent of that name is already registered."""


class AnnouncementInvalid(Invalid):
    """An agent's skills or capabilities are past a limit or badly named."""


def _caps(capabilities: list[str]) -> list[str]:
    caps = sorted({c.strip() for c in capabilities if c.strip()})
    if len(caps) > MAX_AGENT_CAPABILITIES:
        raise AnnouncementInvalid(f"{len(caps)} capabilities; an agent may have at most {MAX_AGENT_CAPABILITIES}")
    return caps


def check_skills(skills: list[str]) -> list[str]:
    """The skills an agent announces, deduplicated and sorted; ``AnnouncementInvalid`` naming the first problem.

    Announced skills become names pipelines may use (``api.services.catalog.known_skills``) and are listed in
    validation messages, so their number and shape are bounded like any other name devart stores.
    """
    if problem := skills_problem(skills):
        raise AnnouncementInvalid(problem)
    return sorted(set(skills))


async def get(session: AsyncSession, name: str) -> Agent:
    agent = (await session.exec(select(Agent).where(Agent.name == name))).first()
    if agent is None:
        raise AgentNotFound(f"agent '{name}' not found")
    return agent


async def create(session: AsyncSession, name: str, capabilities: list[str], owner: str = "admin") -> str:
    """Register a new agent and return its key (the only time it is ever visible)."""
    if (await session.exec(select(Agent).where(Agent.name == name))).first() is not None:
        raise AgentExists(f"agent '{name}' already exists; rotate its key instead (rotate-key)")
    key, prefix, digest = generate_key()
    caps = _caps(capabilities)
    agent = Agent(name=name, capabilities=caps, key_prefix=prefix, key_hash=digest, owner=owner)
    try:
        async with session.begin_nested():  # a name another organisation's agent has is invisible here, yet taken
            session.add(agent)
    except IntegrityError:
        raise AgentExists(f"agent name '{name}' is taken (agent names are unique across organisations)") from None
    await _new_broker_key(agent, key)
    add_event(session, "agent.created", f"agent {name} created", agent=name, capabilities=caps)
    return key


async def create_or_rotate(session: AsyncSession, name: str, capabilities: list[str], owner: str = "system") -> str:
    """Create the agent, or give an existing one these capabilities and a new key; returns the key."""
    agent = (await session.exec(select(Agent).where(Agent.name == name))).first()
    if agent is None:
        return await create(session, name, capabilities, owner)
    agent.capabilities, agent.active = _caps(capabilities), True
    return await rotate_key(session, name, agent)


async def rotate_key(session: AsyncSession, name: str, agent: Agent | None = None) -> str:
    """Issue a new key; the old one stops working at once."""
    agent = agent or await get(session, name)
    key, prefix, digest = generate_key()
    agent.key_prefix, agent.key_hash = prefix, digest
    session.add(agent)
    await _new_broker_key(agent, key)
    add_event(session, "agent.key_rotated", f"agent {name} got a new key", agent=name)
    return key


async def set_active(session: AsyncSession, name: str, active: bool, *, handback: bool = False) -> Agent:
    """(De)activate. A deactivated agent stops taking tasks within seconds; ``handback`` also returns its task."""
    agent = await get(session, name)
    agent.active = active
    if not active and handback:
        agent.status = "draining"
    session.add(agent)
    kind = "agent.activated" if active else "agent.deactivated"
    add_event(session, kind, f"agent {name} {'activated' if active else 'deactivated'}", agent=name,
              handback=handback)
    return agent


async def remove(session: AsyncSession, name: str) -> None:
    """Delete the agent and its broker user (RabbitMQ closes its connections); nothing is deleted if the broker's
    administration does not answer, so no agent is left gone from devart yet able to consume."""
    agent = await get(session, name)
    if (admin := broker_users.admin()) is not None:
        await admin.remove_agent(name)
    await session.delete(agent)
    add_event(session, "agent.removed", f"agent {name} removed", agent=name)


async def _new_broker_key(agent: Agent, key: str) -> None:
    """Give the agent's broker user (when broker administration is configured) the password of its new key.

    Before the caller commits: if RabbitMQ's management API fails, the key is not issued. The old key's
    connections are closed (``BrokerAdmin.ensure_agent``).
    """
    if (admin := broker_users.admin()) is not None:
        assert agent.org_id is not None  # filled in by PostgreSQL on insert (migration 0009)
        await admin.ensure_agent(agent.name, agent.org_id, key, new_key=True)


async def broker_access(agent: Agent, key: str) -> str | None:
    """The agent's broker user, set again for ``key`` (the one it presented); None when broker administration is
    off. Idempotent: the same key derives the same password, and the agent's open connections stay open."""
    if (admin := broker_users.admin()) is None:
        return None
    assert agent.org_id is not None
    return await admin.ensure_agent(agent.name, agent.org_id, key, new_key=False)


async def list_agents(session: AsyncSession) -> list[Agent]:
    return list((await session.exec(select(Agent).order_by(col(Agent.name)))).all())


async def seen(session: AsyncSession, agent: Agent) -> None:
    """Note that the agent called, at most once per ``SEEN_EVERY``, committed at once.

    Not left for the request's own commit: the request may wait on Temporal while it holds its locks, and an agent
    with many tasks in flight would then queue every call behind the lock on its own row. Nor in a session of its
    own: a request holding one pooled connection while it waits for a second can starve the pool under load.
    """
    now = utcnow()
    if agent.last_seen_at is not None and now - agent.last_seen_at < SEEN_EVERY:
        return
    await session.exec(update(Agent).where(col(Agent.name) == agent.name).values(last_seen_at=now))  # type: ignore[call-overload]
    await session.commit()
    set_committed_value(agent, "last_seen_at", now)  # known to the object without making it dirty again


def effective_status(agent: Agent, last_seen: datetime | None = None) -> str:
    """What the agent is doing now: its reported status, or offline when it has gone silent."""
    seen = last_seen if last_seen is not None else agent.last_seen_at
    if seen is None or utcnow() - seen > OFFLINE_AFTER or agent.status == "offline":
        return "offline"
    return agent.status


async def stats(session: AsyncSession, name: str) -> list[AgentSkillStat]:
    return list((await session.exec(select(AgentSkillStat).where(AgentSkillStat.agent == name))).all())


async def keepalive(session: AsyncSession, agent: Agent, status: str, skills: list[str],
                    previous_seen: datetime | None) -> bool:
    """An agent's liveness call: store its status and announced skills, write its coming online or going offline
    to the feed; returns whether it must hand its tasks back. ``AnnouncementInvalid`` (nothing stored) when the
    skills are past a limit.

    ``set_active(handback=True)`` marks the agent draining; that mark is kept until the agent goes offline.
    """
    announced = check_skills(skills)
    handback = not agent.active and agent.status == "draining"
    was_online = effective_status(agent, previous_seen) != "offline"
    if not handback or status == "offline":
        agent.status = status
    if status == "offline" and was_online:
        add_event(session, "agent.offline", f"agent {agent.name} went offline", agent=agent.name)
    elif status != "offline" and not was_online:
        add_event(session, "agent.online", f"agent {agent.name} is online ({status})", agent=agent.name,
                  capabilities=agent.capabilities)
    agent.skills = announced
    agent.last_seen_at = utcnow()  # the liveness signal itself: always written, not throttled
    session.add(agent)
    await session.commit()
    return handback


async def lanes(session: AsyncSession, agent: Agent) -> list[str]:
    """The band keys of every known lane the agent can serve (its requirements are a subset of its capabilities).

    A lane's default band is its plain name, as before priorities; other bands are ``lane,pN`` (core.topology),
    which an older agent's capability check never matches, so it keeps consuming just the default bands.
    """
    rows = (await session.exec(select(Lane))).all()
    return sorted(band_key(r.name, p) for r in rows if can_serve(agent.capabilities, r.name) for p in r.priorities)
