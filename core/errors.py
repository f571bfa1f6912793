"""The devart error tree: each error says what was wrong and what to do about it.

Every error devart raises on purpose is a ``DevartError`` of one *kind* below (not found, conflict, forbidden,
invalid, …). Code below the routes raises the most specific error it knows and never an HTTP status: the API maps
the kind to its answer in one place (``api/errors.py``), the CLI to an error line and a non-zero exit.
"""

from __future__ import annotations


class DevartError(Exception):
    """Base of every error devart raises on purpose."""


class NotFound(DevartError):
    """What the request names does not exist (a run, a pipeline, an agent, a task, a budget…)."""


class Conflict(DevartError):
    """The request contradicts the current state: a finished run, a name taken, a task already settled."""


class Forbidden(DevartError):
    """The caller is known but may not do this (a deactivated agent, another agent's task)."""


class Unauthenticated(DevartError):
    """The caller could not be identified: a missing or wrong key, token or signature."""


class Invalid(DevartError):
    """A value is malformed or past a limit; the message names each problem."""


class Malformed(DevartError):
    """The request cannot be read at all (not JSON, not UTF-8, missing required headers)."""


class TooLarge(DevartError):
    """A payload is past its size limit; the message names the limit."""


class TooMany(DevartError):
    """A rate or concurrency cap was reached; ``retry_after`` says when trying again makes sense."""

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DevartError):
    """A backing service or feature cannot serve now; the message says how to bring it back."""


class InvalidPipeline(Invalid):
    """A pipeline definition is malformed: the message names each problem."""

    def __init__(self, pipeline: str, problems: list[str]) -> None:
        self.pipeline = pipeline
        self.problems = problems
        super().__init__(f"pipeline '{pipeline}': " + "; ".join(problems))


class PipelineNotFound(NotFound):
    """No pipeline of that name (or version) is known."""


class RunNotFound(NotFound):
    """No run with that id exists."""


class ServiceUnavailable(Unavailable):
    """A backing service (Temporal, PostgreSQL, RabbitMQ) cannot be reached; the message says how to start it."""


class SandboxError(DevartError):
    """A sandbox could not be provisioned, used or torn down; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False, reason: str = "SandboxError") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason


class SandboxUnavailable(SandboxError):
    """The configured sandbox backend cannot run on this machine (e.g. bubblewrap is missing)."""


class SkillError(DevartError):
    """A skill failed; ``error_type`` and ``non_retryable`` flow into Temporal's retry decision."""

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "SkillFailed",
        non_retryable: bool = False,
        output: dict | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.non_retryable = non_retryable
        self.output = output or {}
        self.log_tail = log_tail
