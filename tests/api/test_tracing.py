"""One run, one trace: API → workflow → activities → AMQP publish → agent → sandbox commands → the agents' API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.helpers import noop_stage, poll, publish, unique, wait_run
from tests.otlp_receiver import ReceivedSpan
from tests.stack import Stack


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[str]:
    names, current = [], span
    while current.parent_id and current.parent_id in by_id:
        current = by_id[current.parent_id]
        names.append(current.name)
    return names


async def test_a_run_is_one_trace(api: httpx.AsyncClient, stack: Stack, tmp_path: Path) -> None:
    cap, name = unique("traced"), unique("traced")
    agent = stack.start_agent(unique("agent"), [cap])
    await publish(api, {"name": name, "stages": [noop_stage("only", cap, sandbox_command="echo traced")]})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"[:-6] + unique("x")[-6:].replace("-", "0")
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    created = await api.post("/v1/runs", json={"pipeline": name, "repo": str(tmp_path)},
                             headers={"traceparent": traceparent})
    assert created.status_code == 201
    run = await wait_run(api, created.json()["run_id"])
    assert run["status"] == "succeeded"

    def services() -> set[str]:
        return {s.service for s in stack.receiver.trace(trace_id)}

    async def complete() -> list[ReceivedSpan] | None:
        spans = stack.receiver.trace(trace_id)
        names = {s.name for s in spans}
        done = any("complete" in n for n in names) and {"RunWorkflow:PipelineWorkflow", "report"} <= names
        if not done or not {"devart-api", "devart-worker", "devart-agent", "devart-agent-api"} <= services():
            return None
        # Each process exports in its own batches: wait until the report's chain has reached the receiver whole
        by_id = {s.span_id: s for s in spans}
        completion = [s for s in spans if s.service == "devart-agent-api" and "complete" in s.name
                      and s.name.startswith("POST")]
        return spans if completion and "POST /v1/runs" in ancestors(completion[0], by_id) else None

    spans = await poll(complete, deadline=30, what="every process to export its spans")
    by_id = {s.span_id: s for s in spans}
    names = {s.name for s in spans}
    for expected in ("POST /v1/runs", "StartWorkflow:PipelineWorkflow", "RunWorkflow:PipelineWorkflow",
                     "StartActivity:run_agent_task", "RunActivity:run_agent_task", "agent task", "claim",
                     "skill noop", "sandbox exec sandbox_command", "report"):
        assert expected in names, (expected, sorted(names))
    publish_span = next(s for s in spans if s.name.startswith("publish "))
    assert "RunActivity:run_agent_task" in ancestors(publish_span, by_id)
    agent_task = next(s for s in spans if s.name == "agent task")
    assert agent_task.service == "devart-agent" and by_id[agent_task.parent_id] == publish_span
    exec_span = next(s for s in spans if s.name == "sandbox exec sandbox_command")
    assert "agent task" in ancestors(exec_span, by_id)
    completion = next(s for s in spans if s.service == "devart-agent-api" and "complete" in s.name
                      and s.name.startswith("POST"))
    assert {"report", "agent task", "POST /v1/runs"} <= set(ancestors(completion, by_id))

    # The agent's structured log lines carry the same trace and the run id
    lines = [json.loads(line) for line in agent.log.read_text().splitlines() if line.startswith("{")]
    claimed = [e for e in lines if e["message"].startswith("claimed")]
    assert claimed and claimed[0]["trace_id"] == trace_id and claimed[0]["run_id"] == run["run_id"]
