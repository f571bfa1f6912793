"""The organisation's secret store: administrators write and list names; only a task's claim holder reads values.

No route answers a value to a person: ``GET /v1/secrets`` lists names and times. The agent route answers the values
a claimed task's stage names (``secret:NAME``), to the agent holding that claim and no one else, so a value reaches
the sandbox without passing through Temporal's history or the task messages. Every write is audited by the audit
trail middleware; the request body (the value) is not recorded there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from devart.api.auth import AGENT, Caller, access, declared
from devart.api.deps import IdentifiedAgent, SessionDep
from devart.core.contracts import AgentTaskInput
from devart.core.errors import Invalid
from devart.domain import secrets
from devart.domain.claims import check_claim
from devart.domain.identity import Role
from devart.sandboxes.base import store_name

router = APIRouter(prefix="/v1", tags=["secrets (admin)"])
#: The agents' route, apart: the agents' API serves it and no other route of this module.
agent_router = APIRouter(prefix="/v1", tags=["agents"])

SecretName = Annotated[str, Path(pattern=secrets.NAME_PATTERN, description="Like an environment variable's name.")]


class SecretPut(BaseModel):
    """A secret's new value; it is stored encrypted and never shown again."""

    value: str = Field(max_length=secrets.MAX_VALUE_BYTES, description="At most 64 KiB.")


class SecretView(BaseModel):
    """A secret as the API shows it: never its value."""

    name: str
    created_at: datetime
    updated_at: datetime
    updated_by: str


class TaskSecrets(BaseModel):
    """The values of a claimed task's ``secret:`` references, and the names its organisation lacks."""

    values: dict[str, str] = Field(description="Store secret name -> value.")
    missing: list[str] = Field(default_factory=list, description="Names the stage references that do not exist.")


def _view(info: secrets.SecretInfo) -> SecretView:
    return SecretView(name=info.name, created_at=info.created_at, updated_at=info.updated_at,
                      updated_by=info.updated_by)


@router.get("/secrets", response_model=list[SecretView], **access(Role.ADMIN))
async def list_secrets(session: SessionDep) -> list[SecretView]:
    """The organisation's secrets: names and when they were written, never values."""
    return [_view(info) for info in await secrets.names(session)]


@router.put("/secrets/{name}", response_model=SecretView, **access(Role.ADMIN))
async def put_secret(name: SecretName, body: SecretPut, caller: Caller, session: SessionDep) -> SecretView:
    """Create or replace a secret; a stage uses it as ``secrets: {VAR: secret:NAME}``. 422 for a value past
    64 KiB (in UTF-8) or a name that is not a variable's; 503 when the store has no key (``DEVART_SECRETS_KEY``)."""
    if len(body.value.encode()) > secrets.MAX_VALUE_BYTES:
        raise Invalid(f"value: {len(body.value.encode())} bytes; a secret holds at most {secrets.MAX_VALUE_BYTES}")
    info = await secrets.put(session, name, body.value, by=caller.user)
    await session.commit()
    return _view(info)


@router.delete("/secrets/{name}", status_code=204, **access(Role.ADMIN))
async def delete_secret(name: SecretName, session: SessionDep) -> None:
    """Delete a secret; stages naming it fail with ``SecretMissing`` from then on."""
    await secrets.remove(session, name)
    await session.commit()


@agent_router.get("/agent/tasks/{task_id}/secrets", response_model=TaskSecrets, **declared(AGENT))
async def task_secrets(task_id: str, agent: IdentifiedAgent, session: SessionDep,
                       claim_id: Annotated[str, Query(max_length=64)]) -> TaskSecrets:
    """The values of the task's ``secret:`` references, for the agent holding its current claim only (403 for
    another agent's task or claim, 404 for an unknown task, 409 for an attempt no longer running)."""
    row = await check_claim(session, task_id, agent, claim_id)
    spec = AgentTaskInput.model_validate(row.input).sandbox.spec
    wanted = {name for ref in spec.secrets.values() if (name := store_name(ref)) is not None}
    values, missing = await secrets.resolve(session, wanted)
    await session.commit()  # releases the attempt's row lock
    return TaskSecrets(values=values, missing=missing)
