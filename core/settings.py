"""Settings, one class per subsystem, read from the environment (and a ``.env`` file if present).

Every default works on a development machine with nothing configured: the embedded PostgreSQL, the local
Temporal dev server and the RabbitMQ service. Production deployments set the URLs explicitly. The settings of
where agent work runs (sandboxes, the package index, Kubernetes, allowed sources) live in ``core/settings_sandbox.py``
and are re-exported here, so ``settings.k8s()`` reads like any other.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from devart.core.settings_base import env_config as _config
from devart.core.settings_sandbox import KubernetesSettings as KubernetesSettings
from devart.core.settings_sandbox import PackageIndexSettings as PackageIndexSettings
from devart.core.settings_sandbox import SandboxSettings as SandboxSettings
from devart.core.settings_sandbox import SecretSettings as SecretSettings
from devart.core.settings_sandbox import SourceSettings as SourceSettings
from devart.core.settings_sandbox import k8s as k8s
from devart.core.settings_sandbox import package_index as package_index
from devart.core.settings_sandbox import sandbox as sandbox
from devart.core.settings_sandbox import secret_sources as secret_sources
from devart.core.settings_sandbox import source as source


class StateSettings(BaseSettings):
    """Where devart keeps its local state: Temporal's db file, the embedded PostgreSQL, sandboxes, logs."""

    model_config = _config("DEVART_")
    home: Path = Field(default=Path(".devart"), description="State folder (relative to the working directory).")

    @property
    def root(self) -> Path:
        return self.home.expanduser().resolve()


class TemporalSettings(BaseSettings):
    """How to reach Temporal, and which task queue the pipeline worker polls."""

    model_config = _config("TEMPORAL_")
    address: str = Field(default="127.0.0.1:7233", description="Temporal frontend host:port.")
    namespace: str = Field(default="default", description="Temporal namespace.")
    task_queue: str = Field(default="devart-pipelines", description="Task queue of the pipeline worker.")
    register_namespaces: bool = Field(
        default=True, description="Register an organisation's own namespace (and devart's search attributes in it) "
                                  "when the organisation is made; false: it must already exist.")
    namespace_refresh_seconds: float = Field(
        default=10.0, gt=0, description="How often the pipeline worker looks for organisations' new namespaces.")
    workflow_sandbox: bool = Field(
        default=False, description="Run workflows in the SDK's sandbox, which re-imports the workflow module for "
                                   "every run (a quarter of the worker's profile samples); off, determinism is "
                                   "checked by replaying recorded histories in the sandbox in the test suite.")
    ui_url: str = Field(
        default="http://127.0.0.1:8233", validation_alias="DEVART_UI_URL", description="Temporal Web UI base URL."
    )


class DatabaseSettings(BaseSettings):
    """PostgreSQL with pgvector. Unset: devart starts an embedded server under the state folder."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL, e.g. postgresql+psycopg://...")
    app_role: str = Field(default="devart_app", validation_alias="DEVART_DB_APP_ROLE",
                          pattern=r"^([a-z_][a-z0-9_]*)?$",
                          description="The role the services log in as: it owns no table and row-level security "
                                      "applies to it. Empty: the URL's own user (no isolation).")
    app_password: str | None = Field(default=None, validation_alias="DEVART_DB_APP_PASSWORD",
                                     description="Its password; unset, `devart db upgrade` makes one and keeps it "
                                                 "in the state folder (db-app-password, mode 0600).")
    app_database_url: str | None = Field(default=None, validation_alias="DEVART_APP_DATABASE_URL",
                                         description="The services' URL, if not DATABASE_URL with the role above.")
    pool_size: int = Field(default=10, ge=1, le=500, validation_alias="DEVART_DB_POOL_SIZE",
                           description="Connections each process keeps open to PostgreSQL.")
    pool_overflow: int = Field(default=20, ge=0, le=500, validation_alias="DEVART_DB_POOL_OVERFLOW",
                               description="Connections a process may open beyond pool_size under a burst.")
    pool_timeout: float = Field(default=120.0, gt=0, validation_alias="DEVART_DB_POOL_TIMEOUT",
                                description="Seconds a request waits for a free connection before it is answered "
                                            "503 with Retry-After (back-pressure, never a 500).")
    pool_pre_ping: bool = Field(default=False, validation_alias="DEVART_DB_POOL_PRE_PING",
                                description="Test each connection before use (a round trip per transaction). Off: "
                                            "a connection PostgreSQL dropped fails one statement, and the pool "
                                            "replaces every connection older than that failure.")


class AmqpSettings(BaseSettings):
    """RabbitMQ connection and the names of devart's exchanges."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ URL.")
    amqp_prefix: str = Field(default="devart", description="Prefix of every exchange and queue devart declares.")
    amqp_delivery_limit: int = Field(default=5, description="Deliveries before a task message is dead-lettered.")
    amqp_admin_url: SecretStr | None = Field(
        default=None, validation_alias="DEVART_AMQP_ADMIN_URL",
        description="RabbitMQ's management HTTP API with an administrator's credentials, e.g. "
                    "http://guest:guest@127.0.0.1:15672. Set: each agent gets a broker user of its own that may "
                    "touch only its organisation's queues (core.messaging.broker_users); unset or empty: every agent "
                    "uses AMQP_URL's credentials and organisations are kept apart by devart's code only. `devart up` "
                    "sets it for a local RabbitMQ unless it is set (empty: off).")


