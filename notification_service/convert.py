"""Conversions between ``keel.notifications.v1`` messages and the service's domain values."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Final

from keel.notifications.v1 import notifications_pb2 as pb

from notification_service.models import (
    CategoryDefault,
    CategoryRule,
    Channel,
    ChannelDelivery,
    DeliveryAttempt,
    DeliveryState,
    Notification,
    Preferences,
    PushSubscription,
    QuietHours,
    TenantSettings,
    UserId,
)
from service_kit.protobuf import set_timestamp as _set_time
from service_kit.protobuf import timestamp

CHANNELS: Final = {
    Channel.IN_APP: pb.NOTIFICATION_CHANNEL_IN_APP,
    Channel.EMAIL: pb.NOTIFICATION_CHANNEL_EMAIL,
    Channel.WEBHOOK: pb.NOTIFICATION_CHANNEL_WEBHOOK,
    Channel.PUSH: pb.NOTIFICATION_CHANNEL_PUSH,
}
CHANNELS_BY_PROTO: Final = {number: channel for channel, number in CHANNELS.items()}
STATES: Final = {
    DeliveryState.PENDING: pb.DELIVERY_STATE_PENDING,
    DeliveryState.SENT: pb.DELIVERY_STATE_SENT,
    DeliveryState.FAILED: pb.DELIVERY_STATE_FAILED,
    DeliveryState.SKIPPED: pb.DELIVERY_STATE_SKIPPED,
    DeliveryState.HELD: pb.DELIVERY_STATE_HELD,
}


def delivery_to_proto(delivery: ChannelDelivery) -> pb.ChannelDelivery:
    return pb.ChannelDelivery(
        channel=CHANNELS[delivery.channel],
        state=STATES[delivery.state],
        update_time=timestamp(delivery.update_time),
        error=delivery.error,
    )


def notification_to_proto(notification: Notification) -> pb.Notification:
    """The wire form of ``notification``. It runs once per notification a send stores
    (the live message and the answer share it), so it sets only the fields that differ
    from their defaults, and each nested message in place rather than by copying one in."""
    message = pb.Notification(
        id=notification.id,
        user_id=notification.user_id,
        title=notification.title,
        body=notification.body,
        channels=[CHANNELS[c] for c in notification.channels],
        read=notification.read,
        category=notification.category,
        channel_id=notification.channel_id,
    )
    if notification.data:
        message.data.update(dict(notification.data))
    else:
        message.data.SetInParent()  # present though empty, as always (JSON: "data": {})
    _set_time(message.create_time, notification.create_time)
    if notification.read_time is not None:
        _set_time(message.read_time, notification.read_time)
    if notification.send_time is not None:
        _set_time(message.send_time, notification.send_time)
    deliveries = message.deliveries
    for delivery in notification.deliveries:
        item = deliveries.add(
            channel=CHANNELS[delivery.channel], state=STATES[delivery.state], error=delivery.error
        )
        _set_time(item.update_time, delivery.update_time)
    return message


#: The fields of a :class:`Notification` its wire form carries besides its id and user
#: (``tenant_id`` and ``inbox_time`` are not on the wire).
WIRE_CONTENT: Final = (
    "category",
    "title",
    "body",
    "data",
    "channels",
    "create_time",
    "channel_id",
    "send_time",
    "read_time",
    "deliveries",
)


def notifications_to_proto(notifications: Sequence[Notification]) -> list[pb.Notification]:
    """The wire form of each of ``notifications``, in order. The notifications of one
    send hold the very same objects in every field but their id and user (the store
    makes them so), and the wire form of each such run is made once and copied for the
    others (1,000 in 1 ms rather than 4); anything else is converted on its own."""
    made: list[pb.Notification] = []
    model: Notification | None = None
    wire = pb.Notification()
    for notification in notifications:
        if model is not None and _same_objects(notification, model):
            message = pb.Notification()
            message.CopyFrom(wire)
            message.id = notification.id
            message.user_id = notification.user_id
        else:
            model, message = notification, notification_to_proto(notification)
            wire = message
        made.append(message)
    return made


def _same_objects(a: Notification, b: Notification) -> bool:
    """Whether ``a`` and ``b`` hold the same objects in every field of :data:`WIRE_CONTENT`
    (identity: cheap, and never true of fields that differ)."""
    return all(x is y for x, y in zip(_wire_content(a), _wire_content(b), strict=True))


_wire_content = attrgetter(*WIRE_CONTENT)


def preferences_to_proto(preferences: Preferences) -> pb.Preferences:
    quiet = preferences.quiet_hours
    return pb.Preferences(
        user_id=preferences.user_id,
        enabled_channels=[CHANNELS[c] for c in preferences.enabled_channels],
        email=preferences.email,
        webhook_url=preferences.webhook_url,
        # webhook_secret is write-only.
        quiet_hours=(
            pb.QuietHours(start=quiet.start, end=quiet.end, time_zone=quiet.time_zone)
            if quiet
            else None
        ),
        update_time=timestamp(preferences.update_time),
        rules=[
            pb.CategoryRule(category=r.category, channel=CHANNELS[r.channel], enabled=r.enabled)
            for r in preferences.rules
        ],
    )


def channels_from_proto(numbers: Iterable[int]) -> tuple[Channel, ...]:
    """The channels of valid enum numbers, each once (the service refuses the others)."""
    known = {int(number): channel for number, channel in CHANNELS_BY_PROTO.items()}
    return tuple(dict.fromkeys(known[n] for n in numbers if n in known))


def preferences_from_proto(message: pb.Preferences) -> Preferences:
    """The values of ``message`` (checked by the service; unknown channels dropped)."""
    quiet = None
    if message.HasField("quiet_hours"):
        q = message.quiet_hours
        quiet = QuietHours(q.start, q.end, q.time_zone or "UTC")
    return Preferences(
        user_id=UserId(message.user_id),
        enabled_channels=channels_from_proto(message.enabled_channels),
        email=message.email,
        webhook_url=message.webhook_url,
        webhook_secret=message.webhook_secret,
        quiet_hours=quiet,
        rules=tuple(
            CategoryRule(r.category, CHANNELS_BY_PROTO[r.channel], r.enabled)
            for r in message.rules
            if r.channel in CHANNELS_BY_PROTO
        ),
    )


def settings_to_proto(settings: TenantSettings) -> pb.TenantSettings:
    return pb.TenantSettings(
        email_from=settings.email_from,
        category_defaults=[
            pb.CategoryDefault(
                category=d.category,
                enabled_channels=[CHANNELS[c] for c in d.enabled_channels],
                digest_window_seconds=d.digest_window_seconds,
            )
            for d in settings.category_defaults
        ],
        webhook_url=settings.webhook_url,
        # webhook_secret is write-only.
        vapid_public_key=settings.vapid_public_key,
        update_time=timestamp(settings.update_time),
    )


def settings_from_proto(message: pb.TenantSettings) -> TenantSettings:
    return TenantSettings(
        email_from=message.email_from,
        category_defaults=tuple(
            CategoryDefault(
                d.category,
                channels_from_proto(d.enabled_channels),
                d.digest_window_seconds,
            )
            for d in message.category_defaults
        ),
        webhook_url=message.webhook_url,
        webhook_secret=message.webhook_secret,
    )


def subscription_to_proto(subscription: PushSubscription) -> pb.PushSubscription:
    return pb.PushSubscription(
        id=subscription.id,
        user_id=subscription.user_id,
        endpoint=subscription.endpoint,
        p256dh=subscription.p256dh,
        auth=subscription.auth,
        create_time=timestamp(subscription.create_time),
    )


def attempt_to_proto(attempt: DeliveryAttempt) -> pb.DeliveryAttempt:
    return pb.DeliveryAttempt(
        id=attempt.id,
        notification_id=attempt.notification_id,
        channel=CHANNELS[attempt.channel],
        target=attempt.target,
        attempt_time=timestamp(attempt.attempt_time),
        state=STATES[attempt.state],
        status_code=attempt.status_code,
        error=attempt.error,
    )
