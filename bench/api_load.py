"""``POST /v1/runs`` under concurrent clients: an asyncio httpx load generator on loopback.

``clients`` loops each send ``POST /v1/runs`` back to back for ``seconds`` (and at most ``max_requests`` in all),
each on its own connection. Every accepted request starts a real run, so afterwards the benchmark waits for all
of them to finish (through their Temporal handles) and reports how long the stack took to drain them: the next
measurement starts on an idle stack, and the API's figure is what it does while the rest of the stack works.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from temporalio.client import Client

from bench import report
from bench.scale import RUN_DEADLINE_SECONDS, Sample
from bench.stack import bearer
from devart.core.contracts import RunResult, RunStatus


async def load(api_url: str, *, pipeline: str, repo: str, clients: int, seconds: float,
               max_requests: int) -> tuple[Sample, dict[int, int]]:
    """Returns the accepted requests (latencies and run ids, errors = anything but 201) and the status counts."""
    sample, statuses = Sample(), dict[int, int]()
    budget = iter(range(max_requests))
    body = {"pipeline": pipeline, "repo": repo, "trigger": "bench"}
    end = time.perf_counter() + seconds

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=api_url, timeout=60.0, headers=bearer()) as http:
            for _ in budget:
                if time.perf_counter() >= end:
                    return
                began = time.perf_counter()
                try:
                    response = await http.post("/v1/runs", json=body)
                    code = response.status_code
                except httpx.HTTPError as exc:
                    code = 0
                    if len(sample.error_messages) < 5:
                        sample.error_messages.append(f"{type(exc).__name__}: {exc}"[:300])
                statuses[code] = statuses.get(code, 0) + 1
                if code == 201:
                    sample.latencies.append(time.perf_counter() - began)
                    sample.ids.append(response.json()["run_id"])
                else:
                    sample.errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    sample.seconds = time.perf_counter() - began
    return sample, statuses


async def drain(client: Client, run_ids: list[str]) -> dict[str, Any]:
    """Wait for every run to end; count those that did not succeed."""
    began = time.perf_counter()

    async def one(run_id: str) -> bool:
        try:
            handle = client.get_workflow_handle(run_id, result_type=RunResult)
            result = await asyncio.wait_for(handle.result(), RUN_DEADLINE_SECONDS)
            return result.status == RunStatus.SUCCEEDED
        except Exception:
            return False

    ok = await asyncio.gather(*(one(r) for r in run_ids))
    return {"runs": len(run_ids), "failed": ok.count(False), "seconds": round(time.perf_counter() - began, 2)}


async def measure(api_url: str, client: Client, *, pipeline: str, repo: str, clients: int, seconds: float,
                  max_requests: int) -> dict[str, Any]:
    sample, statuses = await load(api_url, pipeline=pipeline, repo=repo, clients=clients, seconds=seconds,
                                  max_requests=max_requests)
    stats = report.stats(sample)
    report.progress(f"api: {stats['per_s']} POST /v1/runs a second over {clients} clients, p50 {stats['p50_ms']} ms; "
                    f"draining {len(sample.ids)} runs")
    return {"clients": clients, "seconds_asked": seconds, "max_requests": max_requests, "post": stats,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "drain": await drain(client, sample.ids)}
