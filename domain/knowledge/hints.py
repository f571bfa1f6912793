"""What the knowledge base hands out and takes in: a failure's context, an entry's record, and the hints a retry
gets. Pydantic models, so that they travel in a Temporal activity's input and output as they are (the learning
loop's activities pass them to the workflow and on to the agent), and the API shows them as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Where an entry came from: learned from a run's attempt, or written by a supervisor.
Source = Literal["learned", "written"]


class FailureContext(BaseModel):
    """Where a failure happened. Kept with the entry to tell a reader when its remedy applies; not embedded (two
    projects' identical failures are the same failure). Other keys are kept as given."""

    model_config = ConfigDict(extra="allow")

    language: str | None = Field(default=None, description="e.g. python")
    tools: dict[str, str] = Field(default_factory=dict, description="Tool name -> version, e.g. {pytest: 8.3.2}.")
    pipeline: str | None = None
    stage: str | None = None


class Record(BaseModel):
    """How an entry's remedy did: times it was suggested to an attempt, applied, and followed by a success."""

    suggested: int = 0
    applied: int = 0
    succeeded: int = Field(default=0, description="Applied, and the attempt then succeeded (never > applied).")

    @property
    def rate(self) -> float:
        """The success rate, Laplace-smoothed: (succeeded + 1) / (applied + 2). An untried remedy rates 0.5; one
        success lifts it to 0.67, one failure drops it to 0.33, and a long record outweighs the prior."""
        return (self.succeeded + 1) / (self.applied + 2)


class Hint(BaseModel):
    """One entry found for a failure: what to do about it, how close the failure is, how well the remedy did."""

    entry_id: int
    remedy: str | None = Field(description="A named action (e.g. more_memory); None: guidance only.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    guidance: str | None = None
    similarity: float = Field(description="Cosine similarity of the two signatures' embeddings; 1.0 when exact.")
    exact: bool = Field(description="The same normalised signature (its digest), not merely a similar one.")
    score: float = Field(description="similarity × record.rate: the order hints are given in (exact ones first).")
    record: Record
    source: Source
    skill: str
    error_type: str
    message: str = Field(description="The entry's normalised failure message.")


def score(similarity: float, record: Record) -> float:
    """A hint's rank: how close its failure is times how often its remedy worked. A very similar failure whose
    remedy kept failing ranks below a fairly similar one whose remedy works (0.9 × 1/7 < 0.8 × 5/7)."""
    return similarity * record.rate
