"""Who may do what: organisations, users with a role in each, and their personal API tokens.

A request's principal is the user a token belongs to, in the token's organisation, with the role the user holds
there *now*: a role changed or a membership removed takes effect on the next request, and a token outlives
neither its expiry nor its revocation. Roles are ordered (viewer < supervisor < admin); a route declares the least
role it needs (``api.auth``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.database import tenancy
from devart.core.database.models import utcnow
from devart.core.database.models_identity import ApiToken, Membership, Organisation, User
from devart.core.database.tenancy import DEFAULT_ORG as DEFAULT_ORG
from devart.core.errors import Conflict, Invalid, NotFound
from devart.core.security import generate_token, hash_key

#: The first administrator, made by ``devart up`` (and ``devart db upgrade`` given ``DEVART_ADMIN_TOKEN``).
FIRST_ADMIN = "admin"
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$")
#: A token's last use is written at most this often: a write per read would double the cost of every GET.
LAST_USED_EVERY = timedelta(minutes=1)
MAX_TOKEN_DAYS = 3650


class Role(StrEnum):
    """What a member of an organisation may do; each role may do all that the ones below it may."""

    VIEWER = "viewer"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a user, in one organisation, with their role there."""

    user_id: int
    user: str
    org: str
    role: Role
    token_id: int


async def authenticate(session: AsyncSession, token: str) -> Principal | None:
    """The principal a token stands for, or None when it is unknown, expired, revoked or its user left the org."""
    if not token or len(token) > 200:
        return None
    row = (await session.exec(
        select(ApiToken, User, Membership)
        .join(User, col(User.id) == col(ApiToken.user_id))
        .join(Membership, (col(Membership.user_id) == col(ApiToken.user_id))
              & (col(Membership.org_id) == col(ApiToken.org_id)))
        .where(ApiToken.token_hash == hash_key(token))
    )).first()
    if row is None:
        return None
    stored, user, membership = row
    now = utcnow()
    if stored.revoked_at is not None or (stored.expires_at is not None and stored.expires_at <= now):
        return None
    if stored.last_used_at is None or now - stored.last_used_at > LAST_USED_EVERY:
        stored.last_used_at = now
        session.add(stored)
    assert user.id is not None and stored.id is not None
    return Principal(user.id, user.name, stored.org_id, Role(membership.role), stored.id)


# --- organisations ---------------------------------------------------------------------------------------------


async def create_org(session: AsyncSession, creator: Principal, org_id: str, name: str | None,
                     namespace: str | None = None) -> Organisation:
    """A new organisation; its creator is its first admin (and may then add its members). ``namespace``: its own
    Temporal namespace (already made usable by the caller, ``core.temporal_namespaces.ensure``)."""
    if not SLUG.match(org_id):
        raise Invalid(f"organisation id {org_id!r}: use 1-40 lower-case letters, digits and '-', starting with one "
                      "of the first two")
    async with tenancy.as_system(session):  # another organisation's rows
        if await session.get(Organisation, org_id) is not None:
            raise Conflict(f"organisation {org_id} already exists")
        if namespace is not None and (await session.exec(
                select(Organisation.id).where(Organisation.temporal_namespace == namespace))).first() is not None:
            raise Conflict(f"Temporal namespace {namespace} is another organisation's")
        org = Organisation(id=org_id, name=name or org_id, temporal_namespace=namespace)
        session.add(org)
        await session.flush()
        session.add(Membership(user_id=creator.user_id, org_id=org_id, role=Role.ADMIN.value))
        await session.flush()
    return org


def check_namespace(namespace: str) -> None:
    """A Temporal namespace name devart accepts: what Temporal accepts, in the plainest form."""
    if not NAMESPACE.match(namespace):
        raise Invalid(f"Temporal namespace {namespace!r}: use 2-64 letters, digits, '.', '_' and '-', starting with "
                      "a letter or digit")


async def set_sources(session: AsyncSession, org: str, roots: list[str], hosts: list[str]) -> None:
    """Record the organisation's source policy (organisations are written only as the system role: the route has
    checked the caller is this organisation's admin)."""
    async with tenancy.as_system(session):
        row = await session.get(Organisation, org)
        if row is None:
            raise NotFound(f"no organisation {org}")
        row.source_roots, row.source_hosts = roots, hosts
        session.add(row)
        await session.flush()


async def orgs_of(session: AsyncSession, user_id: int) -> list[tuple[Organisation, Role]]:
    """Every organisation the user belongs to, with their role in each (read across organisations)."""
    async with tenancy.as_system(session):
        rows = (await session.exec(
            select(Organisation, Membership.role).join(Membership, col(Membership.org_id) == col(Organisation.id))
            .where(Membership.user_id == user_id).order_by(col(Organisation.id))
        )).all()
    return [(org, Role(role)) for org, role in rows]


