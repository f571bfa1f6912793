"""``bench.spans.table``: per process and span name, medians over the runs' traces only."""

from __future__ import annotations

from bench.spans import Span, table

MS = 1_000_000


def span(trace: bytes, service: str, name: str, start_ms: float, end_ms: float) -> Span:
    return (trace, b"s", b"", service, name, int(start_ms * MS), int(end_ms * MS))


def test_medians_are_per_process_and_name_and_start_from_the_runs_request() -> None:
    spans = [
        span(b"t1", "api", "POST /v1/runs", 100, 120), span(b"t1", "worker", "RunActivity:x", 130, 135),
        span(b"t2", "api", "POST /v1/runs", 500, 530), span(b"t2", "worker", "RunActivity:x", 540, 547),
        span(b"t3", "api", "POST /v1/runs", 900, 910), span(b"t3", "worker", "RunActivity:x", 915, 930),
        # An agent's keepalive is a trace of its own, without a run: left out
        span(b"k1", "agent", "keepalive", 0, 1000),
    ]
    rows = table(spans)
    assert [(r["service"], r["span"]) for r in rows] == [("api", "POST /v1/runs"), ("worker", "RunActivity:x")]
    api, worker = rows
    assert (api["n"], api["median_ms"], api["starts_at_ms"]) == (3, 20.0, 0.0)
    assert (worker["n"], worker["median_ms"], worker["starts_at_ms"]) == (3, 7.0, 30.0)
