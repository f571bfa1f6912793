"""FastAPI dependencies: database session, Temporal client, and the calling agent (people: ``api.auth``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from devart.core.database import db, tenancy
from devart.core.database.models import Agent
from devart.core.database.tenancy import SYSTEM, Tenant
from devart.core.orgs import DEFAULT_ORG
from devart.core.security import key_prefix, verify
from devart.core.temporal_namespaces import Namespaces
from devart.domain import agents

_bearer = HTTPBearer(auto_error=False, description="The agent's API key")


async def _session() -> AsyncIterator[AsyncSession]:
    async with db.session() as s:
        yield s


def _temporal(request: Request) -> Namespaces:
    """The API's Temporal clients, one per namespace over the app's one connection (made on first use)."""
    found: Namespaces | None = getattr(request.app.state, "namespaces", None)
    if found is None:
        found = request.app.state.namespaces = Namespaces(request.app.state.temporal)
    return found


async def client_for(temporal: Namespaces, session: AsyncSession) -> Client:
    """The client of the namespace of the organisation the session acts for (the caller's, the agent's)."""
    return await temporal.for_org(tenancy.org_of(session) or DEFAULT_ORG)


#: Ends with the route function, before the answer is sent: a write is committed (or its error answered) before the
#: client can act on the answer, and a long answer (the live feed) holds no pooled connection.
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
TemporalDep = Annotated[Namespaces, Depends(_temporal)]


async def _identified_agent(
    request: Request,
    session: SessionDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Agent:
    """The agent the key belongs to, active or not; 401 for a missing, malformed or unknown key.

    The key's prefix finds the row and the hash is compared in constant time; an unknown prefix is compared
    against a dummy hash, so timing does not tell a wrong key from an unknown one.
    """
    key = creds.credentials if creds else ""
    await tenancy.switch(session, SYSTEM)  # a key is looked up before its organisation is known
    prefix = key_prefix(key)
    agent = None
    if prefix is not None:
        agent = (await session.exec(select(Agent).where(Agent.key_prefix == prefix))).first()
    if not verify(key, agent.key_hash if agent else None) or agent is None:
        raise HTTPException(401, "unknown or malformed agent key", headers={"WWW-Authenticate": "Bearer"})
    assert agent.org_id is not None
    await tenancy.adopt(session, Tenant(org=agent.org_id, role="agent", user=agent.name))
    request.state.previous_seen = agent.last_seen_at
    await agents.seen(session, agent)
    return agent


IdentifiedAgent = Annotated[Agent, Depends(_identified_agent)]


async def _presented_key(
    agent: IdentifiedAgent, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The key the identified agent presented: its broker password derives from it. Never stored nor logged."""
    return creds.credentials if creds else ""


PresentedKey = Annotated[str, Depends(_presented_key)]


async def _current_agent(agent: IdentifiedAgent) -> Agent:
    """An active agent; 403 for a deactivated one (it may still finish the task it holds, see the task routes)."""
    if not agent.active:
        raise HTTPException(403, f"agent {agent.name} is deactivated")
    return agent


CurrentAgent = Annotated[Agent, Depends(_current_agent)]


def _previous_seen(request: Request, agent: IdentifiedAgent) -> datetime | None:
    """When the calling agent was seen before this request (None the first time)."""
    return getattr(request.state, "previous_seen", None)


PreviousSeen = Annotated[datetime | None, Depends(_previous_seen)]
