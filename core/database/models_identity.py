"""Identity tables: organisations, users, their role in each organisation, personal tokens, and the audit trail.

Written by migration 0008; these classes are the typed view the code uses.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, String
from sqlmodel import Field, SQLModel

from devart.core.database.models import _created, _ts


class Organisation(SQLModel, table=True):
    """A tenant: its runs, pipelines, agents and everything they produce are its own."""

    __tablename__ = "organisations"
    id: str = Field(primary_key=True, description="A short slug, e.g. `default` or `platform-team`.")
    name: str
    source_roots: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"),
                                    description="Folders its runs' local sources may come from (within the "
                                                "operator's); empty: the operator's.")
    source_hosts: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"),
                                    description="Hosts its runs' remote sources may come from; empty: any public one.")
    temporal_namespace: str | None = Field(default=None, sa_column=Column(String, nullable=True, unique=True),
                                           description="Its own Temporal namespace; None: the deployment's.")
    created_at: datetime = _created()


class User(SQLModel, table=True):
    """A person (or a robot account) who calls the API with personal tokens."""

    __tablename__ = "users"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    name: str = Field(unique=True)
    created_at: datetime = _created()


class Membership(SQLModel, table=True):
    """A user's role in one organisation: admin, supervisor or viewer."""

    __tablename__ = "memberships"
    user_id: int = Field(sa_column=Column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True))
    org_id: str = Field(sa_column=Column(String, ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True,
                                         index=True))
    role: str
    created_at: datetime = _created()


class ApiToken(SQLModel, table=True):
    """A personal token for one organisation; only its SHA-256 and a display prefix are kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("api_tokens_user", "user_id", "org_id"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    user_id: int = Field(sa_column=Column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"), nullable=False))
    org_id: str = Field(sa_column=Column(String, ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False))
    name: str
    prefix: str
    token_hash: str = Field(unique=True)
    created_at: datetime = _created()
    expires_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)
    last_used_at: datetime | None = _ts(nullable=True)


class AuditEntry(SQLModel, table=True):
    """One write through the API: who, with which role, what (method, route, path), the answer, and when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("audit_log_org_at", "org_id", "at"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    org_id: str = Field(sa_column=Column(String, ForeignKey("organisations.id"), nullable=False))
    user_name: str
    role: str
    method: str
    route: str
    path: str
    status: int
    at: datetime = _created()
