"""service_kit.tracing without servers: what is traced, what travels, what log lines carry.

The whole path of a ``send`` is in tests/gateway_bridge/bridge/test_traces.py."""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator

import grpc
import pytest
from keel.channels.v1 import channels_pb2
from keel.events.v1 import events_pb2
from keel.tenants.v1 import tenants_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from service_kit import tracing
from service_kit.logs import _Handoff


@pytest.fixture
def tracer() -> Iterator[Tracer]:
    provider = TracerProvider()
    tracing.install(provider)
    traced = tracing.tracer()
    assert traced is not None
    try:
        yield traced
    finally:
        tracing.uninstall()
        provider.shutdown()


class Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _handed_off(message: str) -> logging.LogRecord:
    """``message`` as the log writer thread gets it."""
    record = logging.LogRecord("keel.test", logging.INFO, __file__, 1, message, (), None)
    return _Handoff(queue.SimpleQueue()).prepare(record)


def test_a_log_line_written_in_a_span_carries_its_trace_and_span_ids(tracer: Tracer) -> None:
    with tracer.start_as_current_span("work") as span:
        record = _handed_off("inside")
    context = span.get_span_context()
    assert record.__dict__["trace_id"] == format(context.trace_id, "032x")
    assert record.__dict__["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in _handed_off("outside").__dict__


def test_with_tracing_off_log_lines_carry_no_trace_ids() -> None:
    assert tracing.tracer() is None
    assert "trace_id" not in _handed_off("untraced").__dict__
    assert tracing.outgoing_metadata() == () and tracing.traceparent() == ""


def test_the_traceparent_sent_names_the_current_span(tracer: Tracer) -> None:
    with tracer.start_as_current_span("caller") as span:
        sent = dict(tracing.outgoing_metadata())
        value = tracing.traceparent()
    context = span.get_span_context()
    assert sent["traceparent"] == value
    assert value.startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    with tracer.start_as_current_span("callee", context=tracing.context_from(value)) as child:
        assert child.parent is not None and child.parent.span_id == context.span_id  # type: ignore[attr-defined]
    with tracer.start_as_current_span("alone", context=tracing.context_from("junk")) as root:
        assert root.parent is None  # type: ignore[attr-defined]


def test_only_calls_that_answer_once_get_a_server_span(tracer: Tracer) -> None:
    assert channels_pb2 and events_pb2 and tenants_pb2  # their services are in the pool
    instrumentation = tracing.server_instrumentation()
    assert instrumentation is not None
    traced = instrumentation._filter
    assert traced(Details("/keel.channels.v1.ChannelService/SendMessage"))
    assert traced(Details("/keel.tenants.v1.TenantService/GetTenant"))
    assert not traced(Details("/keel.channels.v1.ChannelService/Connect"))
    assert not traced(Details("/keel.events.v1.EventService/SubscribeEvents"))
    assert not traced(Details("/grpc.health.v1.Health/Check"))
    assert not traced(Details("/keel.channels.v1.ChannelService/NoSuchMethod"))
