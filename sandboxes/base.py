"""The sandbox interface shared by the provisioning activities and the agents.

The pipeline worker provisions and tears down; the agent only execs. Both talk to the same backend through a
``SandboxHandle``, which is plain data, so it can travel inside workflow history and AMQP messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from pydantic import BaseModel, Field

from devart.core import settings
from devart.core.contracts import SandboxHandle, SandboxSpec, Source
from devart.core.errors import SandboxError

#: Output kept from one command; the rest is dropped (and ``truncated`` set) so a chatty build can't fill memory.
DEFAULT_OUTPUT_CAP = 1_000_000


class ExecResult(BaseModel):
    """The outcome of one command run inside a sandbox."""

    exit_code: int
    output: str
    truncated: bool = False
    timed_out: bool = False
    duration: float = 0.0
    cpu_seconds: float = 0.0
    oom_killed: bool = False
    pids_limited: bool = False
    disk_exceeded: bool = False
    limits: str = Field(default="", description="How limits were enforced, e.g. 'cgroup-v1', 'prlimit'.")


OutputCallback = Callable[[str], None]


class Sandbox(Protocol):
    """A sandbox backend. Implementations must be safe to use from several processes at once."""

    backend: str

    async def provision(self, run_id: str, stage: str, source: Source, spec: SandboxSpec) -> SandboxHandle:
        """Create a fresh, isolated workspace holding ``source`` and return its handle."""
        ...

    async def exec(
        self,
        handle: SandboxHandle,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        on_output: OutputCallback | None = None,
        output_cap: int = DEFAULT_OUTPUT_CAP,
    ) -> ExecResult:
        """Run ``command`` in the workspace; kill its whole process tree on timeout or cancellation."""
        ...

    async def store_artifact(self, handle: SandboxHandle, name: str, data: bytes) -> bool:
        """Keep ``data`` as ``name`` for the later stages of ``handle``'s run, whose sandboxes find it under
        ``.devart/artifacts/`` (``sandboxes/artifacts.py``); False when this backend cannot pass files on."""
        ...

    async def teardown(self, handle: SandboxHandle) -> None:
        """Kill anything still running in the sandbox and remove it. Idempotent."""
        ...

    async def list(self) -> list[SandboxHandle]:
        """Every sandbox this backend currently holds (for sweeping)."""
        ...


#: The values of the running task's ``secret:`` references, fetched from the API by the agent that holds its claim
#: (``workers.execution``). A context variable, not an ``exec`` argument: it reaches every backend's command
#: environment without passing through skills (which may log their arguments) or the sandbox interface.
_store_values: ContextVar[Mapping[str, str] | None] = ContextVar("devart_store_secrets", default=None)


@contextmanager
def store_secrets(values: Mapping[str, str]) -> Iterator[None]:
    """Commands run in this block (in this task) get ``values`` for their stage's ``secret:NAME`` references."""
    token = _store_values.set(dict(values))
    try:
        yield
    finally:
        _store_values.reset(token)


def current_store_secrets() -> Mapping[str, str]:
    """The store values ``store_secrets`` gave this task (none outside it)."""
    return _store_values.get() or {}


def store_name(reference: str) -> str | None:
    """The secret a ``secret:NAME`` reference names; None for an ``env:`` reference."""
    return reference.removeprefix("secret:") if reference.startswith("secret:") else None


def store_value(name: str, reference: str, store: Mapping[str, str]) -> str:
    """The value of a ``secret:NAME`` reference among the values the API gave this task's claim holder."""
    secret = reference.removeprefix("secret:")
    if secret not in store:
        raise SandboxError(f"secret {name!r} refers to {secret!r}, which is not in the organisation's secret store "
                           "(`devart secrets set` creates it)", reason="SecretMissing")
    return store[secret]


def secret_variable(name: str, reference: str) -> str:
    """The environment variable a secret reference (``env:VAR``) names, if an operator allow-listed it.

    Checked again where the value is read, not only when the pipeline was validated: a version published before the
    list was narrowed, or a task message not from the API, still reads nothing the operator has not allowed.
    """
    if store_name(reference) is not None:
        raise SandboxError(f"secret {name!r} ({reference!r}) comes from the organisation's secret store, not from "
                           "an environment variable", reason="SecretNotAllowed")
    variable = reference.removeprefix("env:")
    if variable not in settings.secret_sources():
        raise SandboxError(f"secret {name!r} refers to environment variable {variable!r}, which is not allow-listed "
                           "for secrets (DEVART_SECRETS_ALLOWED)", reason="SecretNotAllowed")
    return variable
