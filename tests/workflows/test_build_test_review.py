"""build-test-review on the sample repository, end to end: real counts and findings via API, CLI and history."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from tests.helpers import start, wait_run
from tests.stack import SAMPLE_REPO, Stack

#: Set to re-record the histories that test_replay.py replays (after an intended workflow change).
RECORD = os.environ.get("DEVART_RECORD_HISTORIES") == "1"
HISTORIES = Path(__file__).parent / "histories"

#: The sample's own suite, counted by hand: see examples/sample-app/tests.
SAMPLE_PASSED, SAMPLE_SKIPPED, SAMPLE_XFAILED = 18, 1, 1


def scrubbed(history_json: str, stack: Stack) -> str:
    """The history with this machine's folders replaced by neutral ones (in payloads, base64-encoded JSON, too)."""
    root = str(Path(__file__).resolve().parents[2])
    swaps = [(str(stack.state), "/var/lib/devart"), (root, "/srv/devart"), (sys.prefix, "/srv/devart/.venv")]

    def walk(node: object) -> object:
        if isinstance(node, str):  # a failure's stack trace names this machine's folders too
            for old, new in swaps:
                node = node.replace(old, new)
            return node
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            data = out.get("data")
            if isinstance(data, str):
                text = base64.b64decode(data).decode("utf-8", errors="surrogateescape")
                for old, new in swaps:
                    text = text.replace(old, new)
                out["data"] = base64.b64encode(text.encode("utf-8", errors="surrogateescape")).decode()
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return json.dumps(walk(json.loads(history_json)), indent=1)


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devart.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **stack.env})


async def test_build_test_review_on_the_sample(
    api: httpx.AsyncClient, temporal: Client, stack: Stack, pool: dict
) -> None:
    run_id = await start(api, "build-test-review", SAMPLE_REPO)
    run = await wait_run(api, run_id, deadline=240)
    assert run["status"] == "succeeded", json.dumps(run, indent=1, default=str)[:4000]
    stages = {s["name"]: s for s in run["stages"]}
    build = stages["build"]["result"]["output"]
    assert build["wheel"].endswith(".whl") and build["size_bytes"] > 0 and build["top_level"] == ["textstats"]
    tests = stages["test"]["result"]["output"]
    counts = (tests["passed"], tests["failed"], tests["skipped"], tests["xfailed"])
    assert counts == (SAMPLE_PASSED, 0, SAMPLE_SKIPPED, SAMPLE_XFAILED)
    lint_codes = {f["code"] for f in stages["lint"]["result"]["output"]["findings"]}
    review = stages["review"]["result"]["output"]
    assert review["reviewer"] == "static"
    assert lint_codes and lint_codes <= {f["rule"] for f in review["findings"]}
    # The same through the CLI ...
    shown = cli(stack, "runs", "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["stages"][1]["result"]["output"]["passed"] == SAMPLE_PASSED
    # ... and in Temporal's history: four agent tasks completed, with the test counts in the result payload
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    completed = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
    payloads = [p.data for e in completed for p in e.activity_task_completed_event_attributes.result.payloads]
    if RECORD:
        (HISTORIES / "build-test-review-succeeded.json").write_text(scrubbed(history.to_json(), stack))
    assert sum(b'"skill"' not in p and b'"passed":18' in p.replace(b" ", b"") for p in payloads) == 1


async def test_failing_test_fails_the_run_through_the_cli(stack: Stack, pool: dict, temporal: Client) -> None:
    done = cli(stack, "run", "build-test-review", "--repo", str(SAMPLE_REPO), "-p", "pytest_args=--runxfail",
               "--wait", "--json")
    assert done.returncode == 1, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "failed"
    stages = {s["name"]: s for s in run["stages"]}
    assert stages["test"]["status"] == "failed" and stages["test"]["result"]["output"]["failed"] == 1
    assert "TestsFailed" in stages["test"]["error"]
    # The retry re-ran only the failing test, which failed again: broken, so the stage failed
    assert [a["status"] for a in stages["test"]["attempt_log"]] == ["failed", "failed"]
    assert "broken: tests/test_slug.py::test_slugify_transliterates_accented_letters" in stages["test"]["error"]
    assert stages["review"]["status"] == "skipped" and stages["lint"]["status"] == "succeeded"
    if RECORD:
        history = await temporal.get_workflow_handle(run["run_id"]).fetch_history()
        (HISTORIES / "build-test-review-failed.json").write_text(scrubbed(history.to_json(), stack))
