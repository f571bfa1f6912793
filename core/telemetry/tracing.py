"""OpenTelemetry: one tracer provider per process, OTLP export when an endpoint is configured.

A run is one trace: the HTTP request (or CLI command) that starts it, Temporal's spans (through the tracing
interceptor on every client and worker), the AMQP publish (context in the message headers), the agent's work
and its calls back to the API. The batch span processor is used everywhere: Temporal's workflow sandbox does
not tolerate the simple processor's synchronous export.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from devart.core import settings

_provider: TracerProvider | None = None


def setup(service: str) -> TracerProvider:
    """Install this process's tracer provider (once); export over OTLP/HTTP if OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    global _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": service}))
        if settings.trace_export().exporting:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(_provider)
    return _provider


def shutdown() -> None:
    """Flush pending spans (call before a process exits)."""
    if _provider is not None:
        _provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer("devart")


def temporal_interceptors() -> list[Any]:
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def inject(headers: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Put the current trace context into message headers."""
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, Any] | None) -> otel_context.Context:
    """The trace context carried by message headers (AMQP header values may arrive as bytes)."""
    carrier = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in (headers or {}).items()}
    return propagate.extract(carrier)
