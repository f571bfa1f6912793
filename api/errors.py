"""Map domain errors to HTTP responses at the edge; nothing below the routes knows about HTTP.

Every error answer is ``{"detail": ...}``; the OpenAPI document declares, per router, each status it can give with
that body (``responses``), so a client generated from it handles all of them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from devart.core.bounds import MAX_DEPTH
from devart.core.errors import (
    Conflict,
    DevartError,
    Forbidden,
    Invalid,
    InvalidPipeline,
    Malformed,
    NotFound,
    TooLarge,
    TooMany,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """What every refusal answers: the problem, said so that the caller knows what to change."""

    detail: str


class FieldError(BaseModel):
    """One invalid field of a request, as FastAPI reports it (the offending input is not echoed back)."""

    loc: list[str | int] = Field(description="Where: body, query, path or header, then the field's path.")
    msg: str
    type: str


class InvalidBody(BaseModel):
    """A 422: either the fields that failed validation, or a pipeline's or run's problems, each named."""

    detail: str | list[FieldError]
    problems: list[str] = Field(default_factory=list, description="Every problem of an invalid pipeline or run.")


_WHY = {
    400: "The request is malformed: a NUL byte in the URL, a body that is not JSON, a webhook without its headers.",
    401: "The bearer token (a personal token or an agent key) is missing, wrong, expired or revoked, or the webhook "
         "signature is missing or wrong.",
    403: "The caller's role is too low for the route (the message names the role needed), or the agent is "
         "deactivated or may not take this task.",
    404: "The pipeline, run, agent, task, budget, dead letter or repository mapping does not exist.",
    409: "The request conflicts with the current state (a finished run, an existing agent, a task already taken).",
    413: "The request body is past the route's size limit (the README's Input limits).",
    422: "A field or the pipeline is invalid, or past a limit; every problem is named.",
    503: "A backing service (Temporal, RabbitMQ) is unavailable, or the GitHub webhook is not configured.",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error answers a router gives, each with its body."""
    return {code: {"model": InvalidBody if code == 422 else ErrorBody, "description": _WHY[code]} for code in codes}


#: The one place an error's kind becomes an HTTP status; the most specific kind in the error's class tree wins.
STATUS: dict[type[DevartError], int] = {
    Malformed: 400, Unauthenticated: 401, Forbidden: 403, NotFound: 404, Conflict: 409, TooLarge: 413, Invalid: 422,
    TooMany: 429, Unavailable: 503,
}


def status_of(exc: DevartError) -> int:
    """The HTTP status of a domain error: its kind's, or 500 for an error of no kind (a defect, logged)."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error_response(exc: DevartError) -> JSONResponse:
    """``{"detail": …}`` with the kind's status; an invalid pipeline also lists its problems, a cap says when to
    come back."""
    status = status_of(exc)
    if status == 500:
        log.error("a domain error of no kind reached the API: %r", exc)
    body: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, InvalidPipeline):
        body["problems"] = exc.problems
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooMany) and exc.retry_after else None
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _fields(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The offending input is not echoed: it may be a megabyte, or nested deeper than JSON encoding goes.
        fields = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Any:
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # FastAPI's body parsing gives up on JSON nested about a thousand levels deep.
            detail = f"the JSON body is nested too deeply to read; devart accepts at most {MAX_DEPTH} levels"
            return JSONResponse({"detail": detail}, status_code=400)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            return JSONResponse({"detail": f"the body is not UTF-8 text: {exc.__cause__}"}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        # PostgreSQL refused a value (out of range, not text): the request carried it past the schema's checks.
        log.warning("PostgreSQL refused a value of the request: %s", exc.orig)
        detail = f"a value of the request cannot be stored or compared: {str(exc.orig).splitlines()[0]}"
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(PoolTimeout)
    async def _pool(_: Request, exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection stayed busy for the pool's timeout: back-pressure, which the caller retries.
        log.warning("no free PostgreSQL connection within the pool's timeout: %s", exc)
        return JSONResponse({"detail": "the API is at capacity (no free database connection); try again shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(DBAPIError)
    async def _dropped(request: Request, exc: DBAPIError) -> Any:
        if not exc.connection_invalidated:
            raise exc
        # PostgreSQL dropped the connection (a restart): the pool replaced it, and the same call will work again.
        log.warning("a PostgreSQL connection was lost mid-request: %s", str(exc.orig).splitlines()[0])
        return JSONResponse({"detail": "the database connection was lost; try again"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(DevartError)
    async def _domain(_: Request, exc: DevartError) -> JSONResponse:
        return error_response(exc)