# --- members ---------------------------------------------------------------------------------------------------


async def members(session: AsyncSession, org: str) -> list[tuple[User, Role]]:
    rows = await session.exec(
        select(User, Membership.role).join(Membership, col(Membership.user_id) == col(User.id))
        .where(Membership.org_id == org).order_by(col(User.name))
    )
    return [(user, Role(role)) for user, role in rows.all()]


async def add_member(
    session: AsyncSession, org: str, name: str, role: Role, token_days: int | None = 90
) -> tuple[User, str]:
    """Make ``name`` a member of ``org`` (creating the user if new) and issue a first token, returned once."""
    if not USER_NAME.match(name):
        raise Invalid(f"user name {name!r}: use 1-64 letters, digits and '._@-', starting with a letter or digit")
    user = (await session.exec(select(User).where(User.name == name))).first()
    if user is None:
        user = User(name=name)
        session.add(user)
        await session.flush()
    assert user.id is not None
    if await session.get(Membership, (user.id, org)) is not None:
        raise Conflict(f"{name} is already a member of {org}: change their role instead")
    session.add(Membership(user_id=user.id, org_id=org, role=role.value))
    await session.flush()
    _, token = await issue_token(session, user.id, org, "first token", token_days)
    return user, token


async def _membership(session: AsyncSession, org: str, name: str) -> tuple[User, Membership]:
    row = (await session.exec(
        select(User, Membership).join(Membership, col(Membership.user_id) == col(User.id))
        .where(User.name == name, Membership.org_id == org)
    )).first()
    if row is None:
        raise NotFound(f"no user {name} in organisation {org}")
    return row


async def _keep_an_admin(session: AsyncSession, org: str, leaving: Membership) -> None:
    if leaving.role != Role.ADMIN.value:
        return
    admins = (await session.exec(
        select(func.count()).select_from(Membership).where(Membership.org_id == org, Membership.role == "admin")
    )).one()
    if admins <= 1:
        raise Conflict(f"{org} would have no admin left: make another member admin first")


async def set_role(session: AsyncSession, org: str, name: str, role: Role) -> User:
    user, membership = await _membership(session, org, name)
    if role != Role.ADMIN:
        await _keep_an_admin(session, org, membership)
    membership.role = role.value
    session.add(membership)
    await session.flush()
    return user


async def remove_member(session: AsyncSession, org: str, name: str) -> None:
    """Remove the user from the organisation; every token they hold for it stops working at once."""
    user, membership = await _membership(session, org, name)
    await _keep_an_admin(session, org, membership)
    await session.delete(membership)
    for token in (await session.exec(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.org_id == org, col(ApiToken.revoked_at).is_(None))
    )).all():
        token.revoked_at = utcnow()
        session.add(token)
    await session.flush()


# --- tokens ----------------------------------------------------------------------------------------------------


async def issue_token(
    session: AsyncSession, user_id: int, org: str, name: str, days: int | None
) -> tuple[ApiToken, str]:
    """A new personal token for the user in ``org``; the token itself is returned here and never again."""
    if days is not None and not 1 <= days <= MAX_TOKEN_DAYS:
        raise Invalid(f"a token's lifetime must be from 1 to {MAX_TOKEN_DAYS} days (or none), got {days}")
    token, prefix, digest = generate_token()
    expires = utcnow() + timedelta(days=days) if days is not None else None
    stored = ApiToken(user_id=user_id, org_id=org, name=name, prefix=prefix, token_hash=digest, expires_at=expires)
    async with tenancy.as_system(session):  # a member may hold a token for each of their organisations
        session.add(stored)
        await session.flush()
    return stored, token


async def tokens(session: AsyncSession, org: str, user_id: int | None) -> list[tuple[ApiToken, str]]:
    """The organisation's tokens with their user's name, or only one user's."""
    query = (select(ApiToken, User.name).join(User, col(User.id) == col(ApiToken.user_id))
             .where(ApiToken.org_id == org).order_by(col(ApiToken.id)))
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return [(t, n) for t, n in (await session.exec(query)).all()]


async def revoke_token(session: AsyncSession, caller: Principal, token_id: int) -> ApiToken:
    """Revoke one of the caller's tokens, or, for an admin, any token of the organisation.

    A token the caller may not revoke is answered as missing, so ids tell nothing about other users' tokens.
    """
    stored = await session.get(ApiToken, token_id)
    if stored is None or stored.org_id != caller.org or (
        stored.user_id != caller.user_id and not caller.role.allows(Role.ADMIN)
    ):
        raise NotFound(f"no token {token_id} of yours in organisation {caller.org}")
    if stored.revoked_at is None:
        stored.revoked_at = utcnow()
        session.add(stored)
        await session.flush()
    return stored


def expired(stored: ApiToken, now: datetime | None = None) -> bool:
    return stored.expires_at is not None and stored.expires_at <= (now or utcnow())