class ApiSettings(BaseSettings):
    """The HTTP API: where it listens and where agents and the CLI find it."""

    model_config = _config("DEVART_API_")
    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: int = Field(default=8000, description="Listen port.")
    url: str = Field(default="http://127.0.0.1:8000", description="Base URL clients use.")
    metrics_public: bool = Field(default=True, description="Serve /metrics without a token (for a Prometheus "
                                 "scraper); false: a viewer's token is needed.")
    agent_port: int = Field(default=8001, ge=0, le=65535, description=(
        "Where `devart up` serves the agents' API (the agent routes alone, in a process of their own, so a claim "
        "never waits behind run starts and reads); 0: its agents use the main API."))


class SupervisorSettings(BaseSettings):
    """How ``devart up``'s supervisor restarts a process that died, and when it gives up on one."""

    model_config = _config("DEVART_SUPERVISOR_")
    backoff_initial: float = Field(default=0.5, gt=0, description="Seconds before restarting a process that died.")
    backoff_max: float = Field(default=30.0, gt=0, description="Longest wait between restarts (it doubles each time).")
    crash_loop: int = Field(
        default=5, ge=1, description="Quick exits in a row (each within stable_after of its start) before giving up."
    )
    stable_after: float = Field(
        default=60.0, gt=0, description="Seconds a process must run for its next exit to start the backoff over."
    )
    stop_grace: float = Field(default=10.0, ge=0, description="Seconds between SIGTERM and SIGKILL when stopping.")
    ready_timeout: float = Field(
        default=180.0, gt=0, description="Seconds `devart up` waits for the whole stack to run before giving up."
    )


class RunPolicySettings(BaseSettings):
    """Limits stamped into every run at its start, so its workflow stays deterministic whatever changes later."""

    model_config = _config("DEVART_")
    approval_timeout: float = Field(
        default=24 * 3600.0, gt=0, description="Seconds a stage paused on a soft budget waits for an approval."
    )


class SweepSettings(BaseSettings):
    """How often the pipeline worker sweeps leftover sandboxes and what it removes."""

    model_config = _config("DEVART_SWEEP_")
    every: float = Field(default=60.0, gt=0, description="Seconds between two sweeps.")
    ttl_seconds: float = Field(default=6 * 3600, gt=0, description="Remove any sandbox older than this.")
    grace_seconds: float = Field(default=60, ge=0, description="Never remove a sandbox of an unknown run younger "
                                 "than this (its run may be starting).")


class WorkerSettings(BaseSettings):
    """The pipeline worker's own endpoints."""

    model_config = _config("DEVART_WORKER_")
    metrics_port: int = Field(default=9464, description="Port of the worker's /metrics (0 disables it).")
    sdk_metrics_port: int = Field(default=9465, description="Port of the Temporal SDK's metrics (0 disables it).")


class AdminSettings(BaseSettings):
    """The first administrator (``domain.bootstrap``)."""

    model_config = _config("DEVART_")
    admin_token: str | None = Field(default=None, description="The first administrator's personal token, registered "
                                    "by `devart db upgrade` (user admin, admin of the default organisation).")


