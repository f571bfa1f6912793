"""The benchmark's quick mode runs and reports every measure: CI's smoke check of the benchmark itself.

It checks that ``python -m bench --quick`` starts its own stack, measures, writes JSON, Markdown and a chart and
cleans up, not the figures (a shared 2-CPU machine makes those meaningless in a two-minute run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devart.core.devstack import services
from tests.stack import require

ROOT = Path(__file__).resolve().parent.parent
#: What the benchmark needs from this environment; the test session's own settings must not leak into it.
PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "AMQP_URL", "CI")


@pytest.mark.timeout(300)
def test_quick_benchmark_runs_and_reports(tmp_path: Path) -> None:
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    require(services.amqp_reachable(amqp_url), f"RabbitMQ is not reachable at {amqp_url}")
    env = {k: v for k, v in os.environ.items() if k in PASSED}
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--results", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "quick.json").read_text())
    for measure in ("baseline", "devart", "devart_3"):
        assert r[measure]["n"] > 0 and r[measure]["errors"] == 0, (measure, r[measure])
        assert 0 < r[measure]["p50_ms"] <= r[measure]["p99_ms"]
    assert r["ratios"]["throughput"] > 0
    ladder = r["ladder"]["steps"]
    assert [s["key"] for s in ladder] == ["a", "b", "c", "d"]
    for step in ladder:
        assert step["n"] > 0 and step["errors"] == 0, step
        assert len(step["rounds"]) == r["settings"]["ladder_rounds"] >= 3
        assert step["cpu_ms_per_run"]["total"] > 0
    for step in ladder[1:]:
        assert step["throughput_ratio"]["min"] <= step["throughput_ratio"]["median"] <= step["throughput_ratio"]["max"]
    assert all(s["cpu_ms_per_run"]["floor consumer"] > 0 for s in ladder[1:3])  # the other process did the hop
    per_side = r["settings"]["latency_rounds"] * r["settings"]["latency_runs"]
    assert [s["n"] for s in r["latency_1"]["steps"]] == [per_side, per_side]
    assert r["dispatch"]["in_stack"]["p99"] > 0
    load, per_side = r["dispatch"]["under_load"], r["settings"]["dispatch_rounds"] * r["settings"]["dispatch_runs"]
    assert load["devart"]["n"] == load["floor"]["n"] == per_side  # every run of both sides was claimed and timed
    assert 0 < load["floor"]["p50"] <= load["floor"]["p99"]
    assert r["dispatch"]["fleet"]["devart_ms"]["p99"] > 0 and r["dispatch"]["fleet"]["raw_ms"]["p99"] > 0
    assert r["api"]["statuses"].get("201", 0) > 0 and r["api"]["drain"]["failed"] == 0
    assert [p["in_flight"] for p in r["sweep"]] == r["settings"]["levels"]
    assert all(p["devart"]["errors"] == 0 for p in r["sweep"])
    assert r["breakdown"]
    assert [g["key"] for g in r["goals"]] == ["throughput", "latency", "dispatch", "scale"]
    assert (tmp_path / "quick.png").stat().st_size > 10_000
    markdown = (tmp_path / "quick.md").read_text()
    assert "Floor ladder" in markdown and "median of rounds" in markdown and "| goal |" in markdown
    assert "1 in flight" in markdown and "rabbitmq: the whole broker" in markdown
    assert "floor at the same load" in markdown
    assert "could not remove" not in done.stderr + done.stdout  # its RabbitMQ objects are gone again
