"""Traces exported over OTLP by real ``keel serve`` processes, across a cluster.

Every process gets ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a collector this test
runs (a gRPC ``TraceService`` that keeps what it is sent). Alice's browser is on bridge
B1 (linked to gateway G1), Bob's on B2 (linked to G2): her ``send`` frame must be one
trace from B1's frame span through G1's call, store and publish, over Redis to G2 and
B2's delivery span, and G1's access log line of the call carries its trace id.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from keel.channels.v1 import channels_pb2 as pb
from keel.channels.v1 import channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from websockets.asyncio.client import ClientConnection, connect

from bench.ports import free_port
from tests.conftest import ADMIN_TOKEN, unique
from tests.e2e.conftest import KeelProcess, PgCluster, bearer, client_metadata

pytestmark = pytest.mark.e2e

PEER_TOKEN = "test-peer-token-0123456789abcdef"
SEND_RPC = "/keel.channels.v1.ChannelService/SendMessage"
#: Bounds for every wait in this file (none of them is asserted on); a bridge's start
#: (imports included) can take long on a loaded 2-CPU machine.
WAIT = 20.0
BRIDGE_START = 60.0
Span = trace_pb2.Span


@dataclass(frozen=True)
class Exported:
    """A span as the collector got it, with the ``service.instance.id`` that sent it."""

    instance: str
    service: str
    span: trace_pb2.Span


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Exported] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    self._spans += [
                        Exported(
                            attributes.get("service.instance.id", ""),
                            attributes.get("service.name", ""),
                            span,
                        )
                        for span in scope_spans.spans
                    ]
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Exported]:
        with self._lock:
            return list(self._spans)


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, str]]:
    """The collector, and its address as ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        server.stop(0)


@dataclass
class Traced:
    g1: KeelProcess
    b1_port: int
    b2_port: int
    channel_id: str
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def traced(
    pg_cluster: Callable[..., PgCluster], collector: tuple[Collector, str]
) -> Iterator[Traced]:
    """Tenant service, G1 and G2 on PostgreSQL and Redis, B1 → G1 and B2 → G2, all
    exporting to the collector; a channel of alice and bob and their client tokens."""
    processes = pg_cluster(
        "traces",
        KEEL_PEER_TOKEN=PEER_TOKEN,
        KEEL_LOG_LEVEL="DEBUG",  # the access line of a successful call is a DEBUG line
        OTEL_EXPORTER_OTLP_ENDPOINT=collector[1],
        OTEL_BSP_SCHEDULE_DELAY="100",  # ms between exports, so the test waits little
    )
    g1 = processes.start("gateway", OTEL_RESOURCE_ATTRIBUTES="service.instance.id=g1")
    g2 = processes.start("gateway", OTEL_RESOURCE_ATTRIBUTES="service.instance.id=g2")
    ports, bridges = [], []
    for name, gateway in (("b1", g1), ("b2", g2)):
        ports.append(free_port())
        bridges.append(
            processes.launch(
                "bridge",
                KEEL_GATEWAY_ADDR=gateway.addr,
                KEEL_WS_ADDR=f"127.0.0.1:{ports[-1]}",
                KEEL_METRICS_ADDR="off",
                OTEL_RESOURCE_ATTRIBUTES=f"service.instance.id={name}",
            )
        )
    for bridge, port in zip(bridges, ports, strict=True):
        _wait_until_linked(bridge, port)
    with grpc.insecure_channel(processes.tenant_service.addr) as admin:
        created = tenants_pb2_grpc.TenantServiceStub(admin).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("traces"), permissions=["chat:*"])
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
    md = client_metadata(created.tenant.client_id, created.client_secret)
    with grpc.insecure_channel(g1.addr) as channel:
        stub = channels_pb2_grpc.ChannelServiceStub(channel)
        room = stub.CreateChannel(
            pb.CreateChannelRequest(name=unique("room"), created_by="alice", member_ids=["bob"]),
            metadata=md,
            timeout=30,
        )
        tokens = {
            user: stub.IssueClientToken(
                pb.IssueClientTokenRequest(user_id=user), metadata=md, timeout=30
            ).token
            for user in ("alice", "bob")
        }
    yield Traced(g1, ports[0], ports[1], room.channel.id, tokens)


def _wait_until_linked(bridge: KeelProcess, port: int) -> None:
    """Poll the bridge's /healthz until it answers 200 (its gateway link is up); bounded."""
    deadline = time.monotonic() + BRIDGE_START
    while True:
        if bridge.process.poll() is not None:
            pytest.fail(f"the bridge exited while starting: {bridge.describe()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no link to the gateway in {BRIDGE_START}s: {bridge.describe()}")
        time.sleep(0.1)


