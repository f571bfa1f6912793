"""Pipeline routes: list, validate, publish a new version."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query

from devart.api.auth import access
from devart.api.deps import SessionDep
from devart.api.schemas import PipelineSummary, ValidationReport
from devart.core.bounds import INT4_MAX, MAX_NAME_CHARS
from devart.core.contracts import PipelineDefinition
from devart.core.errors import InvalidPipeline
from devart.domain import catalog
from devart.domain.identity import Role

PipelineBody = Annotated[dict[str, Any], Body(description="A pipeline definition (the YAML template as JSON).")]
PipelineName = Annotated[str, Path(max_length=MAX_NAME_CHARS)]

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


def _summary(d: PipelineDefinition, builtin: bool) -> PipelineSummary:
    return PipelineSummary(
        name=d.name,
        version=d.version,
        description=d.description,
        stages=[s.name for s in d.stages],
        params=d.params,
        builtin=builtin,
    )


@router.get("", response_model=list[PipelineSummary], **access(Role.VIEWER))
async def list_pipelines(session: SessionDep) -> list[PipelineSummary]:
    return [_summary(d, b) for d, b in await catalog.all_latest(session)]


@router.get("/{name}", response_model=PipelineDefinition, **access(Role.VIEWER))
async def get_pipeline(name: PipelineName, session: SessionDep,
                       version: int | None = Query(default=None, ge=1, le=INT4_MAX)) -> PipelineDefinition:
    return await catalog.get(session, name, version)


@router.post("/validate", response_model=ValidationReport, **access(Role.VIEWER))
async def validate(body: PipelineBody, session: SessionDep) -> ValidationReport:
    """Always 200: the report says whether the definition is valid and lists every problem."""
    try:
        d = await catalog.validate(session, body)
    except InvalidPipeline as exc:
        return ValidationReport(valid=False, pipeline=exc.pipeline, problems=exc.problems)
    return ValidationReport(valid=True, pipeline=d.name)


@router.post("", status_code=201, response_model=PipelineSummary, **access(Role.SUPERVISOR))
async def publish(session: SessionDep, body: PipelineBody) -> PipelineSummary:
    """Store a new version; invalid definitions are refused with 422 naming every problem."""
    return _summary(await catalog.publish(session, body), False)
