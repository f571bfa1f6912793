"""/metrics parses with the Prometheus client's parser and moves when runs happen."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import noop_stage, poll, publish, start, unique, wait_run
from tests.stack import Stack


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_metrics_move_with_runs(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    worker_metrics = f"http://127.0.0.1:{stack.env['DEVART_WORKER_METRICS_PORT']}/metrics"
    sdk_metrics = f"http://127.0.0.1:{stack.env['DEVART_WORKER_SDK_METRICS_PORT']}/metrics"
    cap, name = unique("metrics"), unique("metrics")
    stack.start_agent(unique("agent"), [cap])
    await publish(api, {"name": name, "stages": [noop_stage("only", cap, fail_attempts=1)]})
    before_api = (await api.get("/metrics")).text
    assert sample(before_api, "devart_runs_started_total", pipeline=name) == 0
    run = await wait_run(api, await start(api, name, tmp_path))
    assert run["status"] == "succeeded"
    after_api = (await api.get("/metrics")).text
    assert sample(after_api, "devart_runs_started_total", pipeline=name, trigger="api") == 1
    # The agents report to the agents' API: the reports are counted there
    reports = httpx.get(f"{stack.agents_api_url}/metrics", timeout=5).text
    assert sample(reports, "devart_tasks_reported_total", skill="noop", outcome="failed") >= 1

    async def worker_counted() -> str | None:
        text = httpx.get(worker_metrics, timeout=5).text
        return text if sample(text, "devart_runs_finished_total", pipeline=name, outcome="succeeded") == 1 else None

    text = await poll(worker_counted, deadline=30, what="the worker's metrics")
    assert sample(text, "devart_stage_retries_total", pipeline=name, stage="only") == 1
    assert sample(text, "devart_stage_duration_seconds_count", pipeline=name, stage="only") == 1
    sdk = httpx.get(sdk_metrics, timeout=5).text
    assert any(f.name.startswith("temporal_") for f in text_string_to_metric_families(sdk))