class AgentSettings(BaseSettings):
    """An agent process's identity and pacing."""

    model_config = _config("DEVART_AGENT_")
    key: str | None = Field(default=None, description="The agent's API key (shown once at creation).")
    api_url: str | None = Field(default=None, description="Base URL of the API the agent calls: the agents' API "
                                "where one runs (`devart api --agents-only`); default DEVART_API_URL.")
    heartbeat_interval: float = Field(default=3.0, gt=0, description="Seconds between heartbeats.")
    keepalive_interval: float = Field(default=2.0, gt=0, description="Seconds between liveness/activation checks.")
    drain_grace: float = Field(default=30.0, ge=0, description="On SIGTERM, seconds to finish before handing back.")
    prefetch: int = Field(default=1, ge=1, description="Tasks an agent runs at once.")


@lru_cache
def state() -> StateSettings:
    return StateSettings()


@lru_cache
def temporal() -> TemporalSettings:
    return TemporalSettings()


@lru_cache
def amqp() -> AmqpSettings:
    return AmqpSettings()


@lru_cache
def api() -> ApiSettings:
    return ApiSettings()


@lru_cache
def agent() -> AgentSettings:
    return AgentSettings()


@lru_cache
def admin() -> AdminSettings:
    return AdminSettings()


@lru_cache
def worker() -> WorkerSettings:
    return WorkerSettings()


@lru_cache
def supervisor() -> SupervisorSettings:
    return SupervisorSettings()


@lru_cache
def run_policy() -> RunPolicySettings:
    return RunPolicySettings()


class FeedSettings(BaseSettings):
    """How many live event streams one API process serves, and how long it waits for a client that stops reading.

    Every stream shares the process's one LISTEN connection, so these bound memory, sockets and coroutines, not
    PostgreSQL connections.
    """

    model_config = _config("DEVART_FEED_")
    max_streams: int = Field(default=500, ge=1, description="Concurrent streams of the whole API process.")
    streams_per_client: int = Field(
        default=20, ge=1, description="Concurrent streams of one client address (a dashboard opens a few)."
    )
    queue_size: int = Field(
        default=1000, ge=1,
        description="Events queued for one stream; past it, the stream catches up from the events table instead.",
    )
    send_timeout: float = Field(
        default=60.0, gt=0, description="Seconds one write may wait on a client that stopped reading before the "
        "stream is closed (the client resumes with Last-Event-ID).",
    )
    retry_after: int = Field(default=5, ge=1, description="Seconds a client refused a stream is told to wait.")


@lru_cache
def feed() -> FeedSettings:
    return FeedSettings()



class LogSettings(BaseSettings):
    """How devart's processes write their logs (``core/telemetry/logs.py``)."""

    model_config = _config("DEVART_LOG_")
    format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line (the services `devart up` starts); text: for a "
        "terminal.",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "debug", "info", "warning", "error",
                   "critical"] = "INFO"


@lru_cache
def logs() -> LogSettings:
    return LogSettings()


class PriceSettings(BaseSettings):
    """The price table costs are computed with (``domain/costs.py``): inline JSON, or a file holding it."""

    model_config = _config("DEVART_")
    prices: str = Field(default="", description="The price table as JSON (wins over DEVART_PRICES_FILE).")
    prices_file: Path | None = Field(default=None, description="A JSON file holding the price table.")


@lru_cache
def price_source() -> PriceSettings:
    return PriceSettings()


class TraceExportSettings(BaseSettings):
    """Where spans go: OpenTelemetry's own variable names, so any collector set-up works unchanged."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_traces_endpoint: str = ""

    @property
    def exporting(self) -> bool:
        return bool(self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint)


@lru_cache
def trace_export() -> TraceExportSettings:
    return TraceExportSettings()


class ModelSettings(BaseSettings):
    """The model the review skill asks, at any OpenAI-compatible endpoint; without a key the review is static."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")
    openai_api_key: SecretStr | None = Field(default=None, description="Enables the model review; never logged.")
    openai_base_url: str | None = Field(default=None, description="An OpenAI-compatible endpoint (default: OpenAI).")
    devart_review_model: str = Field(default="gpt-4o-mini", description="The model, unless the stage names one.")


def model() -> ModelSettings:
    """Read at each review, not cached: an agent's key can be set or rotated without a restart."""
    return ModelSettings()
