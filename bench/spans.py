"""Where a one-stage run's time goes, span by span: devart's own traces at 1 in flight.

    python -m bench.spans [--runs 30] [--in-flight 1]

Starts the benchmark stack with its processes exporting their OpenTelemetry spans (OTLP/HTTP) to a receiver in this
process, runs ``--runs`` one-stage noop runs, ``--in-flight`` at a time (one by default), and prints, per process
and span name, the median duration and the median start relative to the run's ``POST /v1/runs``: the API's answer,
the workflow's steps, the agent's claim and report and what each spends in the API. No span is invented here: these
are the spans every devart process exports to any OTLP collector. Writes ``bench/results/spans.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench import report
from bench import stack as bench_stack
from bench.pipeline import noop_pipeline
from bench.scale import closed_loop, devart_run
from bench.scale import publish as publish_pipeline
from devart.core.devstack.services import free_port
from devart.core.temporal import connect

#: One received span: (trace id, span id, parent span id, service, name, start ns, end ns).
Span = tuple[bytes, bytes, bytes, str, str, int, int]


class Receiver:
    """An OTLP/HTTP trace receiver (protobuf bodies on ``/v1/traces``) keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.port = free_port()
        lock, spans = threading.Lock(), self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    for resource in request.resource_spans:
                        service = next((a.value.string_value for a in resource.resource.attributes
                                        if a.key == "service.name"), "?")
                        for scope in resource.scope_spans:
                            spans.extend((s.trace_id, s.span_id, s.parent_span_id, service, s.name,
                                          s.start_time_unix_nano, s.end_time_unix_nano) for s in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def table(spans: list[Span]) -> list[dict[str, Any]]:
    """Per (service, span name): runs seen, median duration and median start after the trace's first span (ms).

    Only traces that hold a ``POST /v1/runs`` span count, so the agents' own keepalives and the like are left out
    unless they belong to a run's trace.
    """
    traces: dict[bytes, list[Span]] = defaultdict(list)
    for span in spans:
        traces[span[0]].append(span)
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    for members in traces.values():
        if not any(s[4].startswith("POST /v1/runs") for s in members):
            continue
        origin = min(s[5] for s in members)
        for span in members:
            key = (span[3], span[4])
            durations[key].append((span[6] - span[5]) / 1e6)
            starts[key].append((span[5] - origin) / 1e6)
    rows = [{"service": key[0], "span": key[1], "n": len(values), "median_ms": round(statistics.median(values), 2),
             "starts_at_ms": round(statistics.median(starts[key]), 2)} for key, values in durations.items()]
    return sorted(rows, key=lambda r: (r["starts_at_ms"], -r["median_ms"]))


async def measure(runs: int, in_flight: int = 1) -> list[dict[str, Any]]:
    receiver = Receiver()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}"
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # flush often, so the last runs' spans arrive quickly
    stack = bench_stack.start()
    try:
        client = await connect(stack.temporal_address)
        await bench_stack.start_agents(stack, 4, 32)  # as python -m bench
        repo = stack.state / "repo"
        repo.mkdir()
        (repo / "README").write_text("benchmark repository\n")
        pipeline = f"bench-spans-{uuid.uuid4().hex[:6]}"
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, headers=bench_stack.bearer()) as api:
            await publish_pipeline(api, noop_pipeline(pipeline, stack.capability, 1))
            await closed_loop(devart_run(api, client, pipeline, str(repo)), 5, 1)  # warm-up
            warm = len(receiver.spans)
            report.progress(f"warmed up; {runs} runs at {in_flight} in flight")
            sample = await closed_loop(devart_run(api, client, pipeline, str(repo)), runs, in_flight)
        report.progress(f"{runs} runs: p50 {report.stats(sample)['p50_ms']} ms; waiting for the last spans")
        deadline, seen = time.monotonic() + 10, -1
        while time.monotonic() < deadline and seen != len(receiver.spans):
            seen = len(receiver.spans)
            await asyncio.sleep(1.0)  # the processes export every 200 ms: a second without new spans is the end
        return table(receiver.spans[warm:])
    finally:
        bench_stack.stop(stack)
        receiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--in-flight", type=int, default=1)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.runs, args.in_flight))
    print("\n| process | span | runs | median ms | starts at ms |\n| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['service']} | {row['span']} | {row['n']} | {row['median_ms']} | {row['starts_at_ms']} |")
    written = report.RESULTS / ("spans.json" if args.in_flight == 1 else f"spans-{args.in_flight}.json")
    written.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {written}")


if __name__ == "__main__":
    main()
