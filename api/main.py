"""The FastAPI application: lifespan wiring and routers; behaviour lives in the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import errors
from api.routes import agent_tasks, agents, analytics, budgets, dlq, events, github, pipelines, runs
from core import db, telemetry
from core.temporal import connect


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    telemetry.setup("devart-api")
    db.upgrade()
    app.state.temporal = await connect()
    yield
    await db.engine().dispose()
    telemetry.shutdown()


def create_app() -> FastAPI:
    app = FastAPI(
        title="devart",
        version="0.1.0",
        lifespan=lifespan,
        description="Durable multi-stage pipelines run by teams of agents.",
    )
    errors.install(app)
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics")
    for module in (runs, pipelines, agents, agent_tasks, dlq, events, budgets, analytics, github):
        app.include_router(module.router)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus exposition of the API process's metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_app()
