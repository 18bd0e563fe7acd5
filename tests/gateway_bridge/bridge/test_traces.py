"""Traces of a browser's ``send``: one trace from the bridge's frame through the gateway's
call, the store, the bus and the delivering bridge, with the W3C ``traceparent`` carried
on the call's metadata, in the bus payload and on the ``Connect`` stream; log lines of the
send carry its trace id. With tracing off, nothing of it happens and nothing fails.

The spans go to an in-memory exporter installed in this process
(:func:`service_kit.tracing.install`) before the gateway and the bridge start, as
``keel serve all`` does when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.gateway.outbox import ChatEvent, decode_events
from gateway_bridge.vocabulary import CHAT_EVENTS_TOPIC
from service_kit import tracing
from service_kit.logs import JsonFormatter
from tests.conftest import REDIS_URL
from tests.gateway_bridge.bridge.conftest import Client, Dial, Stack, join, running_bridge, until
from tests.gateway_bridge.conftest import running_keel

SEND_RPC = "/keel.channels.v1.ChannelService/SendMessage"
#: The spans of one ``send`` frame, from the browser's frame to the other browser's socket.
SEND_TRACE = (
    "keel.bridge.send",
    SEND_RPC,
    "keel.db.send_message",
    "keel.bus.publish",
    "keel.bridge.deliver",
)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on, every finished span kept in memory; off again after the test."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.install(provider)
    try:
        yield spans
    finally:
        tracing.uninstall()
        provider.shutdown()


class JsonLines(logging.Handler):
    """Formats each record as Keel writes it, on the thread (and in the context) that logs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@contextmanager
def access_log() -> Iterator[JsonLines]:
    """The gateway's access log lines (written at DEBUG for successful calls)."""
    logger = logging.getLogger("keel.rpc")
    handler, level = JsonLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@asynccontextmanager
async def keel_and_bridge(
    sqlite_url: str, tmp_path: Path, bus: str
) -> AsyncIterator[tuple[Stack, Bridge, list[ChatEvent]]]:
    """Tenant service, gateway and a bridge, on the in-process bus or Redis; and the chat
    events the bus carries, as the gateways receive them."""
    redis_url = REDIS_URL if bus == "redis" else None
    async with running_keel(sqlite_url, tmp_path, redis_url=redis_url) as keel:
        stack = Stack(keel)
        carried: list[ChatEvent] = []
        subscription = await keel.runtime.bus.subscribe(
            CHAT_EVENTS_TOPIC, lambda payload: carried.extend(decode_events(payload))
        )
        try:
            async with running_bridge(stack) as bridge:
                yield stack, bridge, carried
        finally:
            await subscription.close()


async def alice_and_bob(stack: Stack, bridge: Bridge, dial: Dial) -> tuple[str, Client, Client]:
    """A new tenant's group channel, and its members alice and bob subscribed to it."""
    tenant = await stack.tenant()
    channel = await tenant.group("alice", "bob")
    alice = await join(dial, bridge, tenant, "alice")
    bob = await join(dial, bridge, tenant, "bob")
    await alice.ok("subscribe", channel_id=channel)
    await bob.ok("subscribe", channel_id=channel)
    return channel, alice, bob


def send_rpc_line(logged: JsonLines) -> dict[str, object]:
    """The access log line of the gateway's SendMessage call (there must be one)."""
    (line,) = [entry for entry in logged.lines if entry.get("method") == SEND_RPC[1:]]
    return line


@pytest.mark.parametrize("bus", ["in-process", "redis"])
async def test_a_send_frame_makes_one_trace_from_the_bridge_to_the_other_socket(
    exporter: InMemorySpanExporter, sqlite_url: str, tmp_path: Path, dial: Dial, bus: str
) -> None:
    async with keel_and_bridge(sqlite_url, tmp_path, bus) as (stack, bridge, carried):
        channel, alice, bob = await alice_and_bob(stack, bridge, dial)
        exporter.clear()
        with access_log() as logged:
            ack = await alice.ok("send", channel_id=channel, content="traced")
            event = await bob.event("message:created", channel)
            await until(lambda: set(SEND_TRACE) <= {s.name for s in exporter.get_finished_spans()})
    assert event["seq"] == ack["result"]["seq"]

    spans: dict[str, ReadableSpan] = {}
    for span in exporter.get_finished_spans():
        if span.name in SEND_TRACE:
            assert span.name not in spans, f"two {span.name} spans for one send"
            spans[span.name] = span
    send, rpc, store, publish, deliver = (spans[name] for name in SEND_TRACE)

    # One trace, each span the child of the one before it in the message's path (the
    # store and the publish both run inside the gateway's call).
    assert {span.context.trace_id for span in spans.values()} == {send.context.trace_id}
    assert send.parent is None
    assert _parent(rpc) == send.context.span_id and rpc.parent is not None and rpc.parent.is_remote
    assert _parent(store) == rpc.context.span_id
    assert _parent(publish) == rpc.context.span_id
    assert _parent(deliver) == publish.context.span_id
    assert deliver.parent is not None and deliver.parent.is_remote

    assert (send.kind, rpc.kind, store.kind, publish.kind, deliver.kind) == (
        SpanKind.SERVER,
        SpanKind.SERVER,
        SpanKind.CLIENT,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    )
    assert send.attributes and send.attributes["keel.channel_id"] == channel
    assert store.attributes and store.attributes["keel.seq"] == ack["result"]["seq"]
    assert store.attributes["db.system.name"] == "sqlite"
    assert deliver.attributes and deliver.attributes["keel.deliveries"] == 2  # alice and bob
    assert deliver.attributes["keel.seq"] == ack["result"]["seq"]

    # The bus payload carried the publish span's context.
    trace_hex = format(send.context.trace_id, "032x")
    created = [e for e in carried if (e.channel_id, e.seq) == (channel, ack["result"]["seq"])]
    # (The bus is at least once: a relay republishes what it has not marked published
    # within its grace, so the event may be carried twice — with the same context.)
    assert {tuple(e.traceparent.split("-")[1:3]) for e in created} == {
        (trace_hex, format(publish.context.span_id, "016x"))
    }
    # The gateway's access log line of the call carries the trace and its server span.
    line = send_rpc_line(logged)
    assert (line["trace_id"], line["span_id"]) == (trace_hex, format(rpc.context.span_id, "016x"))


async def test_with_tracing_off_a_send_is_delivered_and_nothing_is_traced(
    sqlite_url: str, tmp_path: Path, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.provider_from_env("gateway") is None
    assert tracing.tracer() is None and tracing.server_instrumentation() is None
    async with keel_and_bridge(sqlite_url, tmp_path, "in-process") as (stack, bridge, carried):
        channel, alice, bob = await alice_and_bob(stack, bridge, dial)
        with access_log() as logged:
            ack = await alice.ok("send", channel_id=channel, content="untraced")
            event = await bob.event("message:created", channel)
    assert event["seq"] == ack["result"]["seq"]
    assert {e.traceparent for e in carried if (e.channel_id, e.seq) == (channel, event["seq"])} == {
        ""
    }
    line = send_rpc_line(logged)
    assert "trace_id" not in line and "span_id" not in line
    assert line["request_id"]


def test_an_otlp_endpoint_turns_tracing_on_named_after_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert _service_name_from_env("gateway") == "gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "keel-gateway-eu")
    assert _service_name_from_env("gateway") == "keel-gateway-eu"


def _service_name_from_env(process: str) -> object:
    provider = tracing.provider_from_env(process)
    assert provider is not None
    try:
        return provider.resource.attributes["service.name"]
    finally:
        provider.shutdown()


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None
