"""The agent registry: create agents and issue their keys (the full key is returned once, never stored)."""

from __future__ import annotations

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.events import add_event
from core.models import Agent
from core.security import generate_key


async def create_or_rotate(session: AsyncSession, name: str, capabilities: list[str], owner: str = "system") -> str:
    """Create the agent (or give an existing one new capabilities and a new key) and return the key."""
    key, prefix, digest = generate_key()
    caps = sorted({c.strip() for c in capabilities if c.strip()})
    agent = (await session.exec(select(Agent).where(Agent.name == name))).first()
    if agent is None:
        session.add(Agent(name=name, capabilities=caps, key_prefix=prefix, key_hash=digest, owner=owner))
        add_event(session, "agent.created", f"agent {name} created", agent=name, capabilities=caps)
    else:
        agent.capabilities, agent.key_prefix, agent.key_hash, agent.active = caps, prefix, digest, True
        session.add(agent)
        add_event(session, "agent.key_rotated", f"agent {name} got a new key", agent=name, capabilities=caps)
    return key
