"""Validating credentials over gRPC, for processes that do not host the tenant service."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from service_kit.auth import Credentials, TenantContext, TenantId
from service_kit.errors import ResourceExhausted, Unauthenticated, Unavailable


def tenant_context_from_proto(response: tenants_pb2.ValidateCredentialsResponse) -> TenantContext:
    """The :class:`TenantContext` a ``ValidateCredentialsResponse`` describes."""
    return TenantContext(
        tenant_id=TenantId(response.tenant_id),
        name=response.name,
        permissions=frozenset(response.permissions),
        rate_limit_rps=response.rate_limits.requests_per_second,
        rate_limit_burst=response.rate_limits.burst,
        allowed_origins=tuple(response.allowed_origins),
        require_origin=response.require_origin,
        metadata=json_format.MessageToDict(response.metadata),
    )


class GrpcCredentialValidator:
    """Asks a remote ``TenantService.ValidateCredentials``; maps its statuses to Keel errors."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 5.0) -> None:
        self._stub = tenants_pb2_grpc.TenantServiceStub(channel)
        self._timeout = timeout

    async def validate(self, credentials: Credentials) -> TenantContext:
        request = tenants_pb2.ValidateCredentialsRequest(
            client_id=credentials.client_id, client_secret=credentials.client_secret
        )
        try:
            response = await self._stub.ValidateCredentials(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc
        return tenant_context_from_proto(response)


# Answers that mean "these credentials are no good", not "the tenant service is down".
_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    code = exc.code()
    if code in _REFUSALS:
        return Unauthenticated(exc.details() or "invalid client id or client secret")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(exc.details() or "too many attempts", _retry_delay(exc))
    return Unavailable(
        f"the tenant service could not validate credentials ({code.name})", retry_after=1.0
    )


def _retry_delay(exc: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(exc)
    for detail in status.details if status else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return 1.0
