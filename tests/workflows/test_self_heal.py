"""Self-healing retries on the real stack: an out-of-memory stage succeeds on its next attempt with more memory,
the remedy shows on the run, in the feed and in Temporal's history, and the knowledge base learns the fix, so a
second run of the same failure is healed by the learned entry; a failure no remedy fixes still fails."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from tests.helpers import closed_status, noop_stage, publish, start, unique, wait_run
from tests.stack import Stack, sql
from tests.workflows.test_build_test_review import cli

#: Allocates 180 MiB and touches it: killed under 128 MiB, fine under 256.
HOG = f"{sys.executable} -c 'b = bytearray(180 << 20); print(len(b))'"


def oom_stage(cap: str, memory_mb: int = 128, **extra: object) -> dict[str, object]:
    stage = noop_stage("hog", cap, sandbox_command=HOG)
    stage["sandbox"] = {"memory_mb": memory_mb}
    stage["retry"] = {**stage["retry"], "maximum_attempts": 3}  # type: ignore[dict-item]
    return {**stage, **extra}


async def learn_steps(temporal: Client, run_id: str) -> list[dict[str, Any]]:
    """The inputs of the run's ``learn_from_stage`` activities, as the history holds them."""
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    return [json.loads(event.activity_task_scheduled_event_attributes.input.payloads[0].data)
            for event in history.events if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and event.activity_task_scheduled_event_attributes.activity_type.name == "learn_from_stage"]


async def test_out_of_memory_is_healed_and_the_fix_learned(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    # Given a stage whose command needs more memory than its sandbox has
    cap = unique("hog")
    stack.start_agent(unique("agent"), [cap])
    name = unique("oom")
    await publish(api, {"name": name, "stages": [oom_stage(cap)]})
    # When it runs
    run = await wait_run(api, await start(api, name, tmp_path), deadline=180)
    # Then attempt 1 was killed for memory, and attempt 2 ran with more and succeeded
    stage = run["stages"][0]
    assert run["status"] == "succeeded", [(a.get("error"), a.get("remedies")) for a in stage["attempt_log"]]
    assert [a["status"] for a in stage["attempt_log"]] == ["failed", "succeeded"], stage["attempt_log"]
    assert "OutOfMemory" in (stage["attempt_log"][0].get("error") or "")
    remedies = stage["result"]["remedies"]
    assert [(r["name"], r["attempt"], r["after"], r["change"]) for r in remedies] == [
        ("more_memory", 2, "OutOfMemory", "memory 128 -> 256 MiB")]
    # And the remedy is in the feed and in the workflow's history
    events = (await api.get("/v1/events", params={"run_id": run["run_id"]})).json()
    assert any(e["kind"] == "stage.remedy" and "more_memory" in e["message"] for e in events)
    assert await closed_status(temporal, run["run_id"])
    learned = await learn_steps(temporal, run["run_id"])
    assert learned and learned[0]["remedies"][0]["name"] == "more_memory"
    # And the knowledge base learned the pair: this failure, fixed by more memory
    entries = sql("SELECT remedy, applied, succeeded, source, run_id FROM knowledge_entries WHERE run_id = :r "
                  "AND remedy IS NOT NULL", r=run["run_id"])
    assert [(e["remedy"], e["applied"], e["succeeded"], e["source"]) for e in entries] == [
        ("more_memory", 1, 1, "learned")]

    # When the same failure happens in a second run
    second = await wait_run(api, await start(api, name, tmp_path), deadline=180)
    # Then the learned entry heals it, and its record counts the success
    assert second["status"] == "succeeded", second
    assert await closed_status(temporal, second["run_id"])  # learn_from_stage counts the outcome before it closes
    healed = second["stages"][0]["result"]["remedies"]
    assert len(healed) == 1 and healed[0]["entry_id"] is not None
    record = sql("SELECT applied, succeeded FROM knowledge_entries WHERE id = :i", i=healed[0]["entry_id"])[0]
    assert (record["applied"], record["succeeded"]) == (2, 2)


async def test_a_deterministic_failure_still_fails_after_its_retries(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    # Given a stage whose command fails whatever its limits, and a self-healing policy
    cap = unique("broken")
    stack.start_agent(unique("agent"), [cap])
    name = unique("broken")
    stage = noop_stage("broken", cap, fail_attempts=9)
    await publish(api, {"name": name, "stages": [stage]})
    run = await wait_run(api, await start(api, name, tmp_path), deadline=120)
    # Then every attempt ran and the run failed: no remedy hides a real failure
    assert run["status"] == "failed", run
    assert [a["status"] for a in run["stages"][0]["attempt_log"]] == ["failed"] * 3
    assert run["stages"][0]["result"]["remedies"] == []
    assert await closed_status(temporal, run["run_id"]) == WorkflowExecutionStatus.FAILED
    # And the failure is on record for the next run to find
    recorded = sql("SELECT error_type FROM knowledge_entries WHERE run_id = :r", r=run["run_id"])
    assert {r["error_type"] for r in recorded} == {"Transient"}


async def test_self_heal_off_applies_nothing(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, tmp_path: Path
) -> None:
    cap = unique("hog")
    stack.start_agent(unique("agent"), [cap])
    name = unique("oom-off")
    await publish(api, {"name": name, "stages": [oom_stage(cap, self_heal="off")]})
    # When it runs from the CLI, waiting: the run failed is its exit code
    done = cli(stack, "run", name, "--repo", str(tmp_path), "--wait", "--json")
    assert done.returncode == 1, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    run = await wait_run(api, run_id, deadline=30)
    # OutOfMemory is not retried without a remedy to apply, and the run failed everywhere: API, feed, Temporal
    assert run["status"] == "failed", run
    assert [a["status"] for a in run["stages"][0]["attempt_log"]] == ["failed"]
    assert run["stages"][0]["result"]["remedies"] == []
    events = (await api.get("/v1/events", params={"run_id": run_id})).json()
    assert [e["data"].get("status") for e in events if e["kind"] == "run.finished"] == ["failed"]
    assert not any(e["kind"] == "stage.remedy" for e in events)
    assert await closed_status(temporal, run_id) == WorkflowExecutionStatus.FAILED
