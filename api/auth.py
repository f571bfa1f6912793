"""Who is calling, and whether their role allows the route: every route declares the least role it needs.

A route's access is one of the roles of ``domain.identity.Role`` (a personal token of a member holding at least
that role in the token's organisation), ``agent`` (an agent's key, ``api.deps``), ``github`` (the webhook's HMAC
signature) or ``public`` (health, metrics). ``access(role)`` gives a route both its check and the ``x-devart-role``
entry of its OpenAPI operation, so the declared role and the enforced one cannot drift apart, and a test reads every
route's role from the OpenAPI document (a route without one fails it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from devart.api.deps import SessionDep
from devart.core.database import tenancy
from devart.core.database.tenancy import SYSTEM, Tenant
from devart.domain import identity
from devart.domain.identity import Principal, Role

#: The OpenAPI extension naming the role a route needs.
ROLE_KEY = "x-devart-role"
#: Non-user access kinds a route may declare instead of a role.
AGENT, GITHUB, PUBLIC = "agent", "github", "public"

_bearer = HTTPBearer(auto_error=False, description="A personal API token (`devart tokens create`)")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def _caller(
    request: Request, session: SessionDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The principal of the request's token; 401 for a missing, wrong, expired or revoked one. From here on the
    request's transactions act for the principal's organisation and role (``core.database.tenancy``)."""
    await tenancy.switch(session, SYSTEM)  # a token is looked up before its organisation is known
    principal = await identity.authenticate(session, creds.credentials if creds else "")
    if principal is None:
        detail = ("a valid personal token is needed (Authorization: Bearer <token>); this one is missing, unknown, "
                  "expired or revoked" if creds else "this route needs a personal token: Authorization: Bearer <token>")
        raise HTTPException(401, detail, headers=_CHALLENGE)
    request.state.principal = principal  # for the audit trail (api.audit_trail)
    await tenancy.adopt(session, Tenant(org=principal.org, role=principal.role.value, user=principal.user))
    return principal


#: The caller, for routes that act on their behalf; declare the route's role with ``access`` as well.
Caller = Annotated[Principal, Depends(_caller)]


def requires(role: Role) -> Callable[..., Awaitable[Principal]]:
    async def check(principal: Caller) -> Principal:
        if not principal.role.allows(role):
            raise HTTPException(403, f"this needs the {role} role in organisation {principal.org}; "
                                     f"{principal.user} is a {principal.role} there")
        return principal

    return check


def access(role: Role) -> dict[str, Any]:
    """Route keyword arguments that enforce ``role`` and declare it in the OpenAPI document."""
    return {"dependencies": [Depends(requires(role))], "openapi_extra": {ROLE_KEY: role.value}}


def declared(kind: str) -> dict[str, Any]:
    """Route keyword arguments declaring a non-user access kind (agent, github, public); its check is the route's."""
    return {"openapi_extra": {ROLE_KEY: kind}}
