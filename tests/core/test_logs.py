"""Service log lines: one JSON object each, tied to the run and trace they belong to."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from devart.core import settings
from devart.core.telemetry import logs


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Configure logging as the services do (DEVART_LOG_FORMAT=json) into a buffer; restore it afterwards."""
    monkeypatch.setenv("DEVART_LOG_FORMAT", "json")
    settings.logs.cache_clear()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure()
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:], root.level = saved
    settings.logs.cache_clear()


def test_a_line_outside_a_span_has_no_empty_ids(json_lines: io.StringIO) -> None:
    logging.getLogger("devart.test").warning("queue %s is %d deep", "lane", 3)
    entry = json.loads(json_lines.getvalue())
    assert entry["message"] == "queue lane is 3 deep" and entry["level"] == "WARNING"
    assert entry["logger"] == "devart.test" and entry["ts"].endswith("Z")
    assert "trace_id" not in entry and "run_id" not in entry


def test_a_line_in_a_run_span_carries_its_trace_and_run(json_lines: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("stage", attributes={"devart.run_id": "run-42"}) as span:
        try:
            raise ValueError("bad input")
        except ValueError:
            logging.getLogger("devart.test").exception("stage failed")
    entry = json.loads(json_lines.getvalue())
    assert entry["trace_id"] == f"{span.get_span_context().trace_id:032x}" and entry["run_id"] == "run-42"
    assert "ValueError: bad input" in entry["exception"]


def test_an_unknown_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_LOG_FORMAT", "yaml")
    settings.logs.cache_clear()
    try:
        with pytest.raises(ValueError, match="format"):
            settings.logs()
    finally:
        settings.logs.cache_clear()
