"""The devart error tree: each error says what was wrong and what to do about it."""

from __future__ import annotations


class DevartError(Exception):
    """Base of every error devart raises on purpose."""


class InvalidPipeline(DevartError):
    """A pipeline definition is malformed: the message names each problem."""

    def __init__(self, pipeline: str, problems: list[str]) -> None:
        self.pipeline = pipeline
        self.problems = problems
        super().__init__(f"pipeline '{pipeline}': " + "; ".join(problems))


class PipelineNotFound(DevartError):
    """No pipeline of that name (or version) is known."""


class RunNotFound(DevartError):
    """No run with that id exists."""


class ServiceUnavailable(DevartError):
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
