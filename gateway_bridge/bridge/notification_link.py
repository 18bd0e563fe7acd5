"""The bridge's link to a notification service: unary calls for a tenant's user, and
the one-click unsubscribe.

Calls for a tenant act for it with the peer token and ``x-keel-tenant-id`` metadata
(as :class:`~gateway_bridge.bridge.link.GatewayLink`'s do); the notification service
checks the tenant's scopes. ``Unsubscribe`` needs only the peer token. In ``keel serve
all`` the service is the process's own gRPC port; a bridge of a cluster finds it at
``KEEL_NOTIFICATION_SERVICE_ADDR``, and without one every call raises
:class:`NotConfigured`.
"""

from __future__ import annotations

from typing import Final, TypeVar, cast

import grpc
from keel.notifications.v1 import notifications_pb2 as n
from keel.notifications.v1 import notifications_pb2_grpc

from service_kit.interceptor import ACTING_FOR_TENANT

Req = TypeVar("Req")
Resp = TypeVar("Resp")

#: What a bridge without a notification service says.
NOT_CONFIGURED: Final = (
    "this bridge has no notification service (set KEEL_NOTIFICATION_SERVICE_ADDR)"
)


class NotConfigured(Exception):
    """The bridge was started without a notification service to call."""

    def __init__(self) -> None:
        super().__init__(NOT_CONFIGURED)


class NotificationLink:
    """Calls to ``keel.notifications.v1.NotificationService`` (see the module docstring);
    each raises ``grpc.aio.AioRpcError`` when the call fails."""

    def __init__(
        self, channel: grpc.aio.Channel | None, peer_token: str, *, call_timeout: float = 10.0
    ) -> None:
        self._channel = channel
        self._stub = (
            cast(
                "notifications_pb2_grpc.NotificationServiceAsyncStub",
                notifications_pb2_grpc.NotificationServiceStub(channel),
            )
            if channel is not None
            else None
        )
        self._auth = ("authorization", f"Bearer {peer_token}")
        self._call_timeout = call_timeout

    @property
    def stub(self) -> notifications_pb2_grpc.NotificationServiceAsyncStub:
        if self._stub is None:
            raise NotConfigured
        return self._stub

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        tenant_id: str | None,
    ) -> Resp:
        metadata = [self._auth]
        if tenant_id is not None:
            metadata.append((ACTING_FOR_TENANT, tenant_id))
        response: Resp = await method(request, metadata=metadata, timeout=self._call_timeout)
        return response

    async def list_notifications(
        self, tenant_id: str, request: n.ListNotificationsRequest
    ) -> n.ListNotificationsResponse:
        return await self._call(self.stub.ListNotifications, request, tenant_id)

    async def mark_read(
        self, tenant_id: str, request: n.MarkNotificationReadRequest
    ) -> n.MarkNotificationReadResponse:
        return await self._call(self.stub.MarkNotificationRead, request, tenant_id)

    async def tenant_settings(self, tenant_id: str) -> n.GetTenantSettingsResponse:
        return await self._call(
            self.stub.GetTenantSettings, n.GetTenantSettingsRequest(), tenant_id
        )

    async def register_push(
        self, tenant_id: str, request: n.RegisterPushSubscriptionRequest
    ) -> n.RegisterPushSubscriptionResponse:
        return await self._call(self.stub.RegisterPushSubscription, request, tenant_id)

    async def delete_push(
        self, tenant_id: str, request: n.DeletePushSubscriptionRequest
    ) -> n.DeletePushSubscriptionResponse:
        return await self._call(self.stub.DeletePushSubscription, request, tenant_id)

    async def unsubscribe(self, token: str) -> n.UnsubscribeResponse:
        """Apply a one-click unsubscribe token (as the bridge: no tenant)."""
        return await self._call(self.stub.Unsubscribe, n.UnsubscribeRequest(token=token), None)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
