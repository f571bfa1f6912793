"""FastAPI dependencies: database session, Temporal client, and the calling agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from core import db
from core.models import Agent, utcnow
from core.security import key_prefix, verify

_bearer = HTTPBearer(auto_error=False, description="The agent's API key")


async def _session() -> AsyncIterator[AsyncSession]:
    async with db.session() as s:
        yield s


def _temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


SessionDep = Annotated[AsyncSession, Depends(_session)]
TemporalDep = Annotated[Client, Depends(_temporal)]


async def _current_agent(
    session: SessionDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Agent:
    """401 for a missing, malformed or unknown key; 403 for a deactivated agent. Timing does not tell which."""
    key = creds.credentials if creds else ""
    prefix = key_prefix(key)
    agent = None
    if prefix is not None:
        agent = (await session.exec(select(Agent).where(Agent.key_prefix == prefix))).first()
    if not verify(key, agent.key_hash if agent else None) or agent is None:
        raise HTTPException(401, "unknown or malformed agent key", headers={"WWW-Authenticate": "Bearer"})
    if not agent.active:
        raise HTTPException(403, f"agent {agent.name} is deactivated")
    agent.last_seen_at = utcnow()
    session.add(agent)
    return agent


CurrentAgent = Annotated[Agent, Depends(_current_agent)]
