"""Database tables: what PostgreSQL keeps that Temporal does not (agents, runs, attempts, events, templates).

Schema changes go through Alembic migrations in ``migrations/``; these classes are the source they are written
from and the typed view the code uses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kw))


def _created() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


def _org() -> Any:
    """The row's organisation: left unset, PostgreSQL fills it in (the transaction's, or the run's; migration 0009)
    and the insert reads it back."""
    return Field(default=None, sa_column=Column(String, ForeignKey("organisations.id"), FetchedValue(), nullable=False,
                                                index=True))


class Agent(SQLModel, table=True):
    """A registered agent. Its API key is stored only as a SHA-256 hash plus a short public prefix for lookup."""

    __tablename__ = "agents"
    id: int | None = Field(default=None, primary_key=True)
    org_id: str | None = _org()
    name: str = Field(index=True, unique=True)
    capabilities: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    key_prefix: str = Field(index=True, unique=True)
    key_hash: str
    active: bool = True
    owner: str = "system"
    status: str = Field(default="offline", description="idle|busy|draining|offline (offline also when silent).")
    current_task: str | None = None
    skills: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"))
    created_at: datetime = _created()
    last_seen_at: datetime | None = _ts(nullable=True)


class Run(SQLModel, table=True):
    """One pipeline run; ``id`` is also the Temporal workflow id."""

    __tablename__ = "runs"
    __table_args__ = (Index("runs_org_created", "org_id", "created_at"),)
    id: str = Field(primary_key=True)
    org_id: str | None = _org()
    pipeline: str = Field(index=True)
    pipeline_version: int = 1
    repository: str
    ref: str | None = None
    trigger: str = "api"
    params: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    priority: int = Field(default=3, sa_column=Column(Integer, nullable=False, server_default="3"),
                          description="1 (lowest) to 5 (highest): the order of its tasks within a lane.")
    status: str = Field(default="running", index=True)
    error: str | None = None
    stages: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _created()
    finished_at: datetime | None = _ts(nullable=True)


class TaskAttempt(SQLModel, table=True):
    """One attempt of a stage's agent task: the fence that lets only the current claim holder report."""

    __tablename__ = "task_attempts"
    __table_args__ = (UniqueConstraint("run_id", "stage", "attempt"),)
    id: str = Field(primary_key=True)
    org_id: str | None = _org()
    run_id: str = Field(index=True)
    stage: str
    attempt: int
    lane: str
    skill: str
    task_token: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    heartbeat_timeout: float = 30.0
    wait_timeout: float = 600.0
    waiting_reason: str | None = None
    input: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="queued",
                        description="queued|claimed|reporting|succeeded|failed|superseded|cancelled")
    #: While ``reporting``: the state the recorded report ends the attempt in once Temporal took it.
    reported: str | None = None
    claimed_by: str | None = None
    claim_id: str | None = None
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str | None = None
    late_reports: int = 0
    cost_micros: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    created_at: datetime = _created()
    claimed_at: datetime | None = _ts(nullable=True)
    heartbeat_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)


class Event(SQLModel, table=True):
    """An entry of the activity feed."""

    __tablename__ = "events"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    org_id: str | None = _org()
    kind: str = Field(index=True)
    run_id: str | None = Field(default=None, index=True)
    stage: str | None = None
    agent: str | None = None
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _created()


class PipelineVersion(SQLModel, table=True):
    """A published version of a pipeline template (built-in templates are version 1 unless published over)."""

    __tablename__ = "pipeline_versions"
    name: str = Field(primary_key=True)
    org_id: str | None = _org()
    version: int = Field(primary_key=True)
    definition: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _created()


class Lane(SQLModel, table=True):
    """A capability lane that has been used; agents read this list at start to know what to consume."""

    __tablename__ = "lanes"
    name: str = Field(primary_key=True)
    org_id: str | None = _org()
    requires: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    priorities: list[int] = Field(
        default_factory=lambda: [3], sa_column=Column(JSON, nullable=False, server_default="[3]"),
        description="Priority bands used so far, each its own queue (core.topology); 3 is the original queue.",
    )
    created_at: datetime = _created()


