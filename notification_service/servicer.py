"""``keel.notifications.v1.NotificationService``: protobuf in, :class:`NotificationService`
call, protobuf out.

Checks that only concern the wire (enum numbers, ids, page sizes and tokens, times) happen
here; everything else is the service's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeAlias

import grpc
from keel.notifications.v1 import notifications_pb2 as pb
from keel.notifications.v1 import notifications_pb2_grpc

from notification_service import convert
from notification_service.errors import InvalidNotification
from notification_service.models import DEFAULT_CATEGORY, SendRequest
from notification_service.service import NotificationService
from service_kit.auth import current_tenant
from service_kit.protobuf import dict_of
from service_kit.validation import (
    Violations,
    decode_time_position,
    page_size,
    time_page,
    valid_id,
)

Context: TypeAlias = grpc.aio.ServicerContext

#: Reads a one-click unsubscribe token: (tenant id, user id, category); raises
#: InvalidArgument naming ``token`` for a token Keel did not make.
TokenReader = Callable[[str], tuple[str, str, str]]

_KNOWN_CHANNELS = {int(n) for n in convert.CHANNELS_BY_PROTO}


def _tenant_id() -> str:
    return current_tenant().tenant_id


def _channels(v: Violations, field: str, numbers: list[int]) -> None:
    for index, number in enumerate(numbers):
        v.check(number in _KNOWN_CHANNELS, f"{field}[{index}]", f"{number} is not a channel")


def _time(v: Violations, field: str, message: pb.SendNotificationRequest) -> datetime | None:
    if not message.HasField("send_at"):
        return None
    try:
        return message.send_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        v.add(field, "is not a valid time")
        return None


class NotificationServicer(notifications_pb2_grpc.NotificationServiceServicer):
    """The gRPC face of :class:`NotificationService`."""

    def __init__(
        self, service: NotificationService, *, read_unsubscribe_token: TokenReader | None
    ) -> None:
        self._service = service
        self._read_token = read_unsubscribe_token

    async def SendNotification(
        self, request: pb.SendNotificationRequest, context: Context
    ) -> pb.SendNotificationResponse:
        v = Violations()
        _channels(v, "channels", list(request.channels))
        send_at = _time(v, "send_at", request)
        v.raise_if_any(InvalidNotification)
        sent = await self._service.send(
            current_tenant(),
            SendRequest(
                title=request.title,
                body=request.body,
                data=dict_of(request.data),
                category=request.category or DEFAULT_CATEGORY,
                user_ids=list(request.user_ids),
                channel_id=request.channel_id,
                exclude_user_ids=list(request.exclude_user_ids),
                channels=convert.channels_from_proto(request.channels),
                request_id=request.request_id,
                send_at=send_at,
            ),
        )
        # Those announced live are already in their wire form: one conversion each.
        wire = sent.wire
        return pb.SendNotificationResponse(
            notifications=[
                found if (found := wire.get(n.id)) is not None else convert.notification_to_proto(n)
                for n in sent.notifications
            ]
        )

    async def GetNotification(
        self, request: pb.GetNotificationRequest, context: Context
    ) -> pb.GetNotificationResponse:
        found = await self._service.get(_tenant_id(), valid_id("id", request.id))
        return pb.GetNotificationResponse(notification=convert.notification_to_proto(found))

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Context
    ) -> pb.ListNotificationsResponse:
        limit = page_size(request.page_size)
        query = f"inbox:{request.user_id}:{int(request.unread_only)}"
        after = decode_time_position(request.page_token, query=query)
        inbox = await self._service.inbox(
            _tenant_id(),
            request.user_id,
            unread_only=request.unread_only,
            limit=limit + 1,
            after=after,
        )
        page, token = time_page(
            inbox.notifications,
            limit,
            lambda n: (n.inbox_time or n.create_time, n.id),
            query=query,
        )
        return pb.ListNotificationsResponse(
            notifications=[convert.notification_to_proto(n) for n in page],
            next_page_token=token,
            unread_count=inbox.unread_count,
        )

    async def MarkNotificationRead(
        self, request: pb.MarkNotificationReadRequest, context: Context
    ) -> pb.MarkNotificationReadResponse:
        if not request.all and not request.notification_ids:
            raise InvalidNotification.for_field(
                "notification_ids", "name the notifications to mark read, or set all"
            )
        ids = None if request.all else list(request.notification_ids)
        marked, unread = await self._service.mark_read(_tenant_id(), request.user_id, ids)
        return pb.MarkNotificationReadResponse(marked_count=marked, unread_count=unread)

    async def GetPreferences(
        self, request: pb.GetPreferencesRequest, context: Context
    ) -> pb.GetPreferencesResponse:
        found = await self._service.preferences(_tenant_id(), request.user_id)
        return pb.GetPreferencesResponse(preferences=convert.preferences_to_proto(found))

    async def UpdatePreferences(
        self, request: pb.UpdatePreferencesRequest, context: Context
    ) -> pb.UpdatePreferencesResponse:
        given = request.preferences
        v = Violations()
        _channels(v, "preferences.enabled_channels", list(given.enabled_channels))
        for index, rule in enumerate(given.rules):
            v.check(
                rule.channel in _KNOWN_CHANNELS,
                f"preferences.rules[{index}].channel",
                f"{rule.channel} is not a channel",
            )
        v.raise_if_any(InvalidNotification)
        stored = await self._service.update_preferences(
            _tenant_id(), convert.preferences_from_proto(given), list(request.update_mask.paths)
        )
        return pb.UpdatePreferencesResponse(preferences=convert.preferences_to_proto(stored))

    async def ListDeliveryAttempts(
        self, request: pb.ListDeliveryAttemptsRequest, context: Context
    ) -> pb.ListDeliveryAttemptsResponse:
        notification_id = valid_id("notification_id", request.notification_id)
        limit = page_size(request.page_size)
        query = f"attempts:{notification_id}"
        after = decode_time_position(request.page_token, query=query)
        found = await self._service.attempts(
            _tenant_id(), notification_id, limit=limit + 1, after=after
        )
        page, token = time_page(found, limit, lambda a: (a.attempt_time, a.id), query=query)
        return pb.ListDeliveryAttemptsResponse(
            attempts=[convert.attempt_to_proto(a) for a in page], next_page_token=token
        )

    async def GetTenantSettings(
        self, request: pb.GetTenantSettingsRequest, context: Context
    ) -> pb.GetTenantSettingsResponse:
        settings = await self._service.tenant_settings(_tenant_id())
        return pb.GetTenantSettingsResponse(settings=convert.settings_to_proto(settings))

    async def UpdateTenantSettings(
        self, request: pb.UpdateTenantSettingsRequest, context: Context
    ) -> pb.UpdateTenantSettingsResponse:
        v = Violations()
        for index, default in enumerate(request.settings.category_defaults):
            _channels(
                v,
                f"settings.category_defaults[{index}].enabled_channels",
                list(default.enabled_channels),
            )
        v.raise_if_any(InvalidNotification)
        settings = await self._service.update_tenant_settings(
            _tenant_id(),
            convert.settings_from_proto(request.settings),
            list(request.update_mask.paths),
        )
        return pb.UpdateTenantSettingsResponse(settings=convert.settings_to_proto(settings))

    async def RegisterPushSubscription(
        self, request: pb.RegisterPushSubscriptionRequest, context: Context
    ) -> pb.RegisterPushSubscriptionResponse:
        given = request.subscription
        stored = await self._service.register_push(
            _tenant_id(), given.user_id, given.endpoint, given.p256dh, given.auth
        )
        return pb.RegisterPushSubscriptionResponse(
            subscription=convert.subscription_to_proto(stored)
        )

    async def DeletePushSubscription(
        self, request: pb.DeletePushSubscriptionRequest, context: Context
    ) -> pb.DeletePushSubscriptionResponse:
        await self._service.delete_push(_tenant_id(), request.user_id, request.endpoint)
        return pb.DeletePushSubscriptionResponse()

    async def ListPushSubscriptions(
        self, request: pb.ListPushSubscriptionsRequest, context: Context
    ) -> pb.ListPushSubscriptionsResponse:
        found = await self._service.push_subscriptions(_tenant_id(), request.user_id)
        return pb.ListPushSubscriptionsResponse(
            subscriptions=[convert.subscription_to_proto(s) for s in found]
        )

    async def Unsubscribe(
        self, request: pb.UnsubscribeRequest, context: Context
    ) -> pb.UnsubscribeResponse:
        if self._read_token is None:
            raise NotImplementedError
        tenant_id, user_id, category = self._read_token(request.token)
        await self._service.unsubscribe(tenant_id, user_id, category)
        return pb.UnsubscribeResponse(user_id=user_id, category=category)
