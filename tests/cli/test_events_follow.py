"""``devart events --follow`` honours a refused stream: it waits as long as the API asks, and stops on an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENT = {"id": 7, "kind": "run.finished", "created_at": "2026-12-06T10:00:00Z", "run_id": "r-1", "message": "done"}


class FakeFeed(BaseHTTPRequestHandler):
    """Refuses the first ``refusals`` streams with 429 and Retry-After: 1, then streams one event and holds on."""

    refusals = 2
    status = 429
    requests: list[float] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        FakeFeed.requests.append(time.monotonic())
        if len(FakeFeed.requests) <= FakeFeed.refusals:
            body = json.dumps({"detail": "too many streams"}).encode()
            self.send_response(FakeFeed.status)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(f"id: 7\ndata: {json.dumps(EVENT)}\n\n".encode())
        self.wfile.flush()
        time.sleep(30)  # an open stream with nothing more to say

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def feed() -> Iterator[str]:
    FakeFeed.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFeed)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def follow(url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DEVART_API_URL": url, "DEVART_TOKEN": "a-token-the-fake-feed-ignores", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "devart.cli", "events", "--follow", "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_busy_api_is_asked_again_only_after_retry_after(feed: str) -> None:
    FakeFeed.refusals, FakeFeed.status = 2, 429
    proc = follow(feed)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the event arrives (the stream is the third request)
        assert json.loads(line)["id"] == 7
    finally:
        proc.kill()
        proc.wait(timeout=10)
    times = FakeFeed.requests
    assert len(times) == 3, times  # two refusals, then the stream: no request in between
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False)), times


def test_a_refusal_that_is_not_busy_is_an_error_line(feed: str) -> None:
    FakeFeed.refusals, FakeFeed.status = 1, 404
    proc = follow(feed)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "refused (404): too many streams" in err
    assert len(FakeFeed.requests) == 1
