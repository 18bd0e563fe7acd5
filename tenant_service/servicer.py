"""``keel.tenants.v1.TenantService``: converts between protobuf and :mod:`tenant_service.tenants`.

Nothing here decides anything: checks of ids and pages, then a call to
:class:`TenantDirectory`, then conversion back. Errors are raised as Keel
errors; the interceptor turns them into statuses.
"""

from __future__ import annotations

import grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from service_kit.auth import Credentials, TenantContext, TenantId
from service_kit.protobuf import dict_of, struct, timestamp
from service_kit.validation import (
    Violations,
    decode_time_position,
    page_size,
    time_page,
    valid_id,
)
from tenant_service.tenants import DeletionState, Tenant, TenantDeletion, TenantDirectory

_LIST_QUERY = "tenants.list"


def tenant_to_proto(tenant: Tenant) -> tenants_pb2.Tenant:
    return tenants_pb2.Tenant(
        id=tenant.id,
        name=tenant.name,
        client_id=tenant.client_id,
        permissions=tenant.permissions,
        rate_limits=tenants_pb2.RateLimits(
            requests_per_second=tenant.rate_limit_rps, burst=tenant.rate_limit_burst
        ),
        allowed_origins=tenant.allowed_origins,
        require_origin=tenant.require_origin,
        metadata=struct(tenant.metadata),
        create_time=timestamp(tenant.create_time),
        update_time=timestamp(tenant.update_time),
        secret_rotate_time=timestamp(tenant.secret_rotate_time),
    )


def tenant_from_proto(message: tenants_pb2.Tenant) -> Tenant:
    return Tenant(
        id=TenantId(message.id),
        name=message.name,
        client_id=message.client_id,
        permissions=tuple(message.permissions),
        rate_limit_rps=message.rate_limits.requests_per_second,
        rate_limit_burst=message.rate_limits.burst,
        allowed_origins=tuple(message.allowed_origins),
        require_origin=message.require_origin,
        metadata=dict_of(message.metadata),
    )


_DELETION_STATES = {
    DeletionState.DELETING: tenants_pb2.TENANT_DELETION_STATE_DELETING,
    DeletionState.PURGED: tenants_pb2.TENANT_DELETION_STATE_PURGED,
}


def deletion_to_proto(deletion: TenantDeletion) -> tenants_pb2.TenantDeletion:
    return tenants_pb2.TenantDeletion(
        tenant_id=deletion.tenant_id,
        name=deletion.name,
        state=_DELETION_STATES[deletion.state],
        purged_rows=dict(deletion.purged_rows),
        start_time=timestamp(deletion.start_time),
        update_time=timestamp(deletion.update_time),
        finish_time=timestamp(deletion.finish_time),
    )


def context_to_proto(tenant: TenantContext) -> tenants_pb2.ValidateCredentialsResponse:
    return tenants_pb2.ValidateCredentialsResponse(
        tenant_id=tenant.tenant_id,
        name=tenant.name,
        permissions=sorted(tenant.permissions),
        rate_limits=tenants_pb2.RateLimits(
            requests_per_second=tenant.rate_limit_rps, burst=tenant.rate_limit_burst
        ),
        metadata=struct(dict(tenant.metadata)),
        allowed_origins=tenant.allowed_origins,
        require_origin=tenant.require_origin,
    )


class TenantServicer(tenants_pb2_grpc.TenantServiceServicer):
    """The gRPC face of :class:`TenantDirectory`."""

    def __init__(self, directory: TenantDirectory) -> None:
        self._directory = directory

    async def CreateTenant(
        self, request: tenants_pb2.CreateTenantRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.CreateTenantResponse:
        v = Violations()
        v.check(request.HasField("tenant"), "tenant", "is required")
        v.text("request_id", request.request_id, max_length=128, required=False)
        v.raise_if_any()
        tenant, secret = await self._directory.create(
            tenant_from_proto(request.tenant),
            client_secret=request.client_secret,
            request_id=request.request_id,
        )
        return tenants_pb2.CreateTenantResponse(
            tenant=tenant_to_proto(tenant), client_secret=secret
        )

    async def GetTenant(
        self, request: tenants_pb2.GetTenantRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.GetTenantResponse:
        tenant = await self._directory.get(valid_id("id", request.id))
        return tenants_pb2.GetTenantResponse(tenant=tenant_to_proto(tenant))

    async def ListTenants(
        self, request: tenants_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.ListTenantsResponse:
        limit = page_size(request.page_size)
        after = decode_time_position(request.page_token, query=_LIST_QUERY)
        found = await self._directory.list(limit=limit + 1, after=after)
        page, token = time_page(found, limit, lambda x: (x.create_time, x.id), query=_LIST_QUERY)
        return tenants_pb2.ListTenantsResponse(
            tenants=[tenant_to_proto(t) for t in page], next_page_token=token
        )

    async def UpdateTenant(
        self, request: tenants_pb2.UpdateTenantRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.UpdateTenantResponse:
        tenant_id = valid_id("tenant.id", request.tenant.id)
        tenant = await self._directory.update(
            tenant_id, tenant_from_proto(request.tenant), list(request.update_mask.paths)
        )
        return tenants_pb2.UpdateTenantResponse(tenant=tenant_to_proto(tenant))

    async def RotateSecret(
        self, request: tenants_pb2.RotateSecretRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.RotateSecretResponse:
        tenant, secret = await self._directory.rotate_secret(valid_id("id", request.id))
        return tenants_pb2.RotateSecretResponse(
            tenant=tenant_to_proto(tenant), client_secret=secret
        )

    async def DeleteTenant(
        self, request: tenants_pb2.DeleteTenantRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.DeleteTenantResponse:
        deletion = await self._directory.delete(valid_id("id", request.id))
        return tenants_pb2.DeleteTenantResponse(deletion=deletion_to_proto(deletion))

    async def GetTenantDeletion(
        self, request: tenants_pb2.GetTenantDeletionRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.GetTenantDeletionResponse:
        deletion = await self._directory.deletion(valid_id("tenant_id", request.tenant_id))
        return tenants_pb2.GetTenantDeletionResponse(deletion=deletion_to_proto(deletion))

    async def ValidateCredentials(
        self, request: tenants_pb2.ValidateCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> tenants_pb2.ValidateCredentialsResponse:
        v = Violations()
        v.text("client_id", request.client_id, max_length=128)
        v.text("client_secret", request.client_secret, max_length=256)
        v.raise_if_any()
        tenant = await self._directory.validate(
            Credentials(request.client_id, request.client_secret)
        )
        return context_to_proto(tenant)
