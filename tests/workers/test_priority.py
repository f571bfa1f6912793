"""Run priorities: 1 (lowest) to 5 (highest), strict within a lane, one queue per priority band in use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aio_pika
import httpx

from devart.core.messaging.topology import Topology, band_key, lane_name
from tests.cli.test_cli import devart
from tests.helpers import noop_stage, poll, publish, unique, wait_run
from tests.stack import Stack, admin, register_agent, sql

#: Runs queued behind the slow run at priority 1 and at priority 5. The busy agent holds one of each (prefetch 1 per
#: band consumer), so when the first priority-5 task finishes the other one is the last in its queue: the case where
#: acknowledging before choosing the next would let the broker push it to us while our get comes back empty.
LOW, HIGH = 3, 2


async def start(api: httpx.AsyncClient, pipeline: str, repo: Path, priority: int) -> str:
    response = await api.post("/v1/runs", json={"pipeline": pipeline, "repo": str(repo), "priority": priority})
    assert response.status_code == 201, response.text
    return str(response.json()["run_id"])


async def ready(stack: Stack, lane: str, priority: int) -> int | None:
    """Messages waiting in a band's queue on the broker; None when the band's queue does not exist."""
    topology = Topology(prefix=stack.env["AMQP_PREFIX"], delivery_limit=0)
    async with await aio_pika.connect(stack.env["AMQP_URL"]) as connection:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(topology.lane_queue(lane, priority), passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return None
        count = queue.declaration_result.message_count
        return int(count) if count is not None else 0


async def test_high_priority_runs_first_within_a_busy_lane(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    # Given an agent with one slot, busy with a slow run on a lane of its own
    cap, name = unique("prio"), unique("prio-agent")
    lane = lane_name([cap])
    stack.start_agent(name, [cap], "--concurrency", "1")
    slow, quick = unique("prio-slow"), unique("prio-quick")
    await publish(api, {"name": slow, "stages": [noop_stage("work", cap, sleep=600)]})
    await publish(api, {"name": quick, "stages": [noop_stage("work", cap)]})
    slow_run = await start(api, slow, tmp_path, 3)

    async def busy() -> bool:
        return bool(sql("SELECT 1 FROM task_attempts WHERE run_id = :r AND claimed_by = :a", r=slow_run, a=name))

    await poll(busy, deadline=60, what="the agent to claim the slow run")
    # When priority-1 runs, then priority-5 runs, queue up behind it (one priority-5 run started by the CLI)
    low = [await start(api, quick, tmp_path, 1) for _ in range(LOW)]
    high = [await start(api, quick, tmp_path, 5) for _ in range(HIGH - 1)]
    done = devart("run", quick, "--repo", str(tmp_path), "--priority", "5", "--json", env=stack.env)
    assert done.returncode == 0, done.stderr
    high.append(sql("SELECT id FROM runs WHERE pipeline = :p AND trigger = 'cli'", p=quick)[0]["id"])

    async def all_queued() -> bool:
        # Each band's consumer of the busy agent holds one message (prefetch 1); the rest wait on the broker.
        return await ready(stack, lane, 1) == LOW - 1 and await ready(stack, lane, 5) == HIGH - 1

    await poll(all_queued, deadline=60, what="every queued task to be published to its band")
    # And the slow run is cancelled, which frees the agent's slot
    assert (await api.post(f"/v1/runs/{slow_run}/cancel")).status_code == 202
    # Then every priority-5 task is claimed before any of the waiting priority-1 tasks
    for run_id in low + high:
        run = await wait_run(api, run_id, deadline=120)
        assert run["status"] == "succeeded", run
    claimed = {
        r["run_id"]: r["claimed_at"]
        for r in sql("SELECT run_id, claimed_at FROM task_attempts WHERE run_id = ANY(:ids)", ids=low + high)
    }
    order = sorted(claimed, key=lambda run_id: claimed[run_id])
    assert set(order[:HIGH]) == set(high), [(r, 5 if r in high else 1) for r in order]
    assert all(sql("SELECT claimed_by FROM task_attempts WHERE run_id = :r", r=r)[0]["claimed_by"] == name
               for r in order)
    # And runs show their priority; the lane has exactly the bands that were used
    assert (await api.get(f"/v1/runs/{high[0]}")).json()["priority"] == 5
    listed = {r["run_id"]: r["priority"] for r in (await api.get("/v1/runs", params={"pipeline": quick})).json()}
    assert {listed[r] for r in low} == {1} and {listed[r] for r in high} == {5}
    assert sql("SELECT priorities FROM lanes WHERE name = :n", n=lane) == [{"priorities": [1, 3, 5]}]
    for priority in (2, 4):
        assert await ready(stack, lane, priority) is None
    key = register_agent(unique("prio-lister"), [cap])
    lanes = (await api.get("/v1/agent/lanes", headers={"Authorization": f"Bearer {key}"})).json()
    assert lanes == sorted(band_key(lane, p) for p in (1, 3, 5))


async def test_priority_out_of_range_is_refused(stack: Stack, api: httpx.AsyncClient, tmp_path: Path) -> None:
    pipeline = unique("prio-bad")
    await publish(api, {"name": pipeline, "stages": [noop_stage("work", unique("prio-bad"))]})
    before = sql("SELECT count(*) AS n FROM runs")[0]["n"]
    for bad in (0, 6, "high"):
        r = await api.post("/v1/runs", json={"pipeline": pipeline, "repo": str(tmp_path), "priority": bad})
        assert r.status_code == 422, r.text
        assert "priority" in r.text, r.text
    r = await api.post("/v1/runs", json={"pipeline": pipeline, "repo": str(tmp_path), "priority": 6})
    assert "from 1 (lowest) to 5 (highest), got 6" in r.text
    done = devart("run", pipeline, "--repo", str(tmp_path), "--priority", "0", env=stack.env)
    assert done.returncode == 1 and "--priority must be from 1 (lowest) to 5 (highest)" in done.stderr
    assert sql("SELECT count(*) AS n FROM runs")[0]["n"] == before


async def test_dead_letter_is_redriven_to_its_band(stack: Stack, api: httpx.AsyncClient, tmp_path: Path) -> None:
    # Given a priority-5 task that a broken consumer keeps bouncing until RabbitMQ dead-letters it
    cap = unique("prio-bounce")
    lane = lane_name([cap])
    pipeline = unique("prio-bounce")
    await publish(api, {"name": pipeline, "stages": [noop_stage("work", cap)]})
    run_id = await start(api, pipeline, tmp_path, 5)
    topology = Topology(prefix=stack.env["AMQP_PREFIX"], delivery_limit=5)
    async with await aio_pika.connect(stack.env["AMQP_URL"]) as connection:
        channel = await connection.channel()

        async def declared() -> bool:
            return await ready(stack, lane, 5) is not None

        await poll(declared, deadline=60, what="the band-5 queue of the lane")
        queue = await topology.declare_lane(channel, lane, 5)

        async def bounce(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.reject(requeue=True)

        await queue.consume(bounce)

        async def dead() -> list[dict[str, Any]]:
            rows = (await api.get("/v1/dlq", headers=admin(stack))).json()
            return [d for d in rows if d["lane"] == band_key(lane, 5)]

        letter = (await poll(dead, deadline=60, what="the bounced task in the DLQ"))[0]
    # When the dead letter is redriven
    assert (await api.post(f"/v1/dlq/{letter['id']}/redrive", headers=admin(stack))).status_code == 200
    # Then it waits in the band-5 queue (the default band was never used on this lane), and an agent completes it
    assert await ready(stack, lane, 5) == 1 and await ready(stack, lane, 3) is None
    stack.start_agent(unique("prio-rescuer"), [cap])
    run = await wait_run(api, run_id, deadline=60)
    assert run["status"] == "succeeded" and len(run["stages"][0]["attempt_log"]) == 1


async def test_a_pipeline_sets_the_default_priority_of_its_runs(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    cap = unique("urgent")
    stack.start_agent(unique("agent"), [cap])
    pipeline = unique("urgent")
    await publish(api, {"name": pipeline, "priority": 5, "stages": [noop_stage("work", cap)]})
    # A run that names no priority gets the pipeline's, one that names one keeps its own
    by_default = (await api.post("/v1/runs", json={"pipeline": pipeline, "repo": str(tmp_path)})).json()["run_id"]
    explicit = await start(api, pipeline, tmp_path, 1)
    for run_id, expected in ((by_default, 5), (explicit, 1)):
        run = await wait_run(api, run_id)
        assert run["status"] == "succeeded" and run["priority"] == expected, run
    attempts = sql("SELECT run_id, input->>'priority' AS priority FROM task_attempts WHERE run_id IN (:a, :b)",
                   a=by_default, b=explicit)
    assert {r["run_id"]: r["priority"] for r in attempts} == {by_default: "5", explicit: "1"}
    # A pipeline's priority is checked like the rest of it
    response = await api.post("/v1/pipelines", json={"name": unique("bad"), "priority": 9,
                                                     "stages": [noop_stage("work", cap)]})
    assert response.status_code == 422 and "priority" in response.text, response.text
