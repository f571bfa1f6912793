"""``python -m bench.floor_consumer``: the other process of the floor ladder's hop, completing tasks by token.

It consumes the quorum queue ``bench.floor`` publishes to and, for each message, completes the activity with the
Temporal client by its task token; a message asking for the claim first heartbeats the activity by token, as
devart's claim does (``domain.tasks.claim``), and completes it after, with the milliseconds from the activity's
start (as devart's attempt row is written, before the publish) to the heartbeat's answer appended to the result:
the floor of devart's queued → claimed. It is a process of its own, as devart's
agents and API are, so the hop pays a real process boundary and its CPU is counted apart (``bench.floor``).

It prints ``ready`` on stdout once it consumes; it stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from temporalio.client import Client

from devart.core.telemetry import tracing as telemetry
from devart.core.temporal import connect

#: As many unacknowledged tasks as the benchmark's agents hold between them (4 × 32 in the full run).
PREFETCH = 128


async def complete(client: Client, message: AbstractIncomingMessage) -> None:
    """Heartbeat (the claim) when asked, complete by token, then acknowledge the message."""
    body = json.loads(message.body)
    handle = client.get_async_activity_handle(task_token=base64.b64decode(body["token"]))
    result = body["result"]
    if body["claim"]:
        await handle.heartbeat({"claimed_by": "bench-floor"})
        result += f" {(time.time() - body['queued_at']) * 1e3:.3f}"  # one machine, one clock
    await handle.complete(result)
    await message.ack()


async def serve(amqp_url: str, queue_name: str, temporal: str) -> None:
    telemetry.setup("devart-bench-floor")  # the same tracing as devart's API, which completes its tasks
    client = await connect(temporal)
    connection = await aio_pika.connect(amqp_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running: set[asyncio.Task[None]] = set()

    async def on_message(message: AbstractIncomingMessage) -> None:
        # Each task completes on its own, so one slow RPC does not hold the others back.
        task = asyncio.create_task(complete(client, message))
        running.add(task)
        task.add_done_callback(running.discard)

    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.consume(on_message)
        print("ready", flush=True)
        await stop.wait()
        if running:
            await asyncio.wait(running, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_consumer", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--temporal", required=True, help="the Temporal server's address")
    args = parser.parse_args()
    asyncio.run(serve(args.amqp_url, args.queue, args.temporal))


if __name__ == "__main__":
    main()
