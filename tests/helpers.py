"""Polling helpers: tests wait for conditions with a deadline, never with a fixed sleep."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from temporalio.client import Client, WorkflowExecutionStatus

T = TypeVar("T")


async def poll(check: Callable[[], Awaitable[T | None]], *, deadline: float, what: str, every: float = 0.2) -> T:
    """Call ``check`` until it returns something truthy, or fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    last: T | None = None
    while time.monotonic() < end:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {deadline}s waiting for {what} (last: {last!r})")


async def closed_status(temporal: Client, run_id: str, *, deadline: float = 30.0) -> WorkflowExecutionStatus:
    """The run's workflow status once it has closed. The workflow records the run's end, then returns: the API may
    answer that a run ended a moment before Temporal closes its workflow."""

    async def closed() -> WorkflowExecutionStatus | None:
        status = (await temporal.get_workflow_handle(run_id).describe()).status
        return status if status not in (None, WorkflowExecutionStatus.RUNNING) else None

    return await poll(closed, deadline=deadline, what=f"the workflow of {run_id} to close")


async def wait_run(api: httpx.AsyncClient, run_id: str, *, deadline: float = 120.0) -> dict[str, Any]:
    """Poll the API until the run leaves 'running'."""

    async def finished() -> dict[str, Any] | None:
        body = (await api.get(f"/v1/runs/{run_id}")).json()
        return body if body["status"] != "running" else None

    return await poll(finished, deadline=deadline, what=f"run {run_id} to finish", every=0.25)


async def wait_stage(api: httpx.AsyncClient, run_id: str, stage: str, status: str, *, deadline: float = 60.0) -> dict:
    async def reached() -> dict[str, Any] | None:
        body = (await api.get(f"/v1/runs/{run_id}")).json()
        found = next(s for s in body["stages"] if s["name"] == stage)
        return body if found["status"] == status else None

    return await poll(reached, deadline=deadline, what=f"stage {stage} of {run_id} to be {status}")


def download_cache(name: str) -> Path:
    """A folder kept between test sessions for what the tests download (pinned sdists, the package proxy's files),
    so a repeated session does not fetch them again. ``DEVART_TEST_CACHE`` moves it."""
    import os

    base = Path(os.environ.get("DEVART_TEST_CACHE") or Path.home() / ".cache" / "devart-tests")
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def publish(api: httpx.AsyncClient, definition: dict[str, Any]) -> dict[str, Any]:
    response = await api.post("/v1/pipelines", json=definition)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def start(api: httpx.AsyncClient, pipeline: str, repo: Path, **params: str) -> str:
    response = await api.post("/v1/runs", json={"pipeline": pipeline, "repo": str(repo), "params": params})
    assert response.status_code == 201, response.text
    return str(response.json()["run_id"])


def noop_stage(name: str, capability: str, **inputs: Any) -> dict[str, Any]:
    """A stage running the ``noop`` skill on a capability only this test's agents have."""
    return {
        "name": name, "skill": "noop", "requires": [capability], "inputs": inputs, "timeout": 120,
        "heartbeat_timeout": 3,
        "retry": {"initial_interval": 1, "backoff_coefficient": 2.0, "maximum_interval": 5, "maximum_attempts": 3},
    }
