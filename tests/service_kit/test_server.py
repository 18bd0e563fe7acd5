"""The bootstrap: health per service, reflection, error mapping, logs — on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from keel.channels.v1 import channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from service_kit.interceptor import PUBLIC
from service_kit.logs import JsonFormatter, request_id_var
from service_kit.server import KeelHealth, KeelServer, ServiceSpec, open_runtime, unimplemented_spec
from tenant_service import server as tenant_server
from tests.conftest import ADMIN_TOKEN, free_port, settings_for


class BrokenTenants(tenants_pb2_grpc.TenantServiceServicer):
    """A servicer with a bug: GetTenant raises something that is not a Keel error."""

    async def GetTenant(
        self, request: tenants_pb2.GetTenantRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.GetTenantResponse:
        raise RuntimeError("secret internal detail: password=hunter2")


def broken_spec() -> ServiceSpec:
    servicer = BrokenTenants()  # type: ignore[abstract]
    return ServiceSpec(
        name="keel.tenants.v1.TenantService",
        register=lambda s: tenants_pb2_grpc.add_TenantServiceServicer_to_server(servicer, s),
        default_policy=PUBLIC,
    )


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops every connection and refuses new."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()


async def health_of(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


@pytest.fixture
async def proxied_pg(pg_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    proxy = TcpProxy(5432)
    await proxy.start()
    yield proxy, pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    with contextlib.suppress(Exception):
        await proxy.cut()


async def test_health_follows_the_database(
    proxied_pg: tuple[TcpProxy, str], tmp_path: Path
) -> None:
    proxy, url = proxied_pg
    runtime = await open_runtime(settings_for(url, tmp_path))
    server = KeelServer(runtime, [broken_spec()], authenticator=None, health_interval=0.1)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        service = "keel.tenants.v1.TenantService"
        assert await health_of(channel, service) == health_pb2.HealthCheckResponse.SERVING
        assert await health_of(channel, "") == health_pb2.HealthCheckResponse.SERVING
        await proxy.cut()
        for _ in range(100):
            if await health_of(channel, service) == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.1)
        assert await health_of(channel, service) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await health_of(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        await proxy.start(proxy.port)
        for _ in range(100):
            if await health_of(channel, service) == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert await health_of(channel, service) == health_pb2.HealthCheckResponse.SERVING
        await server.stop(1)
    await runtime.close()


async def test_calls_during_a_database_outage_answer_unavailable(
    proxied_pg: tuple[TcpProxy, str], tmp_path: Path
) -> None:
    proxy, url = proxied_pg
    runtime = await open_runtime(settings_for(url, tmp_path))
    tenants = tenant_server.build(runtime)
    server = KeelServer(runtime, [tenants.spec], authenticator=None)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = tenants_pb2_grpc.TenantServiceStub(channel)
        admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        await stub.ListTenants(tenants_pb2.ListTenantsRequest(), metadata=admin)
        await proxy.cut()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListTenants(tenants_pb2.ListTenantsRequest(), metadata=admin)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "database" in (caught.value.details() or "")
    await server.stop(0)
    await runtime.close()


async def test_an_unreachable_redis_is_named_at_start(sqlite_url: str, tmp_path: Path) -> None:
    settings = settings_for(sqlite_url, tmp_path, redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(RuntimeError) as caught:
        await open_runtime(settings, wait_for_database=0)
    assert "REDIS_URL" in str(caught.value)


async def test_stopping_reports_not_serving_and_refuses_new_calls(
    sqlite_url: str, tmp_path: Path
) -> None:
    runtime = await open_runtime(settings_for(sqlite_url, tmp_path))
    server = KeelServer(runtime, [broken_spec()], authenticator=None)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="keel.tenants.v1.TenantService")
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.stop(0.5))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_of(channel, "")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await runtime.close()


async def test_reflection_lists_the_services(sqlite_url: str, tmp_path: Path) -> None:
    runtime = await open_runtime(settings_for(sqlite_url, tmp_path))
    server = KeelServer(runtime, [broken_spec()], authenticator=None)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = set()
        async for response in stub.ServerReflectionInfo(ask()):
            names |= {s.name for s in response.list_services_response.service}
        assert {"keel.tenants.v1.TenantService", "grpc.health.v1.Health"} <= names
    await server.stop(0)
    await runtime.close()


async def test_unexpected_errors_reach_the_client_as_internal_without_details(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await open_runtime(settings_for(sqlite_url, tmp_path))
    server = KeelServer(runtime, [broken_spec()], authenticator=None)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = tenants_pb2_grpc.TenantServiceStub(channel)
        with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetTenant(
                tenants_pb2.GetTenantRequest(id="x"), metadata=(("x-request-id", "req-7"),)
            )
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "req-7" in (caught.value.details() or "")
        assert "hunter2" not in (caught.value.details() or "")
        assert "Traceback" not in (caught.value.details() or "")
        # The operator's log has the whole story.
        assert any("hunter2" in (r.exc_text or str(r.exc_info)) for r in caplog.records)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListTenants(tenants_pb2.ListTenantsRequest())
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await server.stop(0)
    await runtime.close()


def test_json_log_lines_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id_var.set("req-99")
    try:
        logger.warning("hello %s", "world", extra={"tenant_id": "t1"})
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["message"] == "hello world"
    assert line["request_id"] == "req-99"
    assert line["tenant_id"] == "t1"
    assert line["level"] == "warning"


def test_ports_in_use_give_a_readable_error(sqlite_url: str, tmp_path: Path) -> None:
    async def scenario() -> str:
        runtime = await open_runtime(settings_for(sqlite_url, tmp_path))
        first = KeelServer(runtime, [broken_spec()], authenticator=None)
        await first.start()
        busy = replace(
            runtime,
            settings=replace(
                runtime.settings, grpc_addr=replace(runtime.settings.grpc_addr, port=first.port)
            ),
        )
        second = KeelServer(busy, [broken_spec()], authenticator=None)
        try:
            await second.start()
        except RuntimeError as exc:
            return str(exc)
        finally:
            await first.stop(0)
            await runtime.close()
        return "no error"

    message = asyncio.run(scenario())
    assert "KEEL_GRPC_ADDR" in message


# -- health of services that are not implemented, Health/List -----------------------------


def unimplemented_tenants() -> ServiceSpec:
    return unimplemented_spec(
        "keel.tenants.v1.TenantService",
        tenants_pb2_grpc.add_TenantServiceServicer_to_server,
        tenants_pb2_grpc.TenantServiceServicer,
        PUBLIC,
    )


def channels_spec() -> ServiceSpec:
    """A working (if empty) service beside the unimplemented one."""
    servicer = channels_pb2_grpc.ChannelServiceServicer()  # type: ignore[abstract]
    return ServiceSpec(
        name="keel.channels.v1.ChannelService",
        register=lambda s: channels_pb2_grpc.add_ChannelServiceServicer_to_server(servicer, s),
        default_policy=PUBLIC,
        uses_database=False,
    )


async def test_a_service_answering_unimplemented_is_not_serving(
    sqlite_url: str, tmp_path: Path
) -> None:
    runtime = await open_runtime(settings_for(sqlite_url, tmp_path))
    server = KeelServer(runtime, [unimplemented_tenants(), channels_spec()], authenticator=None)
    await server.start()
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await health_of(channel, "keel.tenants.v1.TenantService") == not_serving
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tenants_pb2_grpc.TenantServiceStub(channel).GetTenant(
                tenants_pb2.GetTenantRequest(id="x")
            )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The process serves what it implements.
        assert await health_of(channel, "keel.channels.v1.ChannelService") == serving
        assert await health_of(channel, "") == serving

        listed = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest())
        assert {name: s.status for name, s in listed.statuses.items()} == {
            "": serving,
            "keel.channels.v1.ChannelService": serving,
            "keel.tenants.v1.TenantService": not_serving,
        }
        await server.stop(0.5)
        # (the channel's connection is gone with the server: List was checked above)
    await runtime.close()


async def test_health_list_reports_not_serving_once_shutting_down(
    sqlite_url: str, tmp_path: Path
) -> None:
    health = KeelHealth()
    await health.set("keel.channels.v1.ChannelService", health_pb2.HealthCheckResponse.SERVING)
    await health.enter_graceful_shutdown()
    await health.set("keel.channels.v1.ChannelService", health_pb2.HealthCheckResponse.SERVING)
    listed = await health.List(health_pb2.HealthListRequest(), None)
    assert {s.status for s in listed.statuses.values()} == {
        health_pb2.HealthCheckResponse.NOT_SERVING
    }
    assert set(listed.statuses) == {"", "keel.channels.v1.ChannelService"}


# -- reflection: v1 and v1alpha, method symbols ----------------------------------------------

REFLECTION_METHODS = {
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
}


async def reflect(
    channel: grpc.aio.Channel, version: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    """One reflection request over ``version`` (the two share their wire format)."""
    call = channel.stream_stream(
        REFLECTION_METHODS[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield request

    async for response in call(one()):
        return response
    raise AssertionError("no reflection response")


def file_packages(response: reflection_pb2.ServerReflectionResponse) -> set[str]:
    packages = set()
    for raw in response.file_descriptor_response.file_descriptor_proto:
        packages.add(descriptor_pb2.FileDescriptorProto.FromString(raw).package)
    return packages


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_resolves_services_and_methods(
    version: str, sqlite_url: str, tmp_path: Path
) -> None:
    runtime = await open_runtime(settings_for(sqlite_url, tmp_path))
    server = KeelServer(runtime, [broken_spec()], authenticator=None)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        listed = await reflect(
            channel, version, reflection_pb2.ServerReflectionRequest(list_services="")
        )
        assert {s.name for s in listed.list_services_response.service} == {
            "keel.tenants.v1.TenantService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        for symbol, package in [
            ("keel.tenants.v1.TenantService.GetTenant", "keel.tenants.v1"),
            ("keel.tenants.v1.TenantService", "keel.tenants.v1"),
            ("grpc.health.v1.Health.Check", "grpc.health.v1"),
            ("grpc.health.v1.Health.List", "grpc.health.v1"),
            ("grpc.reflection.v1.ServerReflection.ServerReflectionInfo", "grpc.reflection.v1"),
            ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1alpha"),
        ]:
            found = await reflect(
                channel,
                version,
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
            )
            assert not found.HasField("error_response"), (symbol, found.error_response)
            assert package in file_packages(found), symbol
        for unknown in ("keel.tenants.v1.TenantService.NoSuchMethod", "no.such.Service.Method"):
            missing = await reflect(
                channel,
                version,
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=unknown),
            )
            assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    await server.stop(0)
    await runtime.close()


# -- waiting for the database and Redis, saying why ------------------------------------------


async def test_waiting_for_a_database_that_does_not_exist_says_so_and_how_to_fix_it(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = f"{pg_url.rsplit('/', 1)[0]}/keel_missing_{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, "keel.server"), pytest.raises(RuntimeError) as caught:
        await open_runtime(settings_for(missing, tmp_path), wait_for_database=1.5)
    message = str(caught.value)
    assert "does not exist" in message and "keel migrate" in message, message
    assert "\n" not in message
    waiting = [r for r in caplog.records if r.getMessage().startswith("waiting for the database")]
    assert waiting, caplog.text
    assert all("does not exist" in r.getMessage() for r in waiting)
    assert all("keel migrate" in r.getMessage() for r in waiting)


async def test_waiting_for_redis_says_why(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = settings_for(
        sqlite_url, tmp_path, redis_url=f"redis://:hunter2hunter2@127.0.0.1:{port}/0"
    )
    with caplog.at_level(logging.WARNING, "keel.server"), pytest.raises(RuntimeError) as caught:
        await open_runtime(settings, wait_for_database=1.5)
    message = str(caught.value)
    assert "REDIS_URL" in message and f"127.0.0.1:{port}" in message, message
    assert "hunter2hunter2" not in message
    waiting = [r for r in caplog.records if r.getMessage().startswith("waiting for Redis")]
    assert waiting, caplog.text
    assert all("refused" in r.getMessage().lower() for r in waiting), caplog.text
