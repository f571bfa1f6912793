"""The FastAPI application: lifespan wiring and routers; behaviour lives in the services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from devart.api import errors
from devart.api.audit_trail import AuditTrail
from devart.api.auth import PUBLIC, declared, requires
from devart.api.edge import RequestGuard
from devart.api.routes import (
    agent_tasks,
    agents,
    analytics,
    budgets,
    dlq,
    events,
    github,
    identity,
    knowledge,
    pipelines,
    runs,
    secrets,
)
from devart.core import bounds, settings
from devart.core.database import db
from devart.core.telemetry import tracing as telemetry
from devart.core.temporal import connect
from devart.domain import costs
from devart.domain.identity import Role

#: The error answers each router gives beside the app-wide 400, 413 and 422 (api/errors.py has their bodies).
#: Every router but the webhook's needs a token (401) and a role (403).
ROUTER_ERRORS = {
    runs: (401, 403, 404, 409, 503),
    pipelines: (401, 403, 404),
    agents: (401, 403, 404, 409),
    agent_tasks: (401, 403, 404, 409, 503),
    dlq: (401, 403, 404, 503),
    events: (401, 403),
    budgets: (401, 403, 404),
    analytics: (401, 403),
    github: (401, 403, 404, 503),  # the webhook's 400 is app-wide; 401 also for an unsigned delivery
    identity: (401, 403, 404, 409),
    secrets: (401, 403, 404, 409, 422, 503),
    knowledge: (401, 403, 404, 422, 503),
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    costs.prices()  # an operator's price table no report could be costed with stops the start, with the reason
    telemetry.setup(app.state.service)
    # Migrating is `devart db upgrade`'s job, done once before the services start; the API only checks.
    await asyncio.to_thread(db.require_current_schema)
    app.state.temporal = await connect()
    yield
    await db.engine().dispose()
    telemetry.shutdown()


Routers = list[tuple[APIRouter, tuple[int, ...]]]
#: Every router the API serves, with the errors it answers beside the app-wide ones.
ROUTERS: Routers = [(module.router, codes) for module, codes in ROUTER_ERRORS.items()] + [
    (secrets.agent_router, ROUTER_ERRORS[secrets])]
#: The routes agents call: the agents' API serves these alone.
AGENT_ROUTERS: Routers = [(agent_tasks.router, ROUTER_ERRORS[agent_tasks]),
                          (secrets.agent_router, ROUTER_ERRORS[secrets])]


def agents_app() -> FastAPI:
    """The agents' API (``devart api --agents-only``): the agent routes alone, with health and metrics.

    Agents call it in a process of its own, so under load a claim or a report waits only behind other agents' calls,
    never behind the run starts, reads and streams of the main API; and a key taken from an agent reaches no other
    route there. It keeps nothing of its own (the database and Temporal hold everything), like any API replica.
    """
    return create_app(service="devart-agent-api", routers=AGENT_ROUTERS, docs=False)


def create_app(service: str = "devart-api", routers: Routers = ROUTERS, docs: bool = True) -> FastAPI:
    """The API serving ``routers``, its traces named ``service``."""
    # /docs and /redoc with Swagger UI's and ReDoc's files served by the API itself (from the fastapi-offline
    # wheel, under /static-offline-docs) rather than from a CDN, so the docs work on a machine with no internet.
    make: Callable[..., FastAPI] = (
        FastAPIOffline if docs else partial(FastAPI, docs_url=None, redoc_url=None, openapi_url=None))
    app = make(title="devart", version="0.1.0", lifespan=lifespan, responses=errors.responses(400, 413, 422),
               description="Durable multi-stage pipelines run by teams of agents.")
    app.state.service = service  # the name its traces carry (lifespan)
    errors.install(app)
    app.add_middleware(AuditTrail)  # inside the guard: what the guard refuses never reached a route
    app.add_middleware(RequestGuard, default_limit=bounds.MAX_BODY_BYTES,
                       limits={"/v1/github/webhook": bounds.MAX_WEBHOOK_BYTES})
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics")
    for router, codes in routers:
        app.include_router(router, responses=errors.responses(*codes))

    metrics_access = [] if settings.api().metrics_public else [Depends(requires(Role.VIEWER))]

    @app.get("/metrics", tags=["health"], include_in_schema=False, dependencies=metrics_access)
    async def metrics() -> Response:
        """Prometheus exposition of the API process's metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"], **declared(PUBLIC))
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_app()
