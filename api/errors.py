"""Map domain errors to HTTP responses at the edge; nothing below the routes knows about HTTP."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.services.dlq import DeadLetterNotFound
from api.services.runs import RunConflict
from api.services.tasks import TaskNotFound, TaskRefused
from core.agents import AgentExists, AgentNotFound
from core.budgets import BudgetNotFound
from core.errors import InvalidPipeline, PipelineNotFound, RunNotFound, ServiceUnavailable
from core.github import MappingNotFound, WebhookDisabled, WebhookInvalid, WebhookSignatureInvalid


def install(app: FastAPI) -> None:
    @app.exception_handler(InvalidPipeline)
    async def _invalid(_: Request, exc: InvalidPipeline) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "problems": exc.problems}, status_code=422)

    @app.exception_handler(PipelineNotFound)
    @app.exception_handler(RunNotFound)
    @app.exception_handler(TaskNotFound)
    @app.exception_handler(AgentNotFound)
    @app.exception_handler(BudgetNotFound)
    @app.exception_handler(DeadLetterNotFound)
    @app.exception_handler(MappingNotFound)
    async def _missing(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RunConflict)
    @app.exception_handler(AgentExists)
    async def _conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(TaskRefused)
    async def _refused(_: Request, exc: TaskRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    # GitHub webhook (issue 6): a delivery that is not signed with our secret starts nothing
    @app.exception_handler(WebhookSignatureInvalid)
    async def _unsigned(_: Request, exc: WebhookSignatureInvalid) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=401)

    @app.exception_handler(WebhookInvalid)
    async def _malformed(_: Request, exc: WebhookInvalid) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(WebhookDisabled)
    async def _webhook_off(_: Request, exc: WebhookDisabled) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)
