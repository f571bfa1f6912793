"""Checks of docker-compose.yml and the Dockerfile that need no Docker engine.

The stack is validated three ways: Debian's ``docker-compose`` (1.29.2) parses, interpolates and validates it
(``config -q``); the Compose Specification JSON schema shipped inside that same package validates the raw file and
the rendered one; and the structure is checked against what the architecture needs. When ``docker-compose`` or
its schema is missing the check is skipped on a workstation but fails when ``CI=true``, so CI cannot go green
without having validated the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

#: Where Debian's python3-compose (the package behind /usr/bin/docker-compose) ships the Compose Spec schema.
SPEC_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json"),
    *sorted(Path("/usr/local/lib").glob("python3*/*-packages/compose/config/compose_spec.json")),
)

INFRA = ("temporal", "postgres", "rabbitmq")
APP_SERVICES = ("migrate", "api", "worker", "agent")

HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
#: What each app service must wait for before it starts; anything less races the infrastructure on `up`.
REQUIRED_DEPENDENCIES: dict[str, dict[str, str]] = {
    "migrate": {"postgres": HEALTHY},
    "api": {"migrate": COMPLETED, "postgres": HEALTHY, "rabbitmq": HEALTHY, "temporal": HEALTHY},
    "worker": {"migrate": COMPLETED, "postgres": HEALTHY, "rabbitmq": HEALTHY, "temporal": HEALTHY},
    "agent": {"api": HEALTHY, "rabbitmq": HEALTHY},
}

#: The only environment variables the app services may set; each must be read by a class in core.settings.
ALLOWED_ENV = frozenset(
    {
        "DATABASE_URL",
        "AMQP_URL",
        "TEMPORAL_ADDRESS",
        "DEVART_UI_URL",
        "DEVART_API_URL",
        "DEVART_SANDBOX_ROOT",
        "DEVART_SANDBOX_ISOLATION",
        "DEVART_AGENT_KEY",
    }
)

SEARCH_ATTRIBUTES = ("DevartPipeline=Keyword", "DevartRepository=Keyword", "DevartTrigger=Keyword")


def _unavailable(reason: str) -> NoReturn:
    """Skip on a workstation, fail in CI: a validator that silently went missing must not pass the build."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required when CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as plain data (YAML anchors and merge keys resolved, no interpolation)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def rendered() -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` run once: it validates the file and prints the fully resolved model."""
    binary = shutil.which("docker-compose") or "/usr/bin/docker-compose"
    if not Path(binary).is_file():
        _unavailable("docker-compose is not installed")
    env = {**os.environ, "DEVART_AGENT_KEY": "test-agent-key"}
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def spec_schema() -> dict[str, Any]:
    """The Compose Specification schema docker-compose itself validates against."""
    for candidate in SPEC_CANDIDATES:
        if candidate.is_file():
            schema = json.loads(candidate.read_text())
            assert isinstance(schema, dict)
            return schema
    _unavailable("compose_spec.json not found (Debian package python3-compose)")


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose.get("services", {})
    assert name in services, f"service {name!r} missing from docker-compose.yml"
    service = services[name]
    assert isinstance(service, dict)
    return service


