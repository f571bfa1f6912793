"""Checks of docker-compose.yml and the Dockerfile that need no Docker engine.

The stack is validated three ways: Debian's ``docker-compose`` (1.29.2) parses, interpolates and validates it
(``config -q``); the Compose Specification JSON schema shipped inside that same package validates the raw file and
the rendered one; and the structure is checked against what the architecture needs. When ``docker-compose`` or
its schema is missing the check is skipped on a workstation but fails when ``CI=true``, so CI cannot go green
without having validated the file.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
METRICS_MODULE = REPO / "core" / "telemetry" / "metrics.py"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "devart.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"

#: Where Debian's python3-compose (the package behind /usr/bin/docker-compose) ships the Compose Spec schema.
SPEC_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json"),
    *sorted(Path("/usr/local/lib").glob("python3*/*-packages/compose/config/compose_spec.json")),
)

INFRA = ("temporal", "postgres", "rabbitmq")
APP_SERVICES = ("migrate", "api", "agents-api", "worker", "agent")
OBSERVABILITY = ("otel-collector", "tempo", "prometheus", "grafana")
#: The app services that emit traces, so must know where the collector is.
TRACED_SERVICES = ("api", "agents-api", "worker", "agent")
OTLP_ENDPOINT = "http://otel-collector:4318"
#: What Prometheus must scrape: the APIs, the pipeline worker and the Temporal SDK metrics it serves.
SCRAPE_TARGETS = frozenset({"api:8000", "agents-api:8000", "worker:9464", "worker:9465"})

HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
#: What each app service must wait for before it starts; anything less races the infrastructure on `up`.
REQUIRED_DEPENDENCIES: dict[str, dict[str, str]] = {
    "migrate": {"postgres": HEALTHY},
    "api": {"migrate": COMPLETED, "postgres": HEALTHY, "rabbitmq": HEALTHY, "temporal": HEALTHY},
    "worker": {"migrate": COMPLETED, "postgres": HEALTHY, "rabbitmq": HEALTHY, "temporal": HEALTHY},
    "agents-api": {"migrate": COMPLETED, "postgres": HEALTHY, "rabbitmq": HEALTHY, "temporal": HEALTHY},
    "agent": {"agents-api": HEALTHY, "rabbitmq": HEALTHY},
}

#: The only environment variables the app services may set; each must be read by a class in core.settings, except
#: the ``OTEL_*`` names, which the OpenTelemetry SDK reads itself.
ALLOWED_ENV = frozenset(
    {
        "DATABASE_URL",
        "AMQP_URL",
        "DEVART_AMQP_ADMIN_URL",
        "TEMPORAL_ADDRESS",
        "DEVART_UI_URL",
        "DEVART_API_URL",
        "DEVART_AGENT_API_URL",
        "DEVART_SANDBOX_ROOT",
        "DEVART_SANDBOX_ISOLATION",
        "DEVART_AGENT_KEY",
        "DEVART_DB_APP_PASSWORD",
        "DEVART_SECRETS_KEY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)
OTEL_PREFIX = "OTEL_"

SEARCH_ATTRIBUTES = ("DevartPipeline=Keyword", "DevartRepository=Keyword", "DevartTrigger=Keyword",
                     "DevartOrg=Keyword")


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
        "agents-api": ["devart", "api", "--agents-only", "--host", "0.0.0.0", "--port", "8000"],
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
        needed = ("AMQP_URL", "DEVART_AGENT_API_URL") if name == "agent" else (
            "DATABASE_URL", "AMQP_URL", "TEMPORAL_ADDRESS", "DEVART_API_URL")
        for required in needed:
            assert required in environment, f"{name} lacks {required}"
    assert "DEVART_AGENT_KEY" in _service(compose, "agent")["environment"]


def test_agents_hold_no_credentials_of_the_control_plane(compose: dict[str, Any]) -> None:
    """An agent runs untrusted code's sandboxes: a compromised agent host must find no database URL or password,
    no secrets key, no broker credentials and no Temporal address; it reaches everything through the API."""
    environment = _service(compose, "agent")["environment"]
    forbidden = ("DATABASE_URL", "DEVART_DB_APP_PASSWORD", "DEVART_APP_DATABASE_URL", "DEVART_SECRETS_KEY",
                 "DEVART_AMQP_ADMIN_URL", "TEMPORAL_ADDRESS")
    held = {name for name in forbidden if environment.get(name)}
    assert not held, f"the agent's environment holds {sorted(held)}"
    assert "@" not in environment["AMQP_URL"], "the agent's AMQP_URL carries credentials"


def test_allowed_names_are_read_by_settings() -> None:
    """Every allowed name is one core.settings actually reads, so the compose file and the code agree."""
    from pydantic_settings import BaseSettings

    from devart.core import settings

    known: set[str] = set()
    for value in vars(settings).values():
        if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings:
            prefix = str(value.model_config.get("env_prefix", ""))
            for field_name, field in value.model_fields.items():
                alias = field.validation_alias
                known.add((alias if isinstance(alias, str) else prefix + field_name).upper())
    ours = {name for name in ALLOWED_ENV if not name.startswith(OTEL_PREFIX)}
    assert ours <= known, f"not read by core.settings: {sorted(ours - known)}"


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


def _exported_metric_names() -> set[str]:
    """The series names core/telemetry/metrics.py exports, derived from its Counter/Gauge/Histogram declarations."""
    suffixes = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for node in ast.walk(ast.parse(METRICS_MODULE.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in suffixes):
            continue
        first = node.args[0]
        assert isinstance(first, ast.Constant) and isinstance(first.value, str), "metric names must be literals"
        name = first.value
        if node.func.id == "Counter":
            name = name.removesuffix("_total")  # prometheus_client strips it and adds it back on export
        names.update(name + suffix for suffix in suffixes[node.func.id])
    return names


#: PromQL words that look like identifiers but are not metric names.
_PROMQL_KEYWORDS = frozenset(
    ("and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring")
    + ("group_left", "group_right", "inf", "nan")
)


def _promql_metric_names(expr: str) -> set[str]:
    """Metric names used by a PromQL expression (no parser: strings, matchers, ranges and groupings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def _panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    panels: list[dict[str, Any]] = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop()
        panels.append(panel)
        stack.extend(panel.get("panels", []))  # rows nest their panels
    return [(panel.get("title", ""), target) for panel in panels for target in panel.get("targets", [])]


def _datasource_type(panel_or_target: dict[str, Any]) -> str:
    datasource = panel_or_target.get("datasource") or {}
    return str(datasource.get("type", "")) if isinstance(datasource, dict) else ""


def test_observability_services(compose: dict[str, Any]) -> None:
    """Collector, Tempo, Prometheus and Grafana are in the stack, from their upstream images, on loopback only."""
    images = {
        "otel-collector": "otel/opentelemetry-collector-contrib",
        "tempo": "grafana/tempo",
        "prometheus": "prom/prometheus",
        "grafana": "grafana/grafana",
    }
    for name in OBSERVABILITY:
        service = _service(compose, name)
        assert str(service["image"]).split(":")[0] == images[name], f"{name} must run {images[name]}"
    assert {4317, 4318} <= _container_ports(_service(compose, "otel-collector"))
    assert 9090 in _container_ports(_service(compose, "prometheus"))
    assert 3000 in _container_ports(_service(compose, "grafana"))
    for name, service in compose["services"].items():
        for entry in service.get("ports", []):
            assert isinstance(entry, str) and entry.startswith("127.0.0.1:"), f"{name} publishes {entry} off loopback"


def test_traced_services_export_to_the_collector(compose: dict[str, Any]) -> None:
    """The api, worker and agent send OTLP/HTTP to the collector, which forwards traces to Tempo."""
    for name in TRACED_SERVICES:
        environment = _service(compose, name)["environment"]
        assert environment.get("OTEL_EXPORTER_OTLP_ENDPOINT") == OTLP_ENDPOINT, f"{name} does not export traces"
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert {"grpc", "http"} <= set(collector["receivers"]["otlp"]["protocols"])
    traces = collector["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    endpoints = [str(collector["exporters"][exporter].get("endpoint", "")) for exporter in traces["exporters"]]
    assert any(endpoint.startswith("tempo:") for endpoint in endpoints), f"traces do not reach Tempo: {endpoints}"
    tempo = yaml.safe_load((DEPLOY / "tempo.yaml").read_text())
    assert "otlp" in tempo["distributor"]["receivers"]
    assert tempo["storage"]["trace"]["backend"] == "local"


def test_files_mounted_from_deploy_exist(compose: dict[str, Any]) -> None:
    """Every bind mount from ./deploy points at a file or folder in the repository (a typo mounts an empty dir)."""
    mounted: list[str] = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith(("./deploy", "deploy/")):
                mounted.append(source)
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
    expected = (
        "deploy/otel-collector.yaml",
        "deploy/tempo.yaml",
        "deploy/prometheus.yml",
        "deploy/grafana/provisioning",
        "deploy/grafana/dashboards",
    )
    for path in expected:
        assert f"./{path}" in mounted, f"{path} is not mounted"
    for path in (
        "grafana/provisioning/datasources/datasources.yaml",
        "grafana/provisioning/dashboards/dashboards.yaml",
        "grafana/dashboards/devart.json",
    ):
        assert (DEPLOY / path).is_file(), f"deploy/{path} missing"


def test_grafana_provisioning() -> None:
    """Grafana gets Prometheus and Tempo datasources and loads dashboards from the folder compose mounts."""
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/datasources.yaml").read_text())
    by_type = {source["type"]: source for source in datasources["datasources"]}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["tempo"]["url"].startswith("http://tempo:")
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yaml").read_text())
    paths = {provider["options"]["path"] for provider in providers["providers"]}
    assert "/var/lib/grafana/dashboards" in paths


def test_dashboard_queries_use_exported_metrics() -> None:
    """The dashboard parses, and each PromQL expression only names metrics core/telemetry/metrics.py exports."""
    exported = _exported_metric_names()
    assert {"devart_runs_started_total", "devart_stage_duration_seconds_bucket", "devart_agents"} <= exported
    dashboard = json.loads(DASHBOARD.read_text())
    targets = _panel_targets(dashboard)
    exprs = [(title, str(target["expr"])) for title, target in targets if target.get("expr")]
    assert len(exprs) >= 6, "the dashboard has too few Prometheus queries"
    used: set[str] = set()
    for title, expr in exprs:
        names = _promql_metric_names(expr)
        assert names, f"{title!r}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{title!r} queries {sorted(unknown)}, not exported by core/telemetry/metrics.py"
        used |= names
    joined = " ".join(expr for _, expr in exprs)
    assert "histogram_quantile(0.5" in joined and "histogram_quantile(0.95" in joined, "stage p50/p95 missing"
    for needed in (
        "devart_runs_finished_total",
        "devart_stage_duration_seconds_bucket",
        "devart_stage_retries_total",
        "devart_lane_queued_tasks",
        "devart_agents",
    ):
        assert needed in used, f"no panel shows {needed}"
    assert any(_datasource_type(target) == "tempo" for _, target in targets), "no Tempo trace search panel"


def test_promql_metric_extraction() -> None:
    """The extractor above finds metric names and ignores functions, labels, strings and ranges."""
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(x_bucket{a="b{c}", d=~"$v"}[$__rate_interval])))'
        " / on (stage) group_left count(y) or vector(0)"
    )
    assert _promql_metric_names(expr) == {"x_bucket", "y"}


def test_prometheus_scrapes_api_worker_and_sdk() -> None:
    """prometheus.yml parses and scrapes the API, the worker's own metrics and the Temporal SDK's."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", f"{job['job_name']} scrapes the wrong path"
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
    assert SCRAPE_TARGETS <= targets, f"missing scrape targets {sorted(SCRAPE_TARGETS - targets)}"
