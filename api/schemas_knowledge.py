"""Request and response bodies of the knowledge base's routes: entries, written ones, searches, re-embeds."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from devart.api.schemas import FreeJson, Name, Text
from devart.core.database.models_knowledge import KnowledgeEntry
from devart.core.embeddings import MAX_TEXTS
from devart.domain.knowledge.hints import Record, Source

#: A remedy's name: a named action the agents know (e.g. more_memory, longer_timeout, ruff_fix).
REMEDY_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
RemedyName = Annotated[str, Field(pattern=REMEDY_PATTERN, description="e.g. more_memory")]
ShortName = Annotated[Name, Field(max_length=128)]


class ContextIn(BaseModel):
    """Where the failure happens: shown with the entry, not searched on."""

    model_config = ConfigDict(extra="forbid")

    language: ShortName | None = None
    tools: dict[ShortName, ShortName] = Field(default_factory=dict, max_length=32,
                                              description="Tool name -> version, e.g. {pytest: 8.3.2}.")
    pipeline: ShortName | None = None
    stage: ShortName | None = None


class EntryCreate(BaseModel):
    """A supervisor's entry: a failure of their own kind, and a remedy and/or guidance for it."""

    skill: ShortName = Field(min_length=1, description="The skill that fails so, e.g. test.")
    error_type: ShortName = Field(min_length=1, description="e.g. OutOfMemory, TestFailed, BuildBackendMissing.")
    message: Text = Field(min_length=1, description="The failure's message (paths, numbers, hashes are stripped).")
    log_tail: Text = Field(default="", description="The end of the failing command's log, if it says more.")
    remedy: RemedyName | None = None
    parameters: FreeJson = Field(default_factory=dict, description="The remedy's parameters.")
    guidance: Text | None = Field(default=None, description="What to do, for a person or an agent's model.")
    context: ContextIn = Field(default_factory=ContextIn)

    @model_validator(mode="after")
    def _something_to_do(self) -> EntryCreate:
        if self.remedy is None and not (self.guidance or "").strip():
            raise ValueError("an entry needs a remedy, guidance or both: say what to do about the failure")
        if self.parameters and self.remedy is None:
            raise ValueError("parameters belong to a remedy: name the remedy they are for")
        return self


class EntryView(BaseModel):
    """An entry as the API shows it: its signature (normalised), context, remedy, origin and record."""

    id: int
    skill: str
    error_type: str
    message: str
    log_tail: str
    digest: str
    context: dict[str, Any]
    remedy: str | None
    parameters: dict[str, Any]
    guidance: str | None
    source: Source
    run_id: str | None
    attempt: int | None
    author: str | None
    seen: int = Field(description="Times this failure (with this remedy) was recorded or learned.")
    record: Record
    success_rate: float = Field(description="(succeeded + 1) / (applied + 2): what ranks it among similar hints.")
    model: str = Field(description="The embedding model of its vector.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, entry: KnowledgeEntry) -> EntryView:
        record = Record(suggested=entry.suggested, applied=entry.applied, succeeded=entry.succeeded)
        assert entry.id is not None
        return cls(id=entry.id, skill=entry.skill, error_type=entry.error_type, message=entry.message,
                   log_tail=entry.log_tail, digest=entry.digest, context=entry.context, remedy=entry.remedy,
                   parameters=entry.parameters, guidance=entry.guidance,
                   source="written" if entry.source == "written" else "learned", run_id=entry.run_id,
                   attempt=entry.attempt, author=entry.author, seen=entry.seen, record=record,
                   success_rate=record.rate, model=entry.model, created_at=entry.created_at,
                   updated_at=entry.updated_at)


class ReembedRequest(BaseModel):
    """One step of a re-embed: at most ``limit`` entries moved to the configured model, ``batch`` per call to it."""

    batch: int = Field(default=64, ge=1, le=MAX_TEXTS, description="Entries embedded per call to the model.")
    limit: int = Field(default=1000, ge=1, le=100_000,
                       description="Entries moved by this request; call again while `remaining` is not 0.")


class ReembedView(BaseModel):
    model: str
    dimension: int
    moved: int = Field(description="Entries moved to the model by this request.")
    remaining: int = Field(description="Entries of the organisation still under another model.")
    index: str | None = Field(description="The model's HNSW index, once every entry has moved.")
