"""Dead letters stay in the organisation they came from, even when an agent forges one naming another's run.

The suite's stack runs with broker users per agent (``DEVART_AMQP_ADMIN_URL``), so RabbitMQ checks every
message's ``user_id`` and the collector (``workers.dead_letters``) files a dead letter by who sent it. These tests
publish as a hostile agent would (aio-pika with the agent's own broker user, no agent process), and check that
genuine dead letters, an agent's poison message and a task over its lane's delivery limit, are still filed under
their run's organisation and can be redriven.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage

from devart.core import settings
from devart.core.contracts import AgentTaskMessage
from devart.core.messaging.broker_users import agent_of_user, amqp_user, broker_username
from devart.core.messaging.topology import DEFAULT_ORG, Topology, lane_name
from tests.api.test_organisations import agent, organisation
from tests.helpers import noop_stage, poll, publish, start, unique, wait_run, wait_stage
from tests.stack import Stack, sql
from tests.workers.test_broker_permissions import broker_url, registered


async def letters(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The dead letters the client's organisation sees, redriven ones included."""
    listed = await client.get("/v1/dlq", params={"include_redriven": True})
    assert listed.status_code == 200, listed.text
    return list(listed.json())


async def letter_of(client: httpx.AsyncClient, what: str, **match: Any) -> dict[str, Any]:
    """Poll the client's organisation's dead letters until one has every field of ``match``."""

    async def found() -> dict[str, Any] | None:
        return next((d for d in await letters(client) if all(d[k] == v for k, v in match.items())), None)

    return await poll(found, deadline=60, what=what)


async def forget(queues: dict[str, list[str]]) -> None:
    """Delete organisations' lanes (queue names by organisation) and exchanges: the session's clean-up knows only
    the default organisation's, and durable quorum queues outlive the test."""
    async with await aio_pika.connect(settings.amqp().amqp_url) as connection:
        for org, names in queues.items():
            topology = Topology.from_settings().for_org(org)
            for name in names:
                await (await connection.channel()).queue_delete(name)
            for exchange in (topology.tasks_exchange, topology.control_exchange):
                await (await connection.channel()).exchange_delete(exchange)


def shell_stage(name: str, capability: str) -> dict[str, Any]:
    """A quick stage of a built-in skill: a new organisation knows ``noop`` only once an agent of its announced it."""
    return {**noop_stage(name, capability), "skill": "shell", "inputs": {"command": "true"}}


def forged(run_id: str, message_id: str, **properties: Any) -> aio_pika.Message:
    """A task message naming ``run_id``, as a hostile agent would write one."""
    body = AgentTaskMessage(task_id=message_id, run_id=run_id, stage="build", attempt=1, lane="build")
    return aio_pika.Message(body.model_dump_json(exclude={"priority"}).encode(), message_id=message_id,
                            content_type="application/json", **properties)


def test_the_collector_reads_senders_and_lanes_back() -> None:
    topology = Topology(prefix="dv", delivery_limit=5)
    assert agent_of_user("dv", broker_username("dv", "builder")) == "builder"
    assert [agent_of_user("dv", u) for u in ("guest", "dv.agent.", "other.agent.builder")] == [None, None, None]
    assert amqp_user("amqp://svc%40x:pw@h:5672/v") == "svc@x" and amqp_user("amqp://h/") == "guest"
    for org in (DEFAULT_ORG, "acme"):
        assert topology.org_of_lane_queue(topology.for_org(org).lane_queue("python+test", 5)) == org
    assert topology.org_of_lane_queue("dv.lane.org.acme.lane.x") == DEFAULT_ORG  # a capability, not a space
    for other in ("dv.org.acme.tasks", "dv.dead-letters", "other.lane.x", "dv.org..lane.x"):
        assert topology.org_of_lane_queue(other) is None, other


