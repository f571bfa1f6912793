"""Agents on SIGTERM: an idle agent stops at once, also when the API it would say goodbye to is gone."""

from __future__ import annotations

import signal
import time

import httpx

from tests.helpers import poll, unique
from tests.stack import Stack, admin
from tests.workers.relay import Relay

#: How soon an idle agent must be gone after SIGTERM (the supervisor's grace is 10 s).
PROMPT_EXIT_SECONDS = 3.0


async def _idle_agent_exit_seconds(stack: Stack, api: httpx.AsyncClient, *, cut_api: bool) -> float:
    """Start an idle agent reaching the API through a relay, optionally cut the relay, SIGTERM it and time its exit."""
    relay = Relay("127.0.0.1", int(stack.env["DEVART_API_PORT"]))
    await relay.start()
    name = unique("idle")
    agent = stack.start_agent(name, [unique("idle-cap")], DEVART_API_URL=relay.url)

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
