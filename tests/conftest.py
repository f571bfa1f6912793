"""Session fixtures: the real services (Temporal dev server, PostgreSQL, RabbitMQ) and devart's own processes.

Each session gets its own Temporal server and database under a temporary state folder, and its own AMQP
prefix and task queue, so the suite never sees a developer's running stack. A missing service skips the suite
on a laptop but fails it under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from devart.core.database import db, tenancy
from devart.core.database.tenancy import DEFAULT_ORG
from devart.core.devstack import services, stackplan
from devart.core.devstack.embedded import stop_postgres
from devart.core.devstack.services import free_port
from devart.core.devstack.supervisor import Child, Supervisor, stop_child
from devart.domain.bootstrap import prepare_schema
from devart.sandboxes import volumes
from tests.helpers import download_cache
from tests.otlp_receiver import OtlpReceiver
from tests.stack import (
    Stack,
    admin,
    clear_settings_caches,
    delete_broker_objects,
    delete_broker_users,
    register_agent,
    require,
    sql,
)

#: The agent plugins of the test suite (``tests/plugins``), loaded by every agent it starts.
PLUGINS = "tests.plugins.noop"


def announce_plugins(sup: Supervisor) -> None:
    """One agent of a lane no stage requires announces the plugins' skills for the whole session, so a pipeline
    naming ``noop`` validates before the test that publishes it has started agents of its own."""
    name = f"plugins-{uuid.uuid4().hex[:4]}"
    child = sup.agent(name, ["plugins"], register_agent(name, ["plugins"]))
    deadline = time.monotonic() + 60
    while not sql("SELECT 1 FROM agents WHERE name = :name AND CAST(skills AS jsonb) @> '[\"noop\"]'", name=name):
        assert child.proc.poll() is None and time.monotonic() < deadline, f"{name} did not announce its skills"
        time.sleep(0.2)


def release_volumes(state: Path) -> list[Path]:
    """Unmount every sandbox volume left under the session's state folder; what stays mounted."""
    try:
        volumes.release(state)
    except OSError:
        return volumes.mounts_under(state)
    return []


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    require(services.amqp_reachable(amqp_url), f"RabbitMQ is not reachable at {amqp_url} (rabbitmq-server -detached)")
    # Every agent of the session connects as a RabbitMQ user of its own (core.messaging.broker_users).
    admin_url = os.environ.get("DEVART_AMQP_ADMIN_URL") or services.local_management_url(amqp_url)
    services.ensure_rabbitmq_management(admin_url)
    # Not under pytest's own folder: any pytest run as root (a project's suite run directly, for comparison)
    # makes /tmp/pytest-of-root 0700 again, and the embedded PostgreSQL, running as its own user, would lose its
    # way to its data folder (its next checkpoint then fails and the server stops).
    state = Path(tempfile.mkdtemp(prefix="devart-test-state-"))
    receiver = OtlpReceiver()
    env = {
        **services.isolated_env(state, "devart-test", amqp_url),
        "DEVART_AMQP_ADMIN_URL": admin_url,
        "DEVART_AGENT_HEARTBEAT_INTERVAL": "0.5",
        "DEVART_AGENT_KEEPALIVE_INTERVAL": "1.0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "DEVART_PRICES": json.dumps({"models": {"test-model": 2.0}, "default_per_1k_tokens": 0.5,
                                     "sandbox_cpu_second": 0.0}),
        # GitHub (issue 6): tests/github/double.py serves this URL; webhooks are signed with this secret
        "DEVART_GITHUB_API_URL": f"http://127.0.0.1:{free_port()}",
        "DEVART_GITHUB_TOKEN": f"ghs_test{uuid.uuid4().hex}",
        "DEVART_GITHUB_WEBHOOK_SECRET": f"whsec-{uuid.uuid4().hex}",
        "DEVART_LOG_LEVEL": "INFO",
        # Fault injection is not built in: every agent the suite starts loads the noop plugin.
        "DEVART_AGENT_MODULES": PLUGINS,
        # Runs take their sources from the tests' temporary folders and the repository's examples.
        "DEVART_SOURCE_LOCAL_ROOTS": f"{tempfile.gettempdir()},{Path(__file__).resolve().parent.parent}",
        # The agents' package proxy keeps its files between sessions: repeated sessions download nothing again.
        "DEVART_PACKAGE_INDEX_CACHE": str(download_cache("packages")),
    }
    embedded = not os.environ.get("DATABASE_URL")
    os.environ.update(env)
    clear_settings_caches()
    # Agents claim and report through an agents' API of their own, as under `devart up` and docker compose; a test
    # that points an agent elsewhere sets DEVART_AGENT_API_URL itself.
    agents_api_url = stackplan.agent_api_url()
    assert agents_api_url, "services.isolated_env gives the agents' API a port"
    env["DEVART_AGENT_API_URL"] = agents_api_url
    env["DATABASE_URL"] = db.database_url()
    prepare_schema()
    tenancy.serve_all(DEFAULT_ORG)  # what the tests write directly (agents' keys) is the default organisation's
    sup = Supervisor(state / "logs", env=env)
    temporal_port = int(env["TEMPORAL_ADDRESS"].rsplit(":", 1)[1])
    s = Stack(receiver=receiver, state=state, env=env, supervisor=sup, temporal_port=temporal_port,
              temporal_db=state / "temporal.db", api_url=env["DEVART_API_URL"], agents_api_url=agents_api_url)
    try:
        s.restart_temporal()
        api_child = sup.api("127.0.0.1", int(env["DEVART_API_PORT"]))
        sup.wait_healthy(s.api_url, api_child)
        s.start_agents_api()
        s.worker = sup.worker()
        announce_plugins(sup)
        yield s
    finally:
        sup.stop_all(grace=5)
        receiver.close()
        # The processes are gone, so nothing declares the lanes again: leave the shared broker as it was.
        left = delete_broker_objects(env) + delete_broker_users(env)
        if embedded:
            stop_postgres(state)
        if s.temporal is not None:
            stop_child(s.temporal, grace=5)
        if not os.environ.get("DEVART_TEST_KEEP_STATE"):  # kept to read its logs after a failure
            # A run still in flight when the session ends keeps its sandbox, volume mounted, as it would for a
            # worker that comes back; nothing here comes back, so unmount them before the folder goes.
            mounted = release_volumes(state)
            shutil.rmtree(state, ignore_errors=True)
            assert not mounted, f"still mounted under {state}: {mounted}"
        assert not left, f"left on RabbitMQ: {left}"


