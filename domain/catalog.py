"""The pipeline catalog: built-in templates plus versions published through the API."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core import pipelines
from devart.core.contracts import BUILTIN_SKILLS, PipelineDefinition
from devart.core.database.models import Agent, PipelineVersion
from devart.core.errors import InvalidPipeline, PipelineNotFound


async def get(session: AsyncSession, name: str, version: int | None = None) -> PipelineDefinition:
    """The requested version, or the latest published one, or the built-in template."""
    query = select(PipelineVersion).where(PipelineVersion.name == name)
    if version is not None:
        query = query.where(PipelineVersion.version == version)
    row = (await session.exec(query.order_by(PipelineVersion.version.desc()).limit(1))).first()  # type: ignore[attr-defined]
    if row is not None:
        return PipelineDefinition.model_validate(row.definition)
    builtin = pipelines.builtin()
    if name in builtin and version in (None, builtin[name].version):
        return builtin[name]
    known = sorted(set(builtin) | set(await _published_names(session)))
    hint = pipelines.did_you_mean(name, known)
    what = f"pipeline '{name}'" + (f" version {version}" if version else "")
    raise PipelineNotFound(f"{what} not found{hint}; known pipelines: {', '.join(known)}")


async def _published_names(session: AsyncSession) -> list[str]:
    return list((await session.exec(select(PipelineVersion.name).distinct())).all())


async def all_latest(session: AsyncSession) -> list[tuple[PipelineDefinition, bool]]:
    """Every pipeline at its latest version, flagged whether it is the built-in one."""
    result: dict[str, tuple[PipelineDefinition, bool]] = {n: (d, True) for n, d in pipelines.builtin().items()}
    latest = (
        select(PipelineVersion.name, func.max(PipelineVersion.version).label("v"))
        .group_by(PipelineVersion.name)
        .subquery()
    )
    rows = await session.exec(
        select(PipelineVersion).join(
            latest,
            (PipelineVersion.name == latest.c.name) & (PipelineVersion.version == latest.c.v),  # type: ignore[arg-type]
        )
    )
    for row in rows:
        result[row.name] = (PipelineDefinition.model_validate(row.definition), False)
    return [result[n] for n in sorted(result)]


async def known_skills(session: AsyncSession) -> frozenset[str]:
    """Built-in skills plus every skill a registered, active agent has announced."""
    rows = (await session.exec(select(Agent.skills).where(Agent.active == True))).all()  # noqa: E712
    return BUILTIN_SKILLS | {skill for skills in rows for skill in skills}


async def publish(session: AsyncSession, data: dict) -> PipelineDefinition:
    """Validate and store a new version (one more than the latest, whatever version the document says)."""
    definition = pipelines.parse(data, skills=await known_skills(session))
    current = (
        await session.exec(select(func.max(PipelineVersion.version)).where(PipelineVersion.name == definition.name))
    ).first()
    builtin = pipelines.builtin().get(definition.name)
    version = max(current or 0, builtin.version if builtin else 0) + 1
    definition = definition.model_copy(update={"version": version})
    session.add(PipelineVersion(name=definition.name, version=version, definition=definition.model_dump(mode="json")))
    await session.commit()  # before the response: the next request must see the new version
    return definition


async def validate(session: AsyncSession, data: dict) -> PipelineDefinition:
    """Parse without storing; raises ``InvalidPipeline`` listing every problem."""
    if not isinstance(data, dict):
        raise InvalidPipeline("<input>", ["the body must be a JSON object describing the pipeline"])
    return pipelines.parse(data, skills=await known_skills(session))
