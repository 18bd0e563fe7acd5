"""GrpcCredentialValidator against a real gRPC server playing the tenant service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_status import rpc_status
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from service_kit.auth import Credentials
from service_kit.errors import ResourceExhausted, Unauthenticated, Unavailable, to_rpc_status
from service_kit.tenant_client import GrpcCredentialValidator


class FakeTenantService(tenants_pb2_grpc.TenantServiceServicer):
    """Answers ValidateCredentials according to the secret it is given."""

    async def ValidateCredentials(
        self, request: tenants_pb2.ValidateCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.ValidateCredentialsResponse:
        if request.client_secret == "ok":
            metadata = struct_pb2.Struct()
            metadata.update({"plan": "pro"})
            return tenants_pb2.ValidateCredentialsResponse(
                tenant_id="t-1",
                name="acme",
                permissions=["chat:read"],
                rate_limits=tenants_pb2.RateLimits(requests_per_second=5, burst=9),
                metadata=metadata,
                allowed_origins=["https://a.example"],
                require_origin=True,
            )
        if request.client_secret == "slow-down":
            wire = rpc_status.to_status(to_rpc_status(ResourceExhausted("too many", 2.5)))
            await context.abort(wire.code, wire.details, wire.trailing_metadata)
        codes = {
            "invalid": grpc.StatusCode.INVALID_ARGUMENT,
            "wrong": grpc.StatusCode.UNAUTHENTICATED,
            "broken": grpc.StatusCode.INTERNAL,
        }
        await context.abort(codes[request.client_secret], f"answer for {request.client_secret}")
        raise AssertionError("unreachable")


@pytest.fixture
async def validator() -> AsyncIterator[GrpcCredentialValidator]:
    server = grpc.aio.server()
    tenants_pb2_grpc.add_TenantServiceServicer_to_server(FakeTenantService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield GrpcCredentialValidator(channel)
    await channel.close()
    await server.stop(0)


async def test_a_valid_answer_becomes_a_tenant_context(validator: GrpcCredentialValidator) -> None:
    tenant = await validator.validate(Credentials("app", "ok"))
    assert tenant.tenant_id == "t-1" and tenant.permissions == frozenset({"chat:read"})
    assert (tenant.rate_limit_rps, tenant.rate_limit_burst) == (5, 9)
    assert tenant.metadata == {"plan": "pro"}
    assert tenant.allowed_origins == ("https://a.example",) and tenant.require_origin


@pytest.mark.parametrize("secret", ["wrong", "invalid"])
async def test_refusals_mean_bad_credentials(
    validator: GrpcCredentialValidator, secret: str
) -> None:
    with pytest.raises(Unauthenticated):
        await validator.validate(Credentials("app", secret))


async def test_rate_limit_keeps_its_retry_delay(validator: GrpcCredentialValidator) -> None:
    with pytest.raises(ResourceExhausted) as caught:
        await validator.validate(Credentials("app", "slow-down"))
    assert caught.value.retry_after == 2.5


async def test_a_broken_tenant_service_is_unavailable_not_unauthenticated(
    validator: GrpcCredentialValidator,
) -> None:
    with pytest.raises(Unavailable):
        await validator.validate(Credentials("app", "broken"))


async def test_an_unreachable_tenant_service_is_unavailable() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(Unavailable):
            await GrpcCredentialValidator(channel, timeout=2).validate(Credentials("a", "b"))
