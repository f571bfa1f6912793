"""Organisations, their members and roles, personal tokens, and the audit trail of writes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlmodel import col, select

from devart.api.auth import Caller, access
from devart.api.deps import SessionDep, TemporalDep
from devart.api.schemas_identity import (
    AuditView,
    Me,
    MemberCreate,
    MemberCreated,
    MemberView,
    OrgCreate,
    OrgView,
    RoleChange,
    SourcesPolicy,
    TokenCreate,
    TokenCreated,
    TokenView,
)
from devart.core.database.models_identity import ApiToken, AuditEntry, Organisation
from devart.core.errors import NotFound
from devart.core.temporal_namespaces import ensure
from devart.domain import identity
from devart.domain.identity import Role
from devart.domain.runs import source_policy
from devart.domain.sources import SourcePolicy, check_policy

router = APIRouter(prefix="/v1", tags=["identity"])


def _token_view(token: ApiToken, user: str) -> TokenView:
    assert token.id is not None
    return TokenView(id=token.id, name=token.name, prefix=token.prefix, user=user, created_at=token.created_at,
                     expires_at=token.expires_at, revoked_at=token.revoked_at, last_used_at=token.last_used_at,
                     active=token.revoked_at is None and not identity.expired(token))


def _org_view(org: Organisation, role: Role) -> OrgView:
    return OrgView(id=org.id, name=org.name, role=role, temporal_namespace=org.temporal_namespace)


@router.get("/me", response_model=Me, **access(Role.VIEWER))
async def me(caller: Caller, session: SessionDep) -> Me:
    """The caller, the organisation and role of the token used, and every organisation they belong to."""
    orgs = [_org_view(o, r) for o, r in await identity.orgs_of(session, caller.user_id)]
    return Me(user=caller.user, org=caller.org, role=caller.role, orgs=orgs)


@router.get("/orgs", response_model=list[OrgView], **access(Role.VIEWER))
async def list_orgs(caller: Caller, session: SessionDep) -> list[OrgView]:
    return [_org_view(o, r) for o, r in await identity.orgs_of(session, caller.user_id)]


@router.post("/orgs", status_code=201, response_model=OrgView, **access(Role.ADMIN))
async def create_org(req: OrgCreate, caller: Caller, session: SessionDep, temporal: TemporalDep) -> OrgView:
    """A new organisation, with the caller as its first admin (409 if the id or the namespace is taken). With a
    ``temporal_namespace``, its runs' workflows live there: the namespace is registered (or must exist) first."""
    namespace = req.temporal_namespace
    if namespace == temporal.default.namespace:
        namespace = None  # the deployment's own: nothing to isolate
    if namespace is not None:
        identity.check_namespace(namespace)
        await ensure(temporal.default, namespace)
    org = await identity.create_org(session, caller, req.id, req.name, namespace)
    return _org_view(org, Role.ADMIN)


@router.get("/orgs/current/sources", response_model=SourcesPolicy, **access(Role.VIEWER))
async def get_sources(caller: Caller, session: SessionDep) -> SourcesPolicy:
    """Where this organisation's runs may take their sources from."""
    policy = await source_policy(session)
    return SourcesPolicy(roots=list(policy.roots), hosts=list(policy.hosts))


@router.put("/orgs/current/sources", response_model=SourcesPolicy, **access(Role.ADMIN))
async def put_sources(req: SourcesPolicy, caller: Caller, session: SessionDep) -> SourcesPolicy:
    """Narrow where this organisation's runs may take their sources from (422 for a folder outside the operator's)."""
    policy = check_policy(SourcePolicy(tuple(req.roots), tuple(req.hosts)))
    await identity.set_sources(session, caller.org, list(policy.roots), list(policy.hosts))
    return SourcesPolicy(roots=list(policy.roots), hosts=list(policy.hosts))


@router.get("/users", response_model=list[MemberView], **access(Role.ADMIN))
async def list_members(caller: Caller, session: SessionDep) -> list[MemberView]:
    return [MemberView(name=u.name, role=r, created_at=u.created_at)
            for u, r in await identity.members(session, caller.org)]


@router.post("/users", status_code=201, response_model=MemberCreated, **access(Role.ADMIN))
async def add_member(req: MemberCreate, caller: Caller, session: SessionDep) -> MemberCreated:
    """Add a member (a new user, or one of another organisation) with a first token, shown once."""
    user, token = await identity.add_member(session, caller.org, req.name, req.role, req.token_days)
    return MemberCreated(name=user.name, role=req.role, created_at=user.created_at, org=caller.org, token=token)


@router.put("/users/{name}", response_model=MemberView, **access(Role.ADMIN))
async def change_role(name: str, req: RoleChange, caller: Caller, session: SessionDep) -> MemberView:
    """Change a member's role; it applies to their next request (409 would it leave no admin)."""
    user = await identity.set_role(session, caller.org, name, req.role)
    return MemberView(name=user.name, role=req.role, created_at=user.created_at)


@router.delete("/users/{name}", status_code=204, **access(Role.ADMIN))
async def remove_member(name: str, caller: Caller, session: SessionDep) -> None:
    """Remove a member; their tokens for this organisation stop working at once."""
    await identity.remove_member(session, caller.org, name)


@router.get("/tokens", response_model=list[TokenView], **access(Role.VIEWER))
async def list_tokens(
    caller: Caller, session: SessionDep,
    everyone: Annotated[bool, Query(alias="all", description="Every member's tokens (admin only).")] = False,
) -> list[TokenView]:
    if everyone and not caller.role.allows(Role.ADMIN):
        raise HTTPException(403, f"listing every member's tokens needs the admin role in {caller.org}")
    rows = await identity.tokens(session, caller.org, None if everyone else caller.user_id)
    return [_token_view(t, user) for t, user in rows]


@router.post("/tokens", status_code=201, response_model=TokenCreated, **access(Role.VIEWER))
async def create_token(req: TokenCreate, caller: Caller, session: SessionDep) -> TokenCreated:
    """A new personal token of the caller, in this organisation or another they belong to; shown once."""
    org = req.org or caller.org
    if org != caller.org and not any(o.id == org for o, _ in await identity.orgs_of(session, caller.user_id)):
        raise NotFound(f"{caller.user} is not a member of an organisation {org}")
    stored, token = await identity.issue_token(session, caller.user_id, org, req.name, req.days)
    return TokenCreated(**_token_view(stored, caller.user).model_dump(), token=token)


@router.delete("/tokens/{token_id}", status_code=204, **access(Role.VIEWER))
async def revoke_token(token_id: int, caller: Caller, session: SessionDep) -> None:
    """Revoke one of your tokens (an admin: any of the organisation's); it is refused from the next request."""
    await identity.revoke_token(session, caller, token_id)


@router.get("/audit", response_model=list[AuditView], **access(Role.ADMIN))
async def audit(
    caller: Caller, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    user: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Entries older than this id.")] = None,
) -> list[AuditView]:
    """The organisation's writes, newest first."""
    query = select(AuditEntry).where(AuditEntry.org_id == caller.org)
    if user is not None:
        query = query.where(AuditEntry.user_name == user)
    if before is not None:
        query = query.where(col(AuditEntry.id) < before)
    rows = (await session.exec(query.order_by(col(AuditEntry.id).desc()).limit(limit))).all()
    return [AuditView(id=e.id or 0, at=e.at, user=e.user_name, role=e.role, method=e.method, route=e.route,
                      path=e.path, status=e.status) for e in rows]
