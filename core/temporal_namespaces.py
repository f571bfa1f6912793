"""Organisations in their own Temporal namespaces: a client per namespace over one connection.

An organisation mapped to a namespace (``organisations.temporal_namespace``) has its runs' workflows, histories and
activity task tokens there, so no query in another namespace can reach them; an unmapped one shares the deployment's
namespace (``TEMPORAL_NAMESPACE``) and is told apart by the ``DevartOrg`` search attribute. The mapping is set when
the organisation is made and never changes, so a process may keep what it has read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from sqlmodel import select
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from devart.core import settings
from devart.core.database import db, tenancy
from devart.core.database.models_identity import Organisation
from devart.core.errors import ServiceUnavailable
from devart.core.temporal import ORG, SEARCH_ATTRIBUTES

#: Reads every organisation's namespace (None: the deployment's).
NamespaceLoader = Callable[[], Awaitable[dict[str, str | None]]]

#: How long a namespace just registered may take to be usable (the frontend's namespace cache refreshes).
READY_SECONDS = 30.0
RETENTION = timedelta(days=7)


class Namespaces:
    """The deployment's client, a client per namespace sharing its connection, and which organisation is where."""

    def __init__(self, client: Client, load: NamespaceLoader | None = None) -> None:
        self.default = client
        self._load = load or _from_database
        self._clients: dict[str, Client] = {client.namespace: client}
        self._orgs: dict[str, str | None] = {}
        self._lock = asyncio.Lock()

    def client(self, namespace: str | None) -> Client:
        """The client of ``namespace`` (None: the deployment's)."""
        name = namespace or self.default.namespace
        found = self._clients.get(name)
        if found is None:
            config = self.default.config()
            config["namespace"] = name
            found = self._clients[name] = Client(**config)
        return found

    async def namespace_of(self, org: str) -> str:
        """The namespace of ``org``'s runs, read again when the organisation is new to this process."""
        if org not in self._orgs:
            await self.refresh()
        return self._orgs.get(org) or self.default.namespace

    async def for_org(self, org: str) -> Client:
        return self.client(await self.namespace_of(org))

    async def refresh(self) -> set[str]:
        """Read the mapping again; the namespaces in use (the deployment's included)."""
        async with self._lock:
            self._orgs = await self._load()
        return {ns or self.default.namespace for ns in self._orgs.values()} | {self.default.namespace}


async def _from_database() -> dict[str, str | None]:
    async with db.session() as s, tenancy.as_system(s):  # across organisations
        rows = (await s.exec(select(Organisation.id, Organisation.temporal_namespace))).all()
    return dict(rows)


async def ensure(client: Client, namespace: str) -> None:
    """Make ``namespace`` usable for devart's runs: registered (when devart may register namespaces) with devart's
    search attributes, and answering. Raises ``ServiceUnavailable`` naming what is missing."""
    service = client.workflow_service
    try:
        await service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise ServiceUnavailable(f"Temporal could not describe namespace {namespace!r}: {exc.message}") from exc
        if not settings.temporal().register_namespaces:
            raise ServiceUnavailable(f"Temporal has no namespace {namespace!r}: create it (TEMPORAL_REGISTER_"
                                     "NAMESPACES is off)") from exc
        try:
            await service.register_namespace(RegisterNamespaceRequest(
                namespace=namespace, description="a devart organisation's runs",
                workflow_execution_retention_period=_duration(RETENTION)))
        except RPCError as again:
            if again.status != RPCStatusCode.ALREADY_EXISTS:
                raise ServiceUnavailable(f"Temporal refused namespace {namespace!r}: {again.message}") from again
    await _search_attributes(client, namespace)


def _duration(delta: timedelta) -> Duration:
    out = Duration()
    out.FromTimedelta(delta)
    return out


async def _search_attributes(client: Client, namespace: str) -> None:
    """Add devart's keyword search attributes to ``namespace`` (SQL visibility keeps them per namespace), waiting
    until the namespace answers."""
    wanted = {key.name for key in (*SEARCH_ATTRIBUTES, ORG)}
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            listed = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=namespace))
            missing = wanted - set(listed.custom_attributes)
            if missing:
                await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
                    namespace=namespace,
                    search_attributes={name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in missing}))
            return
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.UNAVAILABLE) or time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"Temporal namespace {namespace!r} is not usable: {exc.message}") from exc
        await asyncio.sleep(0.2)  # the frontend has not seen the new namespace yet: poll until the deadline
