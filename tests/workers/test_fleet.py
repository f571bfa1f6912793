"""The agent fleet: registry, deactivation, waiting for capabilities, dead letters, drain, SDK agents."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import aio_pika
import httpx

from devart.core.messaging.topology import Topology, lane_name
from tests.cli.test_cli import devart
from tests.helpers import noop_stage, poll, publish, start, unique, wait_run, wait_stage
from tests.stack import Stack, admin, sql


async def test_registry_through_the_cli(stack: Stack, api: httpx.AsyncClient) -> None:
    name = unique("registered")
    created = devart("agents", "create", name, "--capabilities", "python,test", env=stack.env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("dva_")
    assert key not in json.dumps(sql("SELECT * FROM agents WHERE name = :n", n=name), default=str)
    listed = json.loads(devart("agents", "list", "--json", env=stack.env).stdout)
    assert any(a["name"] == name and a["capabilities"] == ["python", "test"] for a in listed)
    again = devart("agents", "create", name, "--capabilities", "python", env=stack.env)
    assert again.returncode == 1 and "already exists" in again.stderr
    auth = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/v1/agent/lanes", headers=auth)).status_code == 200
    rotated = devart("agents", "rotate-key", name, env=stack.env).stdout.strip().splitlines()[-1]
    assert (await api.get("/v1/agent/lanes", headers=auth)).status_code == 401
    new_auth = {"Authorization": f"Bearer {rotated}"}
    assert (await api.get("/v1/agent/lanes", headers=new_auth)).status_code == 200
    assert devart("agents", "deactivate", name, env=stack.env).returncode == 0
    assert (await api.get("/v1/agent/lanes", headers=new_auth)).status_code == 403
    assert devart("agents", "remove", name, env=stack.env).returncode == 0
    gone = devart("agents", "show", name, env=stack.env)
    assert gone.returncode == 1 and "not found" in gone.stderr
    assert (await api.get("/v1/agents", headers={"Authorization": "Bearer wrong"})).status_code == 401


async def test_unservable_lane_waits_with_a_reason_then_fails(api: httpx.AsyncClient, tmp_path: Path) -> None:
    cap = unique("nobody-has-this")
    name = unique("waiting")
    await publish(api, {"name": name, "stages": [{**noop_stage("lonely", cap), "wait_timeout": 4}]})
    run_id = await start(api, name, tmp_path)

    async def waiting() -> dict[str, Any] | None:
        body = (await api.get(f"/v1/runs/{run_id}")).json()
        stage = body["stages"][0]
        return stage if stage.get("waiting") else None

    stage = await poll(waiting, deadline=30, what="the stage to say what it waits for")
    assert stage["waiting"] == f"waiting for an agent with capabilities {cap}"
    run = await wait_run(api, run_id, deadline=60)
    assert run["status"] == "failed" and "NoAgentAvailable" in run["stages"][0]["error"]
    kinds = [r["kind"] for r in sql("SELECT kind FROM events WHERE run_id = :r ORDER BY id", r=run_id)]
    assert "stage.waiting" in kinds


async def test_deactivation_stops_deliveries(stack: Stack, api: httpx.AsyncClient, tmp_path: Path) -> None:
    cap, name = unique("deact"), unique("deact-agent")
    stack.start_agent(name, [cap])
    pipeline = unique("deact")
    await publish(api, {"name": pipeline, "stages": [noop_stage("work", cap)]})
    assert (await wait_run(api, await start(api, pipeline, tmp_path)))["status"] == "succeeded"
    r = await api.post(f"/v1/agents/{name}/deactivate", headers=admin(stack))
    assert r.status_code == 200
    run_id = await start(api, pipeline, tmp_path)

    async def waiting() -> bool:
        return bool((await api.get(f"/v1/runs/{run_id}")).json()["stages"][0].get("waiting"))

    await poll(waiting, deadline=30, what="the task to wait, unclaimed by the deactivated agent")
    assert sql("SELECT claimed_by FROM task_attempts WHERE run_id = :r", r=run_id) == [{"claimed_by": None}]
    assert (await api.post(f"/v1/agents/{name}/activate", headers=admin(stack))).status_code == 200
    run = await wait_run(api, run_id, deadline=60)
    assert run["status"] == "succeeded" and run["stages"][0]["result"]["agent"] == name


async def _lane_channel(stack: Stack) -> tuple[aio_pika.abc.AbstractRobustConnection, Topology]:
    connection = await aio_pika.connect_robust(stack.env["AMQP_URL"])
    return connection, Topology(prefix=stack.env["AMQP_PREFIX"], delivery_limit=5)


async def test_poison_message_is_dead_lettered_and_the_agent_keeps_serving(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    cap = unique("poison")
    stack.start_agent(unique("sturdy"), [cap])
    pipeline = unique("poison")
    await publish(api, {"name": pipeline, "stages": [noop_stage("work", cap)]})
    assert (await wait_run(api, await start(api, pipeline, tmp_path)))["status"] == "succeeded"
    connection, topology = await _lane_channel(stack)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.tasks_exchange)
        await exchange.publish(aio_pika.Message(b'{"not": "a task"'), routing_key=lane_name([cap]))

    async def dead() -> list[dict[str, Any]]:
        rows = (await api.get("/v1/dlq", headers=admin(stack))).json()
        return [d for d in rows if d["lane"] == lane_name([cap])]

    letter = (await poll(dead, deadline=30, what="the poison message in the DLQ"))[0]
    assert "unreadable task message" in letter["reason"]
    assert (await wait_run(api, await start(api, pipeline, tmp_path)))["status"] == "succeeded"


async def test_over_the_delivery_limit_then_redrive_completes_the_stage(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    # Given a queued task that a broken consumer keeps bouncing until RabbitMQ dead-letters it
    cap = unique("bounce")
    pipeline = unique("bounce")
    await publish(api, {"name": pipeline, "stages": [noop_stage("work", cap)]})
    run_id = await start(api, pipeline, tmp_path)
    await wait_stage(api, run_id, "work", "running")
    connection, topology = await _lane_channel(stack)
    async with connection:
        channel = await connection.channel()
        queue = await topology.declare_lane(channel, lane_name([cap]))

        async def bounce(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.reject(requeue=True)

        await queue.consume(bounce)

        async def dead() -> list[dict[str, Any]]:
            rows = (await api.get("/v1/dlq", headers=admin(stack))).json()
            return [d for d in rows if d["lane"] == lane_name([cap])]

        letter = (await poll(dead, deadline=60, what="the bounced task in the DLQ"))[0]
    assert letter["reason"] == "over the lane's delivery limit"
    # When an agent comes and the dead letter is redriven
    stack.start_agent(unique("late"), [cap])
    done = devart("dlq", "redrive", str(letter["id"]), env=stack.env)
    assert done.returncode == 0, done.stderr
    # Then the stage that was still waiting completes
    run = await wait_run(api, run_id, deadline=60)
    assert run["status"] == "succeeded" and len(run["stages"][0]["attempt_log"]) == 1


#: A sandboxed command that is slow for the first agent to run it and quick for the next: the attempt, and so its
#: sandbox, stays the same when a task is handed over, and the marker file is left in that sandbox's workspace.
HANDOVER_COMMAND = "if [ -e {marker} ]; then echo taken over; else touch {marker}; sleep 60; fi"


async def _hand_over(stack: Stack, api: httpx.AsyncClient, tmp_path: Path, let_go: str,
                     **first_env: str) -> tuple[str, str, str]:
    """Run a one-attempt stage claimed by a first agent, make it let go (``sigterm`` or ``deactivate``), start a
    second agent; returns the run's id and both agents' names once the run finished."""
    cap, first, second = unique("handover"), unique("leaving"), unique("staying")
    leaving = stack.start_agent(first, [cap], **first_env)
    marker = unique("handed-over")
    stage = {**noop_stage("work", cap, sandbox_command=HANDOVER_COMMAND.format(marker=marker)),
             "retry": {"initial_interval": 1, "maximum_attempts": 1}}
    pipeline = unique("handover")
    await publish(api, {"name": pipeline, "stages": [stage]})
    run_id = await start(api, pipeline, tmp_path)

    async def running() -> list[Path]:  # claimed, and the command has begun in the sandbox
        return list((stack.state / "sandboxes").glob(f"**/{marker}"))

    await poll(running, deadline=60, what="the first agent to run the command")
    if let_go == "sigterm":
        leaving.proc.send_signal(signal.SIGTERM)
    else:
        r = await api.post(f"/v1/agents/{first}/deactivate", params={"handback": "true"}, headers=admin(stack))
        assert r.status_code == 200, r.text
    stack.start_agent(second, [cap])
    run = await wait_run(api, run_id, deadline=90)
    assert run["status"] == "succeeded", run
    # The one attempt the stage had moved to the second agent: the hand-back used up no retry
    log = [(a["attempt"], a["agent"], a["status"]) for a in run["stages"][0]["attempt_log"]]
    assert log == [(1, second, "succeeded")]
    assert "taken over" in run["stages"][0]["result"]["output"]["command_output"]
    released = sql("SELECT agent, (data->>'attempt')::int AS attempt FROM events WHERE run_id = :r "
                   "AND kind = 'stage.attempt.released'", r=run_id)
    assert released == [{"agent": first, "attempt": 1}]
    if let_go == "sigterm":
        assert leaving.proc.wait(timeout=30) == 0
    return run_id, first, second


async def test_sigterm_drain_hands_the_task_over(stack: Stack, api: httpx.AsyncClient, tmp_path: Path) -> None:
    _, first, _ = await _hand_over(stack, api, tmp_path, "sigterm", DEVART_AGENT_DRAIN_GRACE="1")
    kinds = [r["kind"] for r in sql("SELECT kind FROM events WHERE agent = :a ORDER BY id", a=first)]
    assert kinds.index("agent.online") < kinds.index("agent.offline")


async def test_deactivation_with_handback_hands_the_task_over(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    run_id, first, _ = await _hand_over(stack, api, tmp_path, "deactivate")
    # The agent that let go may no longer report on the task: only the new claim's holder could
    row = sql("SELECT id, claimed_by FROM task_attempts WHERE run_id = :r", r=run_id)[0]
    assert row["claimed_by"] != first


async def test_sdk_example_agent_runs_in_a_pipeline(stack: Stack, api: httpx.AsyncClient, tmp_path: Path) -> None:
    name = unique("auditor")
    stack.start_agent(name, ["python", "audit"], "--module", "examples.agents.dependency_audit")

    async def announced() -> bool:
        agent = (await api.get(f"/v1/agents/{name}", headers=admin(stack))).json()
        return "dependency-audit" in agent.get("skills", [])

    await poll(announced, deadline=30, what="the agent to announce its skill")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "1"\ndependencies = ["requests==2.25.0", "click"]\n'
    )
    pipeline = unique("audit")
    await publish(api, {"name": pipeline, "stages": [
        {"name": "audit", "skill": "dependency-audit", "requires": ["python", "audit"]}]})
    run = await wait_run(api, await start(api, pipeline, tmp_path))
    assert run["status"] == "succeeded", run
    output = run["stages"][0]["result"]["output"]
    assert (output["dependencies"], output["vulnerable"]) == (2, 1)
    assert {f["package"] for f in output["findings"]} == {"requests", "click"}
    assert "CVE-2023-32681" in json.dumps(output["findings"])
