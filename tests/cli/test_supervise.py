"""``devart up`` supervises: what is killed comes back, nothing runs twice, agents keep their keys, a crash loop is
given up on until ``devart up`` asks again, a killed supervisor's children are adopted, ``devart down`` leaves
nothing running, and the state folder and the database are private.

One stack for the whole module (the tests follow one another on it), started with ``devart up --detach`` as a user
does, in a state folder, on ports and under an AMQP prefix of its own: the session's stack is not touched. Which
processes run is read from ``/proc`` (command line and ``DEVART_HOME``), not from the supervisor's own record.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import httpx
import psutil
import psycopg
import pytest

from devart.core.devstack import embedded, services, stackctl
from devart.core.devstack.services import free_port
from devart.core.devstack.stackfile import StackRecord
from devart.core.messaging.topology import Topology
from tests.stack import delete_broker_users, require

POOL = ("agent-builder", "agent-tester", "agent-reviewer")
EVERY = {"supervisor", "postgres", "temporal", "api", "agents-api", "worker", *POOL}
#: Seconds a killed process may take to be started again and serve (imports, Temporal's db file).
REVIVE = 60.0


@dataclass
class Up:
    state: Path
    env: dict[str, str]
    lanes: list[str] = field(default_factory=list)

    @property
    def record(self) -> StackRecord:
        record = stackctl.read(self.state)
        assert record is not None
        return record

    def pid(self, name: str) -> int:
        pid = self.record.supervisor.pid if name == "supervisor" else self.record.children[name].pid
        assert pid is not None, f"{name} is not running"
        return pid

    def sql(self, query: str, **params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(**embedded.connect_args(self.state)) as conn:  # type: ignore[arg-type]
            return conn.execute(query, params).fetchall()


def devart(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devart.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def stack_processes(state: Path) -> dict[str, list[int]]:
    """Every live process of this state folder's stack, by role, as /proc shows them."""
    found: dict[str, list[int]] = {}
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = proc.cmdline()
            role = None
            if cmd and cmd[0].endswith("/postgres") and str(state / "postgres") in cmd:
                role = "postgres"
            elif proc.environ().get("DEVART_HOME") == str(state):
                if "start-dev" in cmd:
                    role = "temporal"
                elif "devart.cli" in cmd:
                    command = cmd[cmd.index("devart.cli") + 1]
                    role = {"supervise": "supervisor"}.get(command, command)
                    if command == "agent":
                        role = f"agent-{cmd[cmd.index('--name') + 1]}"
                    elif command == "api" and "--agents-only" in cmd:
                        role = "agents-api"
        except (psutil.Error, IndexError, ValueError):
            continue
        if role is not None:
            found.setdefault(role, []).append(proc.pid)
    return found


def assert_each_once(up: Up) -> None:
    """Every process of the stack runs, once, and is the one the supervisor's record names."""
    wait_for("every process runs", lambda: up.record.status == "running" and all(
        c.alive() for c in up.record.children.values()))
    running = stack_processes(up.state)
    assert {role: len(pids) for role, pids in running.items()} == dict.fromkeys(EVERY, 1), running
    record = up.record
    assert running == {"supervisor": [record.supervisor.pid], **{n: [c.pid] for n, c in record.children.items()}}


def wait_for(what: str, check: object, deadline: float = REVIVE) -> None:
    end = time.monotonic() + deadline
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, f"{what}: not within {deadline:.0f}s"
        time.sleep(0.1)


def agents_api(up: Up) -> str:
    return f"http://127.0.0.1:{up.env['DEVART_API_AGENT_PORT']}"


