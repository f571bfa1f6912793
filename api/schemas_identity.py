"""Request and response bodies of the identity routes: organisations, members, tokens and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from devart.api.schemas import Location, Name
from devart.domain.identity import MAX_TOKEN_DAYS, Role


class OrgCreate(BaseModel):
    id: Annotated[Name, Field(max_length=40)] = Field(description="A slug: lower-case letters, digits and '-'.")
    name: Name | None = None
    temporal_namespace: Annotated[Name, Field(max_length=64)] | None = Field(
        default=None, description="Run its workflows in this Temporal namespace of their own (hard isolation of "
                                  "histories); unset: the deployment's namespace. Set once, here.")


class OrgView(BaseModel):
    id: str
    name: str
    role: Role = Field(description="The caller's role in it.")
    temporal_namespace: str | None = Field(default=None, description="Its own Temporal namespace, if any.")


class Me(BaseModel):
    user: str
    org: str = Field(description="The organisation of the token used.")
    role: Role
    orgs: list[OrgView]


class SourcesPolicy(BaseModel):
    """Where the organisation's runs may take their sources from, within what the operator allows."""

    roots: list[Location] = Field(
        default_factory=list, max_length=32,
        description="Absolute folders (within DEVART_SOURCE_LOCAL_ROOTS) its runs' local sources must lie in; "
                    "empty: the operator's folders.")
    hosts: list[Annotated[Name, Field(max_length=253)]] = Field(
        default_factory=list, max_length=64,
        description="Host names its runs' remote sources must come from; empty: any public host.")


class MemberCreate(BaseModel):
    name: Annotated[Name, Field(max_length=64)]
    role: Role
    token_days: int | None = Field(default=90, ge=1, le=MAX_TOKEN_DAYS,
                                   description="Lifetime of the first token in days; null for no expiry.")


class RoleChange(BaseModel):
    role: Role


class MemberView(BaseModel):
    name: str
    role: Role
    created_at: datetime


class MemberCreated(MemberView):
    org: str
    token: str = Field(description="The member's first personal token: shown here once, never again.")


class TokenCreate(BaseModel):
    name: Annotated[Name, Field(min_length=1, max_length=100)] = "cli"
    org: Annotated[Name, Field(max_length=40)] | None = Field(
        default=None, description="An organisation the caller belongs to (default: the one of the token used): how a "
                                  "member of several gets a token for each.")
    days: int | None = Field(default=90, ge=1, le=MAX_TOKEN_DAYS, description="Lifetime in days; null: none.")


class TokenView(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="The first characters of the token, to tell it apart.")
    user: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    active: bool


class TokenCreated(TokenView):
    token: str = Field(description="The token: shown here once, never again.")


class AuditView(BaseModel):
    id: int
    at: datetime
    user: str
    role: str
    method: str
    route: str
    path: str
    status: int