async def _frame(ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first frame from ``ws`` that is ``wanted`` (bounded)."""
    async with asyncio.timeout(WAIT):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if wanted(frame):
                return frame


async def _subscribed(port: int, token: str, channel_id: str) -> ClientConnection:
    ws = await connect(
        f"ws://127.0.0.1:{port}/ws?token={token}",
        subprotocols=["keel.v1"],  # type: ignore[list-item]
        proxy=None,
        open_timeout=WAIT,
    )
    await ws.send(json.dumps({"type": "subscribe", "id": "s", "channel_id": channel_id}))
    ack = await _frame(ws, lambda f: f.get("id") == "s")
    assert ack["type"] == "ack", ack
    return ws


async def test_a_send_is_one_trace_across_both_bridges_and_both_gateways(
    traced: Traced, collector: tuple[Collector, str]
) -> None:
    alice = await _subscribed(traced.b1_port, traced.tokens["alice"], traced.channel_id)
    bob = await _subscribed(traced.b2_port, traced.tokens["bob"], traced.channel_id)
    try:
        await alice.send(
            json.dumps(
                {"type": "send", "id": "m", "channel_id": traced.channel_id, "content": "hi"}
            )
        )
        ack = await _frame(alice, lambda f: f.get("id") == "m")
        assert ack["type"] == "ack", ack
        delivered = await _frame(bob, lambda f: f.get("event") == "message:created")
        assert delivered["seq"] == ack["result"]["seq"]
    finally:
        await alice.close()
        await bob.close()

    trace = _the_send_trace(collector[0])
    by_name: dict[str, list[Exported]] = {}
    for exported in trace:
        by_name.setdefault(exported.span.name, []).append(exported)
    (send,) = by_name["keel.bridge.send"]
    (rpc,) = by_name[SEND_RPC]
    (store,) = by_name["keel.db.send_message"]
    (publish,) = by_name["keel.bus.publish"]
    deliveries = {d.instance: d for d in by_name["keel.bridge.deliver"]}
    assert (send.instance, send.service) == ("b1", "bridge")
    assert (rpc.instance, store.instance, publish.instance) == ("g1", "g1", "g1")
    assert rpc.service == "gateway"
    # Bob's bridge, behind G2, got the event over Redis. (Alice's own bridge delivers it
    # too, in a span of its own unless the event reached it through a gap fill from the
    # database, which carries no trace context.)
    assert "b2" in deliveries and set(deliveries) <= {"b1", "b2"}

    assert send.span.parent_span_id == b""
    assert rpc.span.parent_span_id == send.span.span_id
    assert store.span.parent_span_id == rpc.span.span_id
    assert publish.span.parent_span_id == rpc.span.span_id
    for delivery in deliveries.values():
        assert delivery.span.parent_span_id == publish.span.span_id
    assert rpc.span.kind == Span.SPAN_KIND_SERVER
    assert publish.span.kind == Span.SPAN_KIND_PRODUCER
    assert deliveries["b2"].span.kind == Span.SPAN_KIND_CONSUMER

    trace_id, span_id = send.span.trace_id.hex(), rpc.span.span_id.hex()
    line = _access_line(traced.g1, trace_id)
    assert line["span_id"] == span_id


def _the_send_trace(collector: Collector) -> list[Exported]:
    """Every span of the trace of the one ``send`` frame, once all five kinds (with B2's
    delivery) have been exported (bounded wait: processes export every 100 ms)."""
    deadline = time.monotonic() + WAIT
    while True:
        spans = collector.spans()
        sends = [s for s in spans if s.span.name == "keel.bridge.send"]
        if sends:
            trace = [s for s in spans if s.span.trace_id == sends[0].span.trace_id]
            names = {(s.instance, s.span.name) for s in trace}
            wanted = ("keel.bridge.send", SEND_RPC, "keel.db.send_message", "keel.bus.publish")
            got = {name for _, name in names}
            if all(n in got for n in wanted) and ("b2", "keel.bridge.deliver") in names:
                return trace
        if time.monotonic() > deadline:
            seen = sorted({(s.instance, s.span.name) for s in spans})
            pytest.fail(f"the send's trace was not exported in {WAIT}s; spans seen: {seen}")
        time.sleep(0.1)


def _access_line(gateway: KeelProcess, trace_id: str) -> dict[str, Any]:
    """The gateway's access log line of the traced call (bounded wait: lines are written by a
    background thread)."""
    deadline = time.monotonic() + WAIT
    while True:
        lines = [
            r
            for r in gateway.log_records()
            if r.get("trace_id") == trace_id and r.get("method") == SEND_RPC[1:]
        ]
        if lines:
            (line,) = lines
            return line
        if time.monotonic() > deadline:
            pytest.fail(f"no log line of trace {trace_id} in {gateway.describe()}")
        time.sleep(0.1)
