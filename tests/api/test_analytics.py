"""Analytics figures match a hand-computed expectation for a seeded set of runs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.helpers import unique
from tests.stack import Stack, sql

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def seed_run(pipeline: str, n: int, status: str, test_seconds: float, micros: int, retries: int) -> None:
    start = T0 + timedelta(hours=n)
    stages = [
        {"name": "build", "status": "succeeded", "started_at": start.isoformat(),
         "finished_at": (start + timedelta(seconds=10)).isoformat()},
        {"name": "test", "status": status, "started_at": (start + timedelta(seconds=10)).isoformat(),
         "finished_at": (start + timedelta(seconds=10 + test_seconds)).isoformat()},
    ]
    run_id = f"{pipeline}-{n}"
    sql("INSERT INTO runs (id, pipeline, pipeline_version, repository, trigger, params, status, stages, created_at, "
        "finished_at) VALUES (:id, :p, 1, '/srv/repo', 'api', '{}', :s, CAST(:st AS json), :c, :f)",
        id=run_id, p=pipeline, s=status, st=json.dumps(stages), c=start, f=start + timedelta(seconds=20 + test_seconds))
    for attempt in range(1, retries + 2):
        sql("INSERT INTO task_attempts (id, run_id, stage, attempt, lane, skill, task_token, heartbeat_timeout, "
            "wait_timeout, input, status, late_reports, cost_micros, created_at) VALUES (:id, :r, 'test', :a, "
            "'python+test', 'test', :tok, 30, 600, '{}', 'succeeded', 0, :m, :c)",
            id=f"{run_id}-{attempt}", r=run_id, a=attempt, tok=b"x", m=micros if attempt == 1 else 0, c=start)


async def test_analytics_match_a_hand_computed_expectation(
    api: httpx.AsyncClient, stack: Stack, tmp_path: Path
) -> None:
    # Given four finished runs: test stage 3, 5, 7 s (succeeded) and one failure; one retry; known costs
    pipeline = unique("seeded")
    seed_run(pipeline, 0, "succeeded", 3, 1_000_000, 0)
    seed_run(pipeline, 1, "succeeded", 7, 2_000_000, 1)
    seed_run(pipeline, 2, "succeeded", 5, 500_000, 0)
    seed_run(pipeline, 3, "failed", 100, 250_000, 0)
    data = (await api.get("/v1/analytics", params={"pipeline": pipeline})).json()
    (p,) = data["pipelines"]
    # Then: 4 runs, 3 succeeded; nearest-rank p50 of [3, 5, 7] is 5 and p95 is 7; build is 10 s every time
    assert (p["runs"], p["succeeded"], p["success_rate"], p["retries"]) == (4, 3, 0.75, 1)
    assert p["stages"]["test"] == {"p50": 5.0, "p95": 7.0, "count": 3}
    assert p["stages"]["build"] == {"p50": 10.0, "p95": 10.0, "count": 4}
    assert [r["cost"] for r in p["cost_per_run"]] == [1.0, 2.0, 0.5, 0.25]
    assert [r["seconds"] for r in p["cost_per_run"]] == [23.0, 27.0, 25.0, 120.0]
    assert data["slowest_stages"][0] == {"pipeline": pipeline, "stage": "build", "p50": 10.0, "p95": 10.0,
                                         "count": 4}
    # And the CLI draws the same figures, in the terminal and as a PNG
    png = tmp_path / "stats.png"
    done = subprocess.run([sys.executable, "-m", "devart.cli", "stats", "--pipeline", pipeline, "--plot", str(png)],
                          capture_output=True, text=True, timeout=120, env={**stack.env, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "75%" in done.stdout and "test 5.00/7.00" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
