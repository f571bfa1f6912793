"""Loading and validating pipeline templates.

Validation happens before any workflow starts, and every problem is reported at once with a message that names
the stage and field, so an author fixes a template in one pass instead of one error per attempt.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from devart.core import bounds, settings, yaml_safe
from devart.core.contracts import BUILTIN_SKILLS, PipelineDefinition, StageSpec
from devart.core.errors import InvalidPipeline

PARAM_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def did_you_mean(word: str, choices: list[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _location(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic error location with stage names instead of list indexes."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            name = node[item].get("name") if isinstance(node[item], dict) else None
            parts[-1] = f"{parts[-1]}[{name or item}]" if parts else f"[{item}]"
            node = node[item]
            continue
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def parse(data: Any, *, source: str = "<input>", skills: frozenset[str] = BUILTIN_SKILLS) -> PipelineDefinition:
    """Turn decoded YAML/JSON into a validated ``PipelineDefinition`` or raise ``InvalidPipeline``.

    ``skills`` are the skill names a stage may use: the built-in ones plus those registered agents offer.
    """
    if not isinstance(data, dict):
        raise InvalidPipeline(source, ["a pipeline must be a mapping with 'name' and 'stages'"])
    name = str(data.get("name") or source)[:100]
    problems = check_bounds(data)
    if problems:
        raise InvalidPipeline(name, problems)
    try:
        definition = PipelineDefinition.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_location(err['loc'], data) or 'pipeline'}: {err['msg']}" for err in exc.errors()]
        raise InvalidPipeline(name, problems) from None
    stored = bounds.json_size(definition.model_dump(mode="json"))
    if stored > bounds.MAX_DEFINITION_BYTES:
        raise InvalidPipeline(definition.name, [
            f"the definition is {stored} bytes as stored (defaults filled in); at most "
            f"{bounds.size(bounds.MAX_DEFINITION_BYTES)} fit in a run's workflow input"])
    problems = check_graph(definition, skills)
    if problems:
        raise InvalidPipeline(definition.name, problems)
    return definition


def check_bounds(data: dict[str, Any]) -> list[str]:
    """The limits of ``core.bounds`` a document breaks, checked before pydantic walks it: nesting, sizes, text."""
    problems = []
    stages, description = data.get("stages"), data.get("description")
    if isinstance(stages, list) and len(stages) > bounds.MAX_STAGES:
        problems.append(f"stages: {len(stages)} stages; a pipeline may have at most {bounds.MAX_STAGES}")
    if isinstance(description, str) and len(description) > bounds.MAX_DESCRIPTION_CHARS:
        problems.append(f"description: {len(description)} characters; at most {bounds.MAX_DESCRIPTION_CHARS} "
                        "(it is listed with every pipeline)")
        data = {k: v for k, v in data.items() if k != "description"}  # said once, not again as a long string
    return problems + bounds.tree_problems(data)


def _secret_problems(stage: StageSpec) -> list[str]:
    """An ``env:`` secret may name only an environment variable an operator allow-listed (``DEVART_SECRETS_ALLOWED``).

    A ``secret:`` reference (the organisation's store) is accepted whether or not the secret exists yet: it may be
    created after the pipeline is published, and a stage naming a missing one fails with ``SecretMissing``.
    """
    allowed = settings.secret_sources()
    return [f"stage '{stage.name}': secret '{name}' refers to environment variable "
            f"'{ref.removeprefix('env:')}', which is not allow-listed for secrets (DEVART_SECRETS_ALLOWED lists "
            f"{', '.join(sorted(allowed)) or 'none'})"
            for name, ref in sorted(stage.sandbox.secrets.items())
            if ref.startswith("env:") and ref.removeprefix("env:") not in allowed]


def check_graph(definition: PipelineDefinition, skills: frozenset[str] = BUILTIN_SKILLS) -> list[str]:
    """Semantic checks pydantic cannot express: names, dependencies, cycles, skills, timeouts, parameters."""
    problems: list[str] = []
    names = [stage.name for stage in definition.stages]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"stage '{dup}' is defined more than once")
    known = set(names)
    for stage in definition.stages:
        for dep in stage.depends_on:
            if dep == stage.name:
                problems.append(f"stage '{stage.name}' depends on itself")
            elif dep not in known:
                problems.append(f"stage '{stage.name}' depends on unknown stage '{dep}'{did_you_mean(dep, names)}")
        if stage.skill not in skills:
            problems.append(
                f"stage '{stage.name}' uses unknown skill '{stage.skill}'{did_you_mean(stage.skill, skills)}"
                f"; known skills: {', '.join(sorted(skills))}"
            )
        retry = stage.retry
        if retry.maximum_interval < retry.initial_interval:
            problems.append(
                f"stage '{stage.name}': retry.maximum_interval ({retry.maximum_interval}) is shorter than "
                f"retry.initial_interval ({retry.initial_interval})"
            )
        if stage.heartbeat_timeout > stage.timeout:
            problems.append(f"stage '{stage.name}': heartbeat_timeout is longer than timeout")
        problems += _secret_problems(stage)
        for param in sorted(_referenced_params(stage.inputs)):
            if param not in definition.params:
                problems.append(
                    f"stage '{stage.name}' uses parameter '${{{param}}}' that the pipeline does not declare"
                    f"{did_you_mean(param, list(definition.params))}"
                )
    cycle = find_cycle(definition)
    if cycle:
        problems.append("stages form a cycle: " + " -> ".join(cycle))
    return problems


def _referenced_params(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(PARAM_PATTERN.findall(value))
    if isinstance(value, dict):
        return set().union(*(_referenced_params(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_referenced_params(v) for v in value)) if value else set()
    return set()


def find_cycle(definition: PipelineDefinition) -> list[str] | None:
    """Return one dependency cycle as a path of stage names (first name repeated at the end), if any."""
    deps = {s.name: [d for d in s.depends_on if d != s.name] for s in definition.stages}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in deps.get(node, []):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for name in deps:
        if name not in state and (found := visit(name)):
            return found
    return None


def resolve_params(definition: PipelineDefinition, given: dict[str, str]) -> dict[str, str]:
    """Merge run parameters over the template's defaults; unknown names are refused with a suggestion."""
    unknown = [k for k in given if k not in definition.params]
    if unknown:
        problems = [
            f"unknown parameter '{k}'{did_you_mean(k, list(definition.params))}; "
            f"accepted: {', '.join(sorted(definition.params)) or 'none'}"
            for k in unknown
        ]
        raise InvalidPipeline(definition.name, problems)
    return {**definition.params, **given}


def substitute(value: Any, params: dict[str, str]) -> Any:
    """Replace ``${name}`` in every string of ``value`` with the run's parameter values."""
    if isinstance(value, str):
        return PARAM_PATTERN.sub(lambda m: params.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: substitute(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, params) for v in value]
    return value


def substituted_size(value: Any, params: dict[str, str]) -> int:
    """Bytes of ``substitute(value, params)`` as JSON, counted without building it.

    A parameter of 64 KiB referenced thousands of times would otherwise build gigabytes just to be measured.
    """
    extra = {name: bounds.json_size(text) - 2 for name, text in params.items()}  # without the quotes
    total, stack = bounds.json_size(value), [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += sum(extra[m.group(1)] - len(m.group(0)) for m in PARAM_PATTERN.finditer(node)
                         if m.group(1) in extra)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return total


def load_file(path: Path) -> PipelineDefinition:
    """Load and validate one YAML template file (``core.yaml_safe``: bounded size, nesting and aliases)."""
    try:
        data = yaml_safe.load_file(path)
    except yaml_safe.YamlRefused as exc:
        raise InvalidPipeline(path.stem, [str(exc)]) from None
    except OSError as exc:
        raise InvalidPipeline(path.stem, [f"cannot read {path}: {exc.strerror}"]) from None
    return parse(data, source=path.stem)


def builtin_dir() -> Path:
    from devart import pipelines

    return Path(pipelines.__file__).parent


def builtin() -> dict[str, PipelineDefinition]:
    """The built-in templates shipped in ``pipelines/``, by name."""
    return {d.name: d for d in (load_file(p) for p in sorted(builtin_dir().glob("*.yaml")))}