class AgentSkillStat(SQLModel, table=True):
    """Per agent and skill: how many tasks, how many succeeded, how long they took, what they cost."""

    __tablename__ = "agent_skill_stats"
    agent: str = Field(primary_key=True)
    org_id: str | None = _org()
    skill: str = Field(primary_key=True)
    tasks: int = 0
    successes: int = 0
    total_seconds: float = 0.0
    cost: float = 0.0


class DeadLetter(SQLModel, table=True):
    """A task message RabbitMQ dead-lettered (unreadable, wrong schema, over the delivery limit)."""

    __tablename__ = "dead_letters"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    org_id: str | None = _org()
    lane: str | None = None
    reason: str
    message_id: str | None = None
    headers: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    body: str
    created_at: datetime = _created()
    redriven_at: datetime | None = _ts(nullable=True)


# --- GitHub integration (issue 6): repository mapping, deliveries, per-run PR context, check runs, reviews ---


class GitHubRepository(SQLModel, table=True):
    """Which pipeline a repository's pull requests run; ``full_name`` is ``owner/repo`` in lower case."""

    __tablename__ = "github_repositories"
    full_name: str = Field(primary_key=True)
    org_id: str | None = _org()
    pipeline: str
    clone_url: str | None = Field(default=None, description="Clone from here instead of the PR head's clone URL.")
    created_at: datetime = _created()
    updated_at: datetime = _created()


class GitHubDelivery(SQLModel, table=True):
    """A webhook delivery already handled: GitHub's redeliveries carry the same ``X-GitHub-Delivery`` id."""

    __tablename__ = "github_deliveries"
    id: str = Field(primary_key=True)
    event: str
    received_at: datetime = _created()
    run_id: str | None = None


class GitHubRun(SQLModel, table=True):
    """The pull request a GitHub-triggered run works on, recorded before its workflow starts."""

    __tablename__ = "github_runs"
    run_id: str = Field(primary_key=True)
    org_id: str | None = _org()
    repo: str = Field(index=True, description="owner/repo in lower case.")
    pr: int
    head_sha: str
    base_sha: str | None = None
    installation_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    origin_run_id: str | None = Field(default=None, description="The run a single-stage re-run was derived from.")
    trace_id: str | None = None
    created_at: datetime = _created()


class GitHubCheck(SQLModel, table=True):
    """One stage's check run; several runs' rows share a ``check_run_id`` when a re-run takes the check over."""

    __tablename__ = "github_checks"
    run_id: str = Field(primary_key=True)
    org_id: str | None = _org()
    stage: str = Field(primary_key=True)
    check_run_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True, index=True))
    repo: str
    pr: int
    head_sha: str
    skill: str
    max_attempts: int = 1
    non_retryable: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str | None = Field(default=None, description="Last reported: queued|in_progress|completed|superseded.")
    conclusion: str | None = None
    updated_at: datetime = _created()


class GitHubReview(SQLModel, table=True):
    """The pull-request review devart posted for one head commit; re-runs update or replace it."""

    __tablename__ = "github_reviews"
    repo: str = Field(primary_key=True)
    org_id: str | None = _org()
    pr: int = Field(primary_key=True)
    head_sha: str = Field(primary_key=True)
    review_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    run_id: str
    fingerprint: str = Field(description="Hash of the line comments: same comments update, others replace.")
    updated_at: datetime = _created()


class Budget(SQLModel, table=True):
    """A spending limit for a pipeline or a repository (all runs, in micro-units of the price table)."""

    __tablename__ = "budgets"
    scope: str = Field(primary_key=True, description="pipeline or repository")
    org_id: str | None = _org()
    name: str = Field(primary_key=True)
    soft_micros: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    hard_micros: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    updated_at: datetime = _created()


# The identity tables (organisations, which every org_id above references, users, tokens, the audit trail).
from devart.core.database import models_identity as models_identity  # noqa: E402
from devart.core.database import models_knowledge as models_knowledge  # noqa: E402
from devart.core.database import models_secrets as models_secrets  # noqa: E402
