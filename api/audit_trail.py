"""The audit trail: every write through the API is recorded with who made it, their role, what and the answer.

A pure ASGI middleware. For a request that is not a read, once the route has identified its caller (``api.auth``
puts the principal on the request's state) the entry is written when the response starts, before the client sees
it: an answered write always has its entry. Refused writes (403, 404, 422…) are recorded too; a request whose
token was refused has no caller to record (401s are counted in the API's metrics and logs instead). Agents' reports
and GitHub's deliveries are recorded in the run's events, not here.
"""

from __future__ import annotations

import logging

from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devart.core.database import db, tenancy
from devart.core.database.models_identity import AuditEntry
from devart.core.database.tenancy import Tenant
from devart.domain.identity import Principal

log = logging.getLogger(__name__)
READS = frozenset({"GET", "HEAD", "OPTIONS"})


class AuditTrail:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return

        async def audited_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                principal = scope.get("state", {}).get("principal")
                if isinstance(principal, Principal):
                    await _record(scope, principal, int(message["status"]))
            await send(message)

        await self.app(scope, receive, audited_send)


async def _record(scope: Scope, principal: Principal, status: int) -> None:
    route = scope.get("route")
    with tenancy.acting_as(Tenant(org=principal.org, role=principal.role.value, user=principal.user)):
        await _insert(scope, principal, status, route)


async def _insert(scope: Scope, principal: Principal, status: int, route: object) -> None:
    """The entry, written before the answer goes out: the request's work is done by then, so under load it waits
    for a connection (``db.patiently``) rather than turn a done request into an error."""
    fields = {"org_id": principal.org, "user_name": principal.user, "role": principal.role.value,
              "method": scope["method"], "route": str(getattr(route, "path", None) or scope["path"]),
              "path": scope["path"], "status": status}

    async def write(s: AsyncSession) -> None:
        s.add(AuditEntry(**fields))  # a fresh object for each try

    await db.patiently(write)