async def test_a_forged_dead_letter_never_reaches_the_organisation_it_names(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    # Given: a run waiting in a victim organisation, and an agent of a hostile one connected as its broker user
    victim, hostile = await organisation(api), await organisation(api)
    async with victim, hostile:
        pipeline, waiting = unique("victim"), unique("nobody-serves")
        await publish(victim, {"name": pipeline, "stages": [shell_stage("build", waiting)]})
        run_id = await start(victim, pipeline, tmp_path)
        victim_agent, _ = await registered(victim, unique("victim-cap"))
        _, key = await registered(hostile, unique("hostile-cap"))
        user, url = await broker_url(stack, key)
        topology = Topology.from_settings().for_org((await victim.get("/v1/me")).json()["org"])
        ids = {case: unique(f"forged-{case}") for case in ("own", "none", "services", "other-agent")}
        connection = await aio_pika.connect(url)
        try:
            # When: it publishes dead letters naming that run, with its own user_id (and an x-death that claims
            # the victim's lane), and with none
            channel = await connection.channel(publisher_confirms=True)
            dlx = await channel.get_exchange(topology.dead_letter_exchange, ensure=False)
            death = {"x-death": [{"queue": topology.lane_queue("build"), "reason": "delivery_limit", "count": 5}]}
            await dlx.publish(forged(run_id, ids["own"], user_id=user, headers=death), routing_key="build")
            await dlx.publish(forged(run_id, ids["none"]), routing_key="build")

            # Then: RabbitMQ refuses it the user_id of devart's services and of another organisation's agent
            for case, other in (("services", amqp_user(settings.amqp().amqp_url)),
                                ("other-agent", broker_username(topology.prefix, victim_agent))):
                channel = await connection.channel(publisher_confirms=True)
                dlx = await channel.get_exchange(topology.dead_letter_exchange, ensure=False)
                with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id property set to"):
                    await dlx.publish(forged(run_id, ids[case], user_id=other), routing_key="build")
        finally:
            await connection.close()

        # And: its own letter is filed under its organisation, the one without user_id is dropped with a warning
        # that does not repeat its body, and the victim's dead letters hold none of them
        mine = await letter_of(hostile, "the forged letter in the hostile organisation", message_id=ids["own"])
        assert mine["reason"] == "over the lane's delivery limit"

        async def dropped() -> str | None:
            assert stack.worker is not None
            lines = stack.worker.log.read_text(errors="replace").splitlines()
            return next((line for line in lines if f"message '{ids['none']}'" in line), None)

        warning = await poll(dropped, deadline=60, what="the collector to drop the letter without user_id")
        assert "dropped a dead letter" in warning and run_id not in warning and "no user_id" in warning
        assert not {d["message_id"] for d in await letters(victim)} & set(ids.values())
        rows = sql("SELECT message_id, org_id FROM dead_letters WHERE message_id = ANY(:ids)", ids=list(ids.values()))
        assert rows == [{"message_id": ids["own"], "org_id": (await hostile.get("/v1/me")).json()["org"]}]
        # When: it is redriven (into the hostile organisation's own lane, devart's services publishing it) and
        # bounced there until RabbitMQ dead-letters it with the services' user_id
        hostile_space = topology.for_org(rows[0]["org_id"])
        assert (await hostile.post(f"/v1/dlq/{mine['id']}/redrive")).status_code == 200
        async with await aio_pika.connect(settings.amqp().amqp_url) as connection:
            queue = await hostile_space.declare_lane(await connection.channel(), "build")

            async def bounce(message: AbstractIncomingMessage) -> None:
                await message.reject(requeue=True)

            await queue.consume(bounce)

            # Then: it is filed by the lane it died in, the hostile organisation's, not by the run its body names
            async def again() -> list[dict[str, Any]]:
                return [d for d in await letters(hostile) if d["message_id"] == ids["own"] and d["id"] != mine["id"]]

            await poll(again, deadline=60, what="the redriven forged letter back in the hostile organisation")
        assert not {d["message_id"] for d in await letters(victim)} & set(ids.values())
        assert (await victim.post(f"/v1/runs/{run_id}/cancel")).status_code in (200, 202)
        await wait_run(victim, run_id)
        await forget({topology.org: [topology.lane_queue(lane_name([waiting]))],
                      hostile_space.org: [hostile_space.lane_queue("build")]})


async def test_genuine_dead_letters_keep_their_organisation_and_can_be_redriven(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    # Given: a task of another organisation's run that a broken consumer keeps bouncing
    org_client = await organisation(api)
    async with org_client:
        org = (await org_client.get("/v1/me")).json()["org"]
        capability = unique("genuine")
        lane = lane_name([capability])
        pipeline = unique("genuine")
        await publish(org_client, {"name": pipeline, "stages": [shell_stage("work", capability)]})
        run_id = await start(org_client, pipeline, tmp_path)
        await wait_stage(org_client, run_id, "work", "running")
        topology = Topology.from_settings().for_org(org)
        async with await aio_pika.connect(settings.amqp().amqp_url) as connection:
            channel = await connection.channel()
            queue = await topology.declare_lane(channel, lane)

            async def bounce(message: AbstractIncomingMessage) -> None:
                await message.reject(requeue=True)

            await queue.consume(bounce)
            # Then: RabbitMQ dead-letters it with the dispatcher's user_id, and it is filed under the run's
            # organisation only
            over = await letter_of(org_client, "the bounced task in its organisation's dead letters", lane=lane)
        assert over["reason"] == "over the lane's delivery limit"
        assert sql("SELECT org_id FROM dead_letters WHERE id = :id", id=over["id"]) == [{"org_id": org}]
        assert over["id"] not in {d["id"] for d in await letters(api)}

        # When: an agent of the organisation comes and the dead letter is redriven
        _, child = await agent(stack, org_client, capability)
        try:
            assert (await org_client.post(f"/v1/dlq/{over['id']}/redrive")).status_code == 200
            # Then: the stage that was waiting completes
            run = await wait_run(org_client, run_id, deadline=90)
            assert run["status"] == "succeeded" and len(run["stages"][0]["attempt_log"]) == 1

            # When: a poison message reaches the lane; its agent republishes it with its own user_id
            async with await aio_pika.connect(settings.amqp().amqp_url) as connection:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.get_exchange(topology.tasks_exchange)
                poison = unique("poison")
                await exchange.publish(aio_pika.Message(b'{"not": "a task"', message_id=poison), routing_key=lane)
            # Then: it is filed under the agent's organisation, and can be redriven
            letter = await letter_of(org_client, "the poison message in its organisation", message_id=poison)
            assert "unreadable task message" in letter["reason"]
            assert letter["id"] not in {d["id"] for d in await letters(api)}
            assert (await org_client.post(f"/v1/dlq/{letter['id']}/redrive")).status_code == 200
        finally:
            stack.supervisor.stop(child, grace=5)
        await forget({org: [topology.lane_queue(lane)]})