def api_healthy(up: Up, url: str | None = None) -> bool:
    try:
        return httpx.get(f"{url or up.env['DEVART_API_URL']}/healthz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def reported(url: str, skill: str) -> float:
    """The tasks of ``skill`` that the API at ``url`` accepted a success report for (its Prometheus counter)."""
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    wanted = f'devart_tasks_reported_total{{outcome="succeeded",skill="{skill}"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted))


def isolated_env(state: Path) -> dict[str, str]:
    """This machine's environment without any stack's settings (the session's included), plus this module's."""
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("DEVART_", "TEMPORAL_", "AMQP_", "OTEL_")) and k != "DATABASE_URL"}
    env = {**base, **services.isolated_env(state, "devart-supervise", amqp_url), "COLUMNS": "200",
           "DEVART_UI_URL": f"http://127.0.0.1:{free_port()}",
           "DEVART_AGENT_HEARTBEAT_INTERVAL": "0.5", "DEVART_AGENT_KEEPALIVE_INTERVAL": "1.0",
           "DEVART_SUPERVISOR_BACKOFF_INITIAL": "0.2", "DEVART_SUPERVISOR_CRASH_LOOP": "3",
           "DEVART_SUPERVISOR_STOP_GRACE": "5"}
    del env["DEVART_ADMIN_TOKEN"]  # `devart up` keeps one of its own in the state folder
    return env


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    require(services.amqp_reachable(amqp_url), f"RabbitMQ is not reachable at {amqp_url}")
    # Given a state folder an older devart left readable by everyone
    state = tmp_path_factory.mktemp("supervise") / "state"
    (state / "logs").mkdir(parents=True)
    for path, mode in ((state, 0o755), (state / "logs", 0o755)):
        path.chmod(mode)
    for name in ("admin-token", "logs/api.log"):
        (state / name).write_text("an older devart's\n")
        (state / name).chmod(0o644)
    stack = Up(state, isolated_env(state))
    done = devart("up", "--detach", env=stack.env)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield stack
    finally:
        devart("down", env=stack.env)
        left = stack_processes(state)
        for pids in left.values():
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        asyncio.run(_delete_broker_objects(stack))
        # `devart up` gave its pool's agents broker users of their own (a local RabbitMQ): delete them too.
        admin_url = services.local_management_url(amqp_url)
        users_left = delete_broker_users({**stack.env, "DEVART_AMQP_ADMIN_URL": admin_url})
        assert not left, f"left running: {left}"
        assert not users_left, users_left


async def _delete_broker_objects(up: Up) -> None:
    topology = Topology(prefix=up.env["AMQP_PREFIX"], delivery_limit=0)
    async with await aio_pika.connect(up.env["AMQP_URL"], timeout=10) as connection:
        await topology.delete(connection, up.lanes)


def test_up_runs_each_process_once(up: Up) -> None:
    assert up.record.status == "running"
    assert_each_once(up)
    # And the CLI acts as the first administrator with the token `devart up` keeps in the state folder (it replaced
    # the older devart's, too short to be a token)
    me = devart("whoami", env=up.env)
    assert me.returncode == 0 and "admin" in me.stdout and "default" in me.stdout, me.stdout + me.stderr
    assert (up.state / "admin-token").read_text().strip() != "an older devart's"
    done = devart("status", env=up.env)
    assert done.returncode == 0, done.stdout
    for name in EVERY - {"supervisor"}:
        assert f"{name} " in done.stdout and str(up.pid(name)) in done.stdout


