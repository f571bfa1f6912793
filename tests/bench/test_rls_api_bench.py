"""A bounded slice of ``bench.rls_api``: two real API processes, one under row-level security and one without, on a
database of their own, answer the same requests with successes, and the benchmark reports every request."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_both_apis_answer_and_the_report_names_each_request() -> None:
    # A process of its own: the benchmark starts its own PostgreSQL and Temporal under a state folder it makes.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVART_", "DATABASE_URL", "TEMPORAL_"))}
    with tempfile.TemporaryDirectory(prefix="devart-rls-api-") as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "bench.rls_api", "--runs", "600", "--orgs", "2", "--rounds", "2",
             "--per-round", "4"],
            cwd=ROOT, env={**env, "TMPDIR": tmp}, capture_output=True, text=True, timeout=280,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    for request in ("run list", "| run |", "run's events", "budget set", "geometric mean of the p50 ratios"):
        assert request in done.stdout, done.stdout
