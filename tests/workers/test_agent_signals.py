"""SIGTERM: an idle agent stops at once, also when the API it would say goodbye to is gone; the pipeline worker
finishes the activities it runs before it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import noop_stage, poll, publish, start, unique, wait_run
from tests.stack import Stack, admin, sql
from tests.workers.relay import Relay

#: How soon an idle agent must be gone after SIGTERM (the supervisor's grace is 10 s).
PROMPT_EXIT_SECONDS = 3.0


async def _idle_agent_exit_seconds(stack: Stack, api: httpx.AsyncClient, *, cut_api: bool) -> float:
    """Start an idle agent reaching the API through a relay, optionally cut the relay, SIGTERM it and time its exit."""
    relay = Relay("127.0.0.1", int(stack.env["DEVART_API_PORT"]))
    await relay.start()
    name = unique("idle")
    agent = stack.start_agent(name, [unique("idle-cap")], DEVART_AGENT_API_URL=relay.url)

    async def idle() -> bool:
        return (await api.get(f"/v1/agents/{name}", headers=admin(stack))).json().get("status") == "idle"

    await poll(idle, deadline=30, what="the agent to say it is idle")
    if cut_api:
        await relay.cut()
    began = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)

    async def exited() -> bool:  # polled, not waited for: the relay runs in this event loop
        return agent.proc.poll() is not None

    await poll(exited, deadline=30, what="the agent to exit", every=0.05)
    took = time.monotonic() - began
    await relay.cut()
    assert agent.proc.returncode == 0, f"the agent exited with {agent.proc.returncode}"
    print(f"idle agent{' without its API' if cut_api else ''} exited {took:.2f}s after SIGTERM")  # noqa: T201
    return took


async def test_an_idle_agent_exits_promptly_on_sigterm(stack: Stack, api: httpx.AsyncClient) -> None:
    took = await _idle_agent_exit_seconds(stack, api, cut_api=False)
    assert took < PROMPT_EXIT_SECONDS, f"an idle agent took {took:.1f}s to exit on SIGTERM"


async def test_an_idle_agent_whose_api_is_gone_exits_promptly_on_sigterm(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    # As in `devart down` or a test session's end, where the API stops beside the agents: the agent's goodbye
    # (keepalive "draining", then "offline") must not keep it past the supervisor's grace.
    took = await _idle_agent_exit_seconds(stack, api, cut_api=True)
    assert took < PROMPT_EXIT_SECONDS, f"an idle agent without its API took {took:.1f}s to exit on SIGTERM"


async def test_the_pipeline_worker_finishes_its_activities_on_sigterm(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    # Given the session's worker replaced by one whose dispatch waits at a gate, and an agent for the stage
    cap = unique("graceful")
    agent = unique("graceful-agent")
    stack.start_agent(agent, [cap])
    pipeline = unique("graceful")
    await publish(api, {"name": pipeline, "stages": [noop_stage("work", cap)]})
    assert stack.worker is not None
    stack.supervisor.stop(stack.worker)
    gate = tmp_path / "gate"
    gate.mkdir()
    log = stack.state / "logs" / f"{unique('gated-worker')}.log"
    with open(log, "ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.workers.gated_worker"], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **stack.env, "DEVART_LOG_FORMAT": "json", "DEVART_TEST_GATE": str(gate)},
            start_new_session=True)
    try:
        run_id = await start(api, pipeline, tmp_path)

        async def in_flight() -> bool:
            return (gate / "in-flight").exists()

        await poll(in_flight, deadline=60, what="the dispatch to reach the gate")
        # When the worker is told to stop while that activity runs, and the activity may go on only afterwards
        worker.send_signal(signal.SIGTERM)

        async def stopping() -> bool:
            return "pipeline worker stopping" in log.read_text()

        await poll(stopping, deadline=30, what="the worker to begin stopping")
        (gate / "open").touch()

        async def exited() -> bool:
            return worker.poll() is not None

        await poll(exited, deadline=30, what="the worker to exit")
        # Then the worker exits cleanly, having finished the activity: the attempt was published, not retried
        assert worker.returncode == 0, log.read_text()[-3000:]
        published = sql("SELECT attempt, heartbeat_at FROM task_attempts WHERE run_id = :r", r=run_id)
        assert [p["attempt"] for p in published] == [1] and published[0]["heartbeat_at"] is not None, published
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        stack.worker = stack.supervisor.worker()
    run = await wait_run(api, run_id, deadline=90)
    assert run["status"] == "succeeded", run
    assert [(a["attempt"], a["agent"]) for a in run["stages"][0]["attempt_log"]] == [(1, agent)]
