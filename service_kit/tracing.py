"""Traces: OpenTelemetry, set up once per process, off unless asked for.

**Off** (the default: no ``OTEL_EXPORTER_OTLP_ENDPOINT``): :func:`tracer` answers None and
every traced place in Keel checks that first and does nothing more — no span objects, no
context changes, no extra metadata or payload bytes — so the send and fan-out paths pay
one function call. No gRPC server interceptor is added either.

**On** when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
set: :func:`configure` installs an SDK ``TracerProvider`` whose spans go in batches to
that endpoint over OTLP/gRPC. The SDK and the exporter read the other standard
variables themselves (``OTEL_EXPORTER_OTLP_HEADERS``, ``…_INSECURE``, ``…_CERTIFICATE``,
``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_BSP_*`` …). ``service.name`` is the Keel process (``gateway``, ``bridge``, ``all``
…) unless ``OTEL_SERVICE_NAME`` says otherwise. Tests install a provider of their own
with :func:`install` (an in-memory exporter) and remove it with :func:`uninstall`.

A browser's ``send`` frame makes one trace (docs/observability.md lists the spans): the
bridge's frame span, whose context travels as W3C ``traceparent`` metadata on the call
to the gateway (:func:`outgoing_metadata`); the gateway's server span (the gRPC
instrumentation, :func:`server_instrumentation`); the store's span around the transaction;
the bus publish span, whose ``traceparent`` rides in the event's bus payload and then in
``ChannelEvent.traceparent`` on the bridge's ``Connect`` stream; and the delivering
bridge's span around the write to its sockets, a child of the publish span
(:func:`context_from`). Log lines written while a span is current carry its
``trace_id`` and ``span_id`` (:func:`log_fields`, used by :mod:`service_kit.logs`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import grpc
from google.protobuf import descriptor_pool
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:  # the SDK is imported only where tracing is turned on (import time)
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "SpanKind",
    "Tracer",
    "configure",
    "context_from",
    "install",
    "log_fields",
    "outgoing_metadata",
    "provider_from_env",
    "server_instrumentation",
    "traceparent",
    "tracer",
    "uninstall",
]

#: The instrumentation scope of Keel's own spans.
SCOPE: Final = "keel"

_W3C = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def configure(process: str) -> bool:
    """Turn tracing on for this process when an OTLP endpoint is configured (see the module
    docstring); True when it did. ``process`` becomes ``service.name``."""
    provider = provider_from_env(process)
    if provider is None:
        return False
    trace.set_tracer_provider(provider)
    install(provider)
    return True


def provider_from_env(process: str) -> TracerProvider | None:
    """The provider :func:`configure` installs: spans of ``service.name`` ``process`` (unless
    ``OTEL_SERVICE_NAME`` names another) exported in batches over OTLP/gRPC; None when no
    OTLP endpoint is configured."""
    from opentelemetry.sdk.environment_variables import (
        OTEL_EXPORTER_OTLP_ENDPOINT,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    )

    endpoints = (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT)
    if not any(os.environ.get(name) for name in endpoints):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The detector reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; merged last, what
    # they say wins over the process name.
    resource = Resource.create({"service.name": process}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def install(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (servers built after this get the instrumentation)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer(SCOPE)


def uninstall() -> None:
    """Tracing off again (servers built before keep their instrumentation)."""
    global _provider, _tracer
    _provider = None
    _tracer = None


def tracer() -> Tracer | None:
    """Keel's tracer, or None when tracing is off (then trace nothing)."""
    return _tracer


def server_instrumentation() -> grpc.aio.ServerInterceptor | None:
    """The gRPC server instrumentation (a server span per call of a Keel API that answers
    once, its parent taken from the caller's ``traceparent`` metadata): the server's only
    grpc.aio interceptor, so it runs around :class:`~service_kit.interceptor.KeelHandlers`'
    checks; None when tracing is off.

    Long-lived streams (``Connect``, ``SubscribeEvents``), health and reflection get no
    span: a span as long as a bridge's connection would tell nothing, and every call under
    it would join one endless trace."""
    if _provider is None:
        return None
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    instrumentation: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=_traced_call
    )
    return instrumentation


_traced: dict[str, bool] = {}


def _traced_call(details: grpc.HandlerCallDetails) -> bool:
    """True for a call of a Keel API that answers once (unary or client-streaming)."""
    method: str = details.method
    found = _traced.get(method)
    if found is None:
        found = _answers_once(method)
        _traced[method] = found
    return found


def _answers_once(method: str) -> bool:
    if not method.startswith("/keel."):
        return False
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(method[1:].replace("/", "."))
    except KeyError:
        return False
    return not descriptor.server_streaming


def outgoing_metadata() -> Sequence[tuple[str, str]]:
    """Metadata carrying the current span's context (``traceparent``, and ``tracestate`` or
    ``baggage`` when there are), for an outgoing call; empty without a current span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


def traceparent() -> str:
    """The W3C ``traceparent`` of the current span; "" without one."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent", "")


def context_from(value: str) -> Context:
    """A context whose parent is the span that ``value`` (a ``traceparent``) names; an
    empty one when ``value`` is not a valid ``traceparent``."""
    return _W3C.extract({"traceparent": value})


def log_fields() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span as hex, or None when tracing is off or no
    span is current."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
