"""An agent that cannot claim a task (the API answers 500) gives the message back instead of holding it.

Held unacknowledged, the message would block one of the agent's prefetch slots and its run would wait until the
agent restarts. Given back, it is redelivered, and after the lane's delivery limit it is dead-lettered, where a
person sees it. The API here is a stand-in that fails every claim and answers the agent's other calls.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aio_pika
import httpx
import pytest

from devart.core.contracts import AgentTaskMessage
from devart.core.devstack.services import free_port
from devart.core.messaging.broker_users import amqp_user
from devart.core.messaging.topology import Topology, lane_name
from tests.helpers import poll, unique
from tests.stack import Stack, admin, sql


class FailingApi(BaseHTTPRequestHandler):
    """Answers me, keepalive and lanes like the API; every claim gets a 500."""

    lane = ""
    claims = 0

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.endswith("/lanes"):
            self._reply(200, [FailingApi.lane])
        else:
            self._reply(200, {"name": "x", "capabilities": [], "active": True})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/claim"):
            FailingApi.claims += 1
            self._reply(500, {"detail": "internal error"})
        else:
            self._reply(200, {"active": True, "handback": False})

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def failing_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FailingApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


async def test_a_task_the_agent_cannot_claim_is_given_back_until_dead_lettered(
    stack: Stack, api: httpx.AsyncClient, failing_api: str
) -> None:
    # Given an agent whose API fails every claim, serving a registered lane
    cap = unique("unlucky")
    lane = lane_name([cap])
    FailingApi.lane, FailingApi.claims = lane, 0
    sql("INSERT INTO lanes (name, requires, priorities, created_at) VALUES (:n, :r, '[3]', now())", n=lane,
        r=json.dumps([cap]))
    topology = Topology(prefix=stack.env["AMQP_PREFIX"], delivery_limit=5)
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await topology.declare_exchanges(channel)
        await topology.declare_lane(channel, lane)
        stack.start_agent(unique("agent"), [cap], DEVART_AGENT_API_URL=failing_api)
        # When a task arrives on its lane, sent as the dispatcher sends one (a dead letter without its user_id is
        # dropped: workers.dead_letters)
        task = AgentTaskMessage(task_id=unique("task"), run_id="r", stage="s", attempt=1, lane=lane)
        await exchange.publish(aio_pika.Message(task.model_dump_json(exclude={"priority"}).encode(),
                                                message_id=task.task_id, user_id=amqp_user(stack.env["AMQP_URL"])),
                                routing_key=lane)

        # Then each failed claim gives the message back, and past the delivery limit it is a dead letter
        async def dead() -> list[dict[str, Any]]:
            return [d for d in (await api.get("/v1/dlq", headers=admin(stack))).json() if d["lane"] == lane]

        letter = (await poll(dead, deadline=60, what="the unclaimable task in the DLQ"))[0]
    assert letter["reason"] == "over the lane's delivery limit"
    assert FailingApi.claims >= 5  # redelivered to the same agent: it held nothing back
