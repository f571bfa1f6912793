"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.contracts import StageResult, StageState


class RunRequest(BaseModel):
    pipeline: str = Field(min_length=1, description="Name of a built-in or published pipeline.")
    repo: str = Field(min_length=1, description="Absolute local path or git URL of the repository.")
    ref: str | None = Field(default=None, description="Branch, tag or commit (default: the working tree / HEAD).")
    params: dict[str, str] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1, description="Pipeline version (default: the latest).")
    trigger: str = Field(default="api", pattern=r"^[a-z][a-z0-9_-]{0,30}$")


class RunCreated(BaseModel):
    run_id: str
    pipeline: str
    version: int
    status: str
    ui_url: str


class AttemptView(BaseModel):
    attempt: int
    status: str
    agent: str | None
    lane: str
    created_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    error: str | None
    late_reports: int


class StageView(StageState):
    attempt_log: list[AttemptView] = Field(default_factory=list)


class RunView(BaseModel):
    run_id: str
    pipeline: str
    status: str
    repository: str
    ref: str | None
    trigger: str
    params: dict[str, str]
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    stages: list[StageView]
    ui_url: str


class PipelineSummary(BaseModel):
    name: str
    version: int
    description: str
    stages: list[str]
    params: dict[str, str]
    builtin: bool


class ValidationReport(BaseModel):
    valid: bool
    pipeline: str | None = None
    problems: list[str] = Field(default_factory=list)


class ClaimRequest(BaseModel):
    pass


class HeartbeatRequest(BaseModel):
    claim_id: str
    details: dict[str, Any] = Field(default_factory=dict)


class HeartbeatReply(BaseModel):
    cancel_requested: bool


class CompleteRequest(BaseModel):
    claim_id: str
    result: StageResult


class FailRequest(BaseModel):
    claim_id: str
    error_type: str = Field(default="SkillFailed", pattern=r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
    message: str
    non_retryable: bool = False
    result: StageResult | None = None


class CancelledRequest(BaseModel):
    claim_id: str