def _container_ports(service: dict[str, Any]) -> set[int]:
    """Container-side ports of a service, from short ("127.0.0.1:80:80") or long ({target: 80}) syntax."""
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _dependencies(service: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` as {service: condition}; the short list form has no condition, so it maps to ''."""
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "")
    return {name: (spec or {}).get("condition", "") for name, spec in depends.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def test_docker_compose_config_accepts_the_file(rendered: subprocess.CompletedProcess[str]) -> None:
    """The installed docker-compose parses, interpolates and validates the file (what `config -q` does)."""
    assert rendered.returncode == 0, rendered.stderr


def test_file_matches_the_compose_spec_schema(
    compose: dict[str, Any], spec_schema: dict[str, Any], rendered: subprocess.CompletedProcess[str]
) -> None:
    """Both the file as written and docker-compose's rendering of it conform to the Compose Specification."""
    from jsonschema import Draft201909Validator, ValidationError

    # The schema declares draft 2019-09 (with a trailing '#' jsonschema does not recognise), so name it explicitly.
    validator = Draft201909Validator(spec_schema)
    validator.validate(compose)
    if rendered.returncode == 0:
        validator.validate(yaml.safe_load(rendered.stdout))
    # The schema has teeth: a misspelt service key is refused, so passing above means something.
    broken = {"services": {"api": {**compose["services"]["api"], "depend_on": ["postgres"]}}}
    with pytest.raises(ValidationError):
        validator.validate(broken)


def test_infrastructure_services(compose: dict[str, Any]) -> None:
    """Temporal (with its Web UI and the run search attributes), pgvector PostgreSQL and RabbitMQ with its UI."""
    temporal = _service(compose, "temporal")
    assert {7233, 8233} <= _container_ports(temporal)
    command = " ".join(_command(temporal))
    assert "server start-dev" in command
    for attribute in SEARCH_ATTRIBUTES:
        assert f"--search-attribute {attribute}" in command
    assert any(str(v).endswith(":/data") for v in temporal.get("volumes", [])), "Temporal's db must persist"

    postgres = _service(compose, "postgres")
    assert "pgvector" in postgres["image"]
    assert postgres["environment"]["POSTGRES_DB"] == "devart"

    rabbitmq = _service(compose, "rabbitmq")
    assert rabbitmq["image"].startswith("rabbitmq:") and "management" in rabbitmq["image"]
    assert {5672, 15672} <= _container_ports(rabbitmq)

    for name in INFRA:
        service = _service(compose, name)
        assert "healthcheck" in service, f"{name} needs a healthcheck for depends_on: service_healthy"
        assert service.get("volumes"), f"{name} must keep its state in a volume"


def test_app_services_run_devart(compose: dict[str, Any]) -> None:
    """The app services run the devart CLI from the image built by our Dockerfile."""
    expected = {
        "migrate": ["devart", "db", "upgrade"],
        "api": ["devart", "api", "--host", "0.0.0.0", "--port", "8000"],
        "worker": ["devart", "worker"],
    }
    for name in APP_SERVICES:
        service = _service(compose, name)
        assert "build" in service, f"{name} must be built from our Dockerfile"
        if name in expected:
            assert _command(service) == expected[name]
    agent = _command(_service(compose, "agent"))
    assert agent[:2] == ["devart", "agent"]
    capabilities = agent[agent.index("--capabilities") + 1].split(",")
    assert {"python", "test", "lint", "review", "build", "shell"} <= set(capabilities)
    assert _service(compose, "agent")["deploy"]["replicas"] >= 2
    assert 8000 in _container_ports(_service(compose, "api"))


def test_app_services_wait_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    """Each app service waits for healthy infrastructure and a finished migration, never for a bare start."""
    services = compose["services"]
    for name, required in REQUIRED_DEPENDENCIES.items():
        actual = _dependencies(_service(compose, name))
        for dependency, condition in required.items():
            assert actual.get(dependency) == condition, f"{name} must depend on {dependency} with {condition}"
        for dependency, condition in actual.items():
            assert condition in (HEALTHY, COMPLETED), f"{name} -> {dependency} has no useful condition"
            if condition == HEALTHY:
                assert "healthcheck" in services[dependency], f"{dependency} is waited on but has no healthcheck"
    assert str(_service(compose, "migrate").get("restart", "no")) == "no", "a one-shot job must not restart"


def test_app_environment_uses_only_known_names(compose: dict[str, Any]) -> None:
    """A misspelt variable is silently ignored by pydantic-settings, so the names are pinned here."""
    for name in APP_SERVICES:
        environment = _service(compose, name).get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        unknown = set(environment) - ALLOWED_ENV
        assert not unknown, f"{name} sets unknown variables {sorted(unknown)}"
        for required in ("DATABASE_URL", "AMQP_URL", "TEMPORAL_ADDRESS", "DEVART_API_URL"):
            assert required in environment, f"{name} lacks {required}"
    assert "DEVART_AGENT_KEY" in _service(compose, "agent")["environment"]


def test_allowed_names_are_read_by_settings() -> None:
    """Every allowed name is one core.settings actually reads, so the compose file and the code agree."""
    from pydantic_settings import BaseSettings

    from core import settings

    known: set[str] = set()
    for value in vars(settings).values():
        if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings:
            prefix = str(value.model_config.get("env_prefix", ""))
            for field_name, field in value.model_fields.items():
                alias = field.validation_alias
                known.add((alias if isinstance(alias, str) else prefix + field_name).upper())
    assert ALLOWED_ENV <= known, f"not read by core.settings: {sorted(ALLOWED_ENV - known)}"


def test_worker_and_agents_share_the_sandboxes(compose: dict[str, Any]) -> None:
    """The local backend provisions in the worker and execs in the agent: same volume, same path, same root."""
    assert "sandboxes" in compose.get("volumes", {})
    for name in ("worker", "agent"):
        service = _service(compose, name)
        root = service["environment"]["DEVART_SANDBOX_ROOT"]
        assert f"sandboxes:{root}" in service.get("volumes", []), f"{name} must mount the sandboxes volume at {root}"
    security = _service(compose, "agent").get("security_opt", [])
    assert "seccomp:unconfined" in security, "bubblewrap needs user namespaces, refused by Docker's default seccomp"
    assert not _service(compose, "agent").get("privileged"), "lift the filters, do not make the agent privileged"


def test_dockerfile_basics() -> None:
    """The image the stack builds: slim Python 3.11, git and bubblewrap, installed package, non-root uid 10001."""
    text = DOCKERFILE.read_text()
    assert "FROM python:3.11-slim" in text
    assert "bubblewrap" in text and " git " in text
    assert "pip install --no-cache-dir ." in text
    assert "--uid 10001" in text and "\nUSER devart" in text
    assert 'CMD ["devart", "--help"]' in text
