"""What KeelHandlers does on every call, through a real grpc.aio server on port 0 with a
servicer of its own registered through it: each call is counted and timed once under its
method and status code, the in-flight gauge comes back to zero, the access log line is
written (successes at DEBUG, failures at INFO) — all before the caller has its answer, a
failure's too (the tests read them right after the call) — and the request id comes back
in the trailing metadata; the wrapped handler of a method is made once and reused while the
service hands out the same handler for it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from keel.notifications.v1 import notifications_pb2 as pb
from keel.notifications.v1 import notifications_pb2_grpc
from prometheus_client import REGISTRY

from service_kit.auth import Authenticator, Credentials, TenantContext, TenantId
from service_kit.errors import NotFound
from service_kit.interceptor import KeelHandlers, tenant_scope
from service_kit.ratelimit import InMemoryRateLimiter

SERVICE = "keel.notifications.v1.NotificationService"
SEND = f"/{SERVICE}/SendNotification"
GET = f"/{SERVICE}/GetNotification"
TENANT = TenantContext(TenantId("t-per-call"), "per-call", frozenset({"send:*"}))
CREDENTIALS = (("x-client-id", "client"), ("x-client-secret", "secret"))


class _Validator:
    async def validate(self, credentials: Credentials) -> TenantContext:
        return TENANT


class _Servicer(notifications_pb2_grpc.NotificationServiceServicer):
    async def SendNotification(
        self, request: pb.SendNotificationRequest, context: grpc.aio.ServicerContext
    ) -> pb.SendNotificationResponse:
        return pb.SendNotificationResponse()

    async def GetNotification(
        self, request: pb.GetNotificationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetNotificationResponse:
        raise NotFound(f"no notification {request.id}")


def _handlers() -> KeelHandlers:
    return KeelHandlers(
        policies={SEND: tenant_scope("send:basic"), GET: tenant_scope("send:basic")},
        authenticator=Authenticator(_Validator()),
        rate_limiter=InMemoryRateLimiter(),
        admin_token=None,
    )


@dataclass
class Served:
    stub: notifications_pb2_grpc.NotificationServiceStub
    handlers: KeelHandlers


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    handlers = _handlers()
    server = grpc.aio.server()
    notifications_pb2_grpc.add_NotificationServiceServicer_to_server(
        _Servicer(),  # type: ignore[abstract]  # the stubs declare every method abstract
        handlers.registering(server),
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(notifications_pb2_grpc.NotificationServiceStub(channel), handlers)
    finally:
        await channel.close()
        await server.stop(None)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _figures() -> dict[str, float]:
    send = {"grpc_service": SERVICE, "grpc_method": "SendNotification"}
    get = {"grpc_service": SERVICE, "grpc_method": "GetNotification"}
    return {
        "send ok": _sample("keel_grpc_server_handled_total", **send, grpc_code="OK"),
        "get not found": _sample("keel_grpc_server_handled_total", **get, grpc_code="NOT_FOUND"),
        "send timed": _sample("keel_grpc_server_handling_seconds_count", **send),
        "get timed": _sample("keel_grpc_server_handling_seconds_count", **get),
        "in flight": _sample("keel_grpc_server_in_flight", grpc_service=SERVICE),
    }


async def test_each_call_is_counted_and_timed_once_under_its_method_and_code(
    served: Served,
) -> None:
    before = _figures()
    for _ in range(3):
        await served.stub.SendNotification(pb.SendNotificationRequest(), metadata=CREDENTIALS)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub.GetNotification(
                pb.GetNotificationRequest(id="x"), metadata=CREDENTIALS
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    after = _figures()
    assert {k: after[k] - before[k] for k in after} == {
        "send ok": 3,
        "get not found": 2,
        "send timed": 3,
        "get timed": 2,
        "in flight": 0,
    }


async def test_the_access_log_line_is_written_for_successes_at_debug_and_failures_at_info(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    def lines() -> list[tuple[int, Any, Any]]:
        return [
            (r.levelno, getattr(r, "method", None), getattr(r, "code", None))
            for r in caplog.records
            if r.name == "keel.rpc" and r.getMessage() == "rpc"
        ]

    async def one_of_each() -> None:
        await served.stub.SendNotification(pb.SendNotificationRequest(), metadata=CREDENTIALS)
        with pytest.raises(grpc.aio.AioRpcError):
            await served.stub.GetNotification(
                pb.GetNotificationRequest(id="x"), metadata=CREDENTIALS
            )

    with caplog.at_level(logging.INFO, logger="keel.rpc"):
        await one_of_each()
    assert lines() == [(logging.INFO, f"{SERVICE}/GetNotification", "NOT_FOUND")]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="keel.rpc"):
        await one_of_each()
    assert lines() == [
        (logging.DEBUG, f"{SERVICE}/SendNotification", "OK"),
        (logging.INFO, f"{SERVICE}/GetNotification", "NOT_FOUND"),
    ]
    success = next(r for r in caplog.records if getattr(r, "code", None) == "OK")
    assert success.tenant_id == TENANT.tenant_id  # type: ignore[attr-defined]
    assert success.duration_ms >= 0  # type: ignore[attr-defined]


def _handler() -> grpc.RpcMethodHandler:
    async def answer(request: Any, context: Any) -> pb.SendNotificationResponse:
        return pb.SendNotificationResponse()

    return grpc.unary_unary_rpc_method_handler(
        answer,
        request_deserializer=pb.SendNotificationRequest.FromString,
        response_serializer=pb.SendNotificationResponse.SerializeToString,
    )


async def test_the_request_id_comes_back_given_or_made_unique(served: Served) -> None:
    async def request_id(*extra: tuple[str, str]) -> str:
        call = served.stub.SendNotification(
            pb.SendNotificationRequest(), metadata=(*CREDENTIALS, *extra)
        )
        await call
        trailing = dict(await call.trailing_metadata() or ())
        found: str = trailing["x-request-id"]
        return found

    assert await request_id(("x-request-id", "given-1")) == "given-1"
    made = {await request_id() for _ in range(3)}
    assert len(made) == 3
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made)


def test_a_methods_wrapped_handler_is_made_once_and_again_for_another_handler() -> None:
    handlers = _handlers()
    first, second = _handler(), _handler()
    wrapped = handlers.wrap(SEND, first)
    assert wrapped is not first
    assert handlers.wrap(SEND, first) is wrapped
    other = handlers.wrap(SEND, second)  # the service gave another handler: wrap that one
    assert other is not wrapped and other is not second
    assert handlers.wrap(SEND, second) is other
    assert handlers.wrap(GET, first) is not wrapped  # each method has its own
    unknown = f"/{SERVICE}/NoSuchMethod"
    assert handlers.wrap(unknown, first) is first  # no policy: passed through untouched
    assert handlers.wrap(SEND, None) is None
