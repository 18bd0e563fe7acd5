"""Validating credentials over gRPC, for processes that do not host the tenant service."""

from __future__ import annotations

from datetime import UTC

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from service_kit.auth import Authenticator, Credentials, TenantContext, TenantId
from service_kit.config import Settings
from service_kit.errors import NotFound, ResourceExhausted, Unauthenticated, Unavailable


def tenant_context_from_proto(
    message: tenants_pb2.ValidateCredentialsResponse | tenants_pb2.Tenant, tenant_id: str
) -> TenantContext:
    """The :class:`TenantContext` a ``ValidateCredentialsResponse`` or ``Tenant`` describes."""
    return TenantContext(
        tenant_id=TenantId(tenant_id),
        name=message.name,
        permissions=frozenset(message.permissions),
        rate_limit_rps=message.rate_limits.requests_per_second,
        rate_limit_burst=message.rate_limits.burst,
        allowed_origins=tuple(message.allowed_origins),
        require_origin=message.require_origin,
        metadata=json_format.MessageToDict(message.metadata),
        secret_rotated_at=(
            message.secret_rotate_time.ToDatetime(UTC)
            if isinstance(message, tenants_pb2.Tenant) and message.HasField("secret_rotate_time")
            else None
        ),
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
        return tenant_context_from_proto(response, response.tenant_id)


# Answers that mean "these credentials are no good", not "the tenant service is down".
_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


class GrpcTenantLookup:
    """Finds tenants by id through a remote ``TenantService.GetTenant`` (operator token)."""

    def __init__(
        self, channel: grpc.aio.Channel, admin_token: str, *, timeout: float = 5.0
    ) -> None:
        self._stub = tenants_pb2_grpc.TenantServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {admin_token}"),)
        self._timeout = timeout

    async def lookup(self, tenant_id: str) -> TenantContext:
        try:
            response = await self._stub.GetTenant(
                tenants_pb2.GetTenantRequest(id=tenant_id),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"tenant {tenant_id!r} not found") from exc
            raise Unavailable(
                f"the tenant service could not look up a tenant ({exc.code().name})",
                retry_after=1.0,
            ) from exc
        return tenant_context_from_proto(response.tenant, response.tenant.id)


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


def remote_authenticator(settings: Settings, channel: grpc.aio.Channel) -> Authenticator:
    """Credentials and tenant lookups through the tenant-service process on ``channel``
    (lookups, for the bridge's origin checks, need the peer or operator token)."""
    token = settings.peer_token or settings.admin_token
    lookup = GrpcTenantLookup(channel, token) if token else None
    return Authenticator(
        GrpcCredentialValidator(channel), lookup=lookup, ttl=settings.auth_cache_seconds
    )