def test_the_pools_agents_claim_and_report_through_the_agents_api(up: Up, tmp_path: Path) -> None:
    """`devart up` serves the agents' routes in a process of their own, so a claim never queues behind run starts:
    its agents claim and report there, not on the main API, and that process answers nothing but agents."""
    pipeline = tmp_path / "one-command.yaml"
    pipeline.write_text("name: supervise-one-command\nversion: 1\nstages:\n  - name: run\n    skill: shell\n"
                        "    requires: [shell]\n    inputs: {command: 'test -f README'}\n")
    done = devart("pipelines", "publish", str(pipeline), env=up.env)
    assert done.returncode == 0, done.stdout + done.stderr
    repo = up.state.parent / "repo"  # inside the folders runs may use
    repo.mkdir()
    (repo / "README").write_text("a repository\n")
    done = devart("run", "supervise-one-command", "--repo", str(repo), "--wait", env=up.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert reported(agents_api(up), "shell") >= 1
    assert reported(up.env["DEVART_API_URL"], "shell") == 0
    admin = {"Authorization": f"Bearer {(up.state / 'admin-token').read_text().strip()}"}
    assert httpx.get(f"{agents_api(up)}/v1/runs", headers=admin, timeout=5.0).status_code == 404
    assert httpx.get(f"{agents_api(up)}/docs", timeout=5.0).status_code == 404
    assert httpx.get(f"{agents_api(up)}/v1/agent/me", timeout=5.0).status_code == 401  # a key is still needed


def test_state_folder_and_database_are_private(up: Up) -> None:
    assert_private(up.state)
    for name in ("temporal.db", "temporal.db-wal", "admin-token", "supervisor.json", "logs/api.log",
                 "logs/supervisor.log", "keys/builder", "postgres.json"):
        assert stat.S_IMODE((up.state / name).stat().st_mode) == 0o600, name
    # The database: its socket in its own 0700 data folder, no TCP listener, no login without the password
    pgdata = up.state / "postgres"
    assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        assert pgdata.stat().st_uid == pwd.getpwnam(embedded.SYSTEM_USER).pw_uid
    postmaster = (pgdata / "postmaster.pid").read_text().splitlines()
    assert postmaster[4] == str(pgdata) and postmaster[5] == ""
    rules = [line.split() for line in (pgdata / "pg_hba.conf").read_text().splitlines() if line[:1] not in ("#", "")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=str(pgdata), user="postgres", dbname="devart", connect_timeout=5)
    assert up.sql("SELECT 1") == [(1,)]


def assert_private(state: Path) -> None:
    """The state folder is 0700 (plus search for the database's user, alone), what devart wrote in it 0600/0700."""
    mode = stat.S_IMODE(state.stat().st_mode)
    database_user = pwd.getpwnam(embedded.SYSTEM_USER) if os.geteuid() == 0 else None
    if database_user is None:
        assert mode == 0o700
    else:  # 0700, and the database's own user may pass through (x) to its data folder: an ACL entry, alone
        assert mode == 0o710
        assert _acl_users(state) == {database_user.pw_uid: 0o1}
    for path in state.rglob("*"):  # temporal.db and its -wal and -shm, logs, keys, the record, the token …
        top = path.relative_to(state).parts[0]
        st = path.lstat()
        if top in ("postgres", "sandboxes") or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            continue
        expected = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        assert stat.S_IMODE(st.st_mode) == expected, f"{path} is {oct(st.st_mode)}"


def _acl_users(path: Path) -> dict[int, int]:
    """The named-user entries of a folder's access ACL, with the mask applied."""
    blob = os.getxattr(path, "system.posix_acl_access")
    entries = [struct.unpack_from("<HHI", blob, offset) for offset in range(4, len(blob), 8)]
    mask = next(perm for tag, perm, _ in entries if tag == 0x10)
    assert [perm for tag, perm, _ in entries if tag in (0x04, 0x20)] == [0, 0]  # owning group, others: nothing
    return {ident: perm & mask for tag, perm, ident in entries if tag == 0x02}


def test_what_is_killed_comes_back(up: Up) -> None:
    key_before = (up.state / "keys" / "builder").read_text()
    prefix_before = up.sql("SELECT key_prefix FROM agents WHERE name = 'builder'")
    for name in ("worker", "agent-builder", "api", "agents-api", "temporal"):
        killed = up.pid(name)
        os.kill(killed, signal.SIGKILL)
        since = up.sql("SELECT now()")[0][0] if name != "api" else None
        back = stackctl.wait_running(up.state, name, not_pid=killed, timeout=REVIVE)
        assert back.restarts == 1 and back.last_exit == -signal.SIGKILL
        if name == "api":
            wait_for("the API answers again", lambda: api_healthy(up))
        if name == "agents-api":
            wait_for("the agents' API answers again", lambda: api_healthy(up, agents_api(up)))
        if name == "agent-builder":  # it serves again, with the key it had
            wait_for("the restarted agent calls the API", lambda since=since: up.sql(
                "SELECT 1 FROM agents WHERE name = 'builder' AND last_seen_at > %(since)s", since=since))
    assert (up.state / "keys" / "builder").read_text() == key_before
    assert up.sql("SELECT key_prefix FROM agents WHERE name = 'builder'") == prefix_before
    assert_each_once(up)
    log = (up.state / "logs" / "supervisor.log").read_text()
    for name in ("worker", "agent-builder", "api", "agents-api", "temporal"):
        assert f"{name} exited with code -9" in log


def test_up_again_starts_nothing(up: Up) -> None:
    before = stack_processes(up.state)
    done = devart("up", "--detach", env=up.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already up" in done.stdout
    assert stack_processes(up.state) == before
    assert_each_once(up)


def test_a_crash_loop_is_given_up_until_up_asks_again(up: Up) -> None:
    # Given a Temporal server that cannot start again: something else took its port
    port = int(up.env["TEMPORAL_ADDRESS"].rsplit(":", 1)[1])
    killed = up.pid("temporal")
    with socket.socket() as squatter:
        os.kill(killed, signal.SIGKILL)
        wait_for("the port is free", lambda: not _listening(port), 10)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        wait_for("the supervisor gives up on Temporal", lambda: up.record.children["temporal"].status == "failed")
        assert up.record.status == "degraded"
        assert "gave up after 3 exits" in up.record.children["temporal"].message
        assert "giving up on temporal" in (up.state / "logs" / "supervisor.log").read_text()
        assert devart("status", env=up.env).returncode == 1
    # When the port is free again and devart up is run
    done = devart("up", "--detach", env=up.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert up.record.children["temporal"].status == "running"
    assert_each_once(up)


def _listening(port: int) -> bool:
    return services.port_open("127.0.0.1", port)


def test_a_killed_supervisors_processes_are_adopted(up: Up) -> None:
    before = {name: up.pid(name) for name in EVERY}
    os.kill(before["supervisor"], signal.SIGKILL)
    os.kill(before["worker"], signal.SIGKILL)  # and one dies while nothing supervises it
    wait_for("the supervisor is gone", lambda: "supervisor" not in stack_processes(up.state), 10)
    done = devart("up", "--detach", env=up.env)
    assert done.returncode == 0, done.stdout + done.stderr
    after = {name: up.pid(name) for name in EVERY}
    assert after["supervisor"] != before["supervisor"] and after["worker"] != before["worker"]
    assert {n: p for n, p in after.items() if n not in ("supervisor", "worker")} == {
        n: p for n, p in before.items() if n not in ("supervisor", "worker")}
    assert_each_once(up)


def test_down_leaves_nothing_even_without_its_supervisor(up: Up) -> None:
    up.lanes = [str(row[0]) for row in up.sql("SELECT name FROM lanes")]
    os.kill(up.pid("supervisor"), signal.SIGKILL)
    done = devart("down", env=up.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stack_processes(up.state) == {}
    assert embedded.running(up.state) is None
    assert up.record.status == "stopped"
    assert devart("status", env=up.env).returncode == 1
    assert_private(up.state)  # also after a supervisor adopted what another left running


def test_a_taken_agents_port_fails_up_naming_the_setting(tmp_path: Path) -> None:
    """Another program on the agents' API port: `devart up` says which process and which setting, exits non-zero,
    and leaves nothing running behind it."""
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    require(services.amqp_reachable(amqp_url), f"RabbitMQ is not reachable at {amqp_url}")
    state = tmp_path / "state"
    env = isolated_env(state)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["DEVART_API_AGENT_PORT"])))
        taken.listen()
        try:
            done = devart("up", "--detach", env=env)
            assert done.returncode != 0
            out = " ".join((done.stdout + done.stderr).split())
            assert f"agents-api: 127.0.0.1:{env['DEVART_API_AGENT_PORT']} is already in use" in out, out
            assert "DEVART_API_AGENT_PORT" in out, out
        finally:
            devart("down", env=env)
    assert stack_processes(state) == {}