@pytest.fixture(scope="session")
def pool(stack: Stack) -> dict[str, Child]:
    """The default agent pool of ``devart up``, serving the built-in pipelines."""
    from devart.core.devstack.stackplan import DEFAULT_POOL

    # Started outside ``stack.agents``: the pool lives for the whole session, not just the first test using it.
    agents = {}
    for name, caps in DEFAULT_POOL.items():
        agent_name = f"{name}-{uuid.uuid4().hex[:4]}"
        agents[name] = stack.supervisor.agent(agent_name, caps, register_agent(agent_name, caps))
    return agents


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API holding the first administrator's token (tests of roles make their own)."""
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30.0, headers=admin(stack)) as client:
        yield client


@pytest.fixture
async def temporal(stack: Stack) -> Client:
    from devart.core.temporal import connect

    return await connect(stack.env["TEMPORAL_ADDRESS"])


@pytest.fixture(autouse=True)
def _readable_tmp_path(request: pytest.FixtureRequest) -> None:
    """pytest makes each test's folder 0700; tests use it as a run's source, which the sandbox user must read,
    as it must read a user's project."""
    if "tmp_path" in request.fixturenames:
        request.getfixturevalue("tmp_path").chmod(0o755)


@pytest.fixture(autouse=True)
def _stop_test_agents(request: pytest.FixtureRequest) -> Iterator[None]:
    """Agents a test starts stop when it ends, so idle agents do not pile up and slow the rest of the session."""
    if "stack" not in request.fixturenames:
        yield
        return
    stack: Stack = request.getfixturevalue("stack")
    before = set(stack.agents)
    yield
    for name in set(stack.agents) - before:
        child = stack.agents.pop(name)
        if child in stack.supervisor.children:
            stack.supervisor.stop(child, grace=5)
