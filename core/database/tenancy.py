"""Which organisation, user and role a transaction acts for: what PostgreSQL's row-level security reads.

Every transaction begins by setting ``devart.org_id``, ``devart.role`` and ``devart.user`` with
``set_config(…, true)``: bound parameters, scoped to the transaction, so a pooled connection never carries one
request's organisation into the next. The policies (migration 0009) show a transaction only its organisation's rows,
refuse a viewer's writes, and show a transaction that named nothing nothing at all.

Where the tenant comes from, most specific first: the session's own (``switch``, what the API does once it knows
the caller), the task's (``acting_as``), then the process's (``serve_all``: the pipeline worker, which acts for
every organisation's runs as the ``system`` role). The API process has no default: a route that forgot to say whom
it acts for sees nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.orgs import DEFAULT_ORG as DEFAULT_ORG


@dataclass(frozen=True)
class Tenant:
    """An organisation (empty: none in particular, for the system role), a role and who acts."""

    org: str
    role: str
    user: str = ""


#: devart's own services acting across organisations: they see every row; a row they insert names its organisation
#: (explicitly, or through its run).
SYSTEM = Tenant(org="", role="system", user="devart")
#: The role of ``service_in``: devart's services confined to one organisation.
SERVICE_ROLE = "service"

_task: ContextVar[Tenant | None] = ContextVar("devart_tenant", default=None)
_process: Tenant | None = None
_SET = text("SELECT set_config('devart.org_id', :org, true), set_config('devart.role', :role, true), "
            "set_config('devart.user', :user, true)")


def system_in(org: str) -> Tenant:
    """The system role, inserting rows of ``org`` by default."""
    return Tenant(org=org, role="system", user="devart")


def service_in(org: str) -> Tenant:
    """devart's own services acting *within* ``org`` only: its rows and no other's, like an organisation's member
    (the role is neither ``system`` nor ``viewer``, so the tenant policy applies and writes are allowed). For a step
    that must see one organisation's rows alone, such as its budgets and spending."""
    return Tenant(org=org, role=SERVICE_ROLE, user="devart")


def serve_all(org: str = "") -> None:
    """Make every transaction of this process act as the system role unless told otherwise: the pipeline worker,
    and tools that set the stack up (inserting rows of ``org``)."""
    global _process
    _process = system_in(org) if org else SYSTEM


@contextmanager
def acting_as(tenant: Tenant) -> Iterator[None]:
    """Sessions opened in this block (in this task) act for ``tenant``."""
    token = _task.set(tenant)
    try:
        yield
    finally:
        _task.reset(token)


def _params(tenant: Tenant) -> dict[str, str]:
    return {"org": tenant.org, "role": tenant.role, "user": tenant.user}


def _current(session: AsyncSession | Session) -> Tenant | None:
    """Whom the session acts for: its own tenant, else the task's, else the process's."""
    tenant: Tenant | None = session.info.get("tenant")
    return tenant or _task.get() or _process


def org_of(session: AsyncSession) -> str:
    """The organisation the session acts for ('' for the system role acting for none)."""
    tenant = _current(session)
    return tenant.org if tenant is not None else ""


async def switch(session: AsyncSession, tenant: Tenant) -> None:
    """Act for ``tenant`` in this session from now on, its open transaction included."""
    session.info["tenant"] = tenant
    if session.in_transaction():
        await session.execute(_SET, _params(tenant))


@asynccontextmanager
async def as_system(session: AsyncSession) -> AsyncIterator[None]:
    """Act as devart's own services for a step that crosses organisations (making one, listing a user's), then
    for whom the session acted for before."""
    before = _current(session)
    await switch(session, SYSTEM)
    try:
        yield
    finally:
        if before is not None:
            await switch(session, before)
        else:
            session.info.pop("tenant", None)


async def adopt(session: AsyncSession, tenant: Tenant) -> None:
    """Act for ``tenant`` in this session and in every session this task opens from now on: what the API does once
    it knows the caller (each request runs in a task of its own, so nothing carries over to the next request)."""
    _task.set(tenant)
    await switch(session, tenant)


@event.listens_for(Session, "after_begin")
def _begin(session: Session, transaction: Any, connection: Any) -> None:
    tenant = _current(session)
    if tenant is not None:
        connection.execute(_SET, _params(tenant))
