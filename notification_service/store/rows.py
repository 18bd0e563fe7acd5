"""Rows of the notification tables as domain values, and the reverse."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from notification_service.models import (
    ALL_CHANNELS,
    CategoryDefault,
    CategoryRule,
    Channel,
    ChannelDelivery,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Hold,
    Notification,
    NotificationId,
    Preferences,
    PushSubscription,
    QuietHours,
    TenantSettings,
    UserId,
)
from service_kit.db import as_utc

Row = Mapping[Any, Any]

#: Which of a push notification's deliveries (one per subscription) speaks for it: the
#: first state in this order that any of them is in.
_PUSH_SUMMARY = (
    DeliveryState.SENT,
    DeliveryState.PENDING,
    DeliveryState.HELD,
    DeliveryState.FAILED,
    DeliveryState.SKIPPED,
)


def channels_of(names: Iterable[str]) -> tuple[Channel, ...]:
    return tuple(Channel(name) for name in names)


def to_delivery(row: Row) -> Delivery:
    return Delivery(
        id=row["id"],
        tenant_id=row["tenant_id"],
        notification_id=NotificationId(row["notification_id"]),
        channel=Channel(row["channel"]),
        state=DeliveryState(row["state"]),
        hold=Hold(row["hold"]),
        error=row["error"],
        update_time=as_utc(row["update_time"]),
        subscription_id=row["subscription_id"],
        digest_id=row["digest_id"],
    )


def summarize(
    deliveries: Sequence[Delivery], *, landed: datetime | None = None
) -> tuple[ChannelDelivery, ...]:
    """One state per channel, in the API's channel order (see :data:`_PUSH_SUMMARY`).

    ``landed``: when the notification landed in its user's inbox, if it asked for the
    in-app channel. An in-app delivery sent at once has no row (the notification's
    ``inbox_time`` records it: see :mod:`.send_writes`); without a row it is SENT then.
    """
    by_channel: dict[Channel, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        by_channel[delivery.channel].append(delivery)
    summary = []
    for channel in ALL_CHANNELS:
        found = by_channel.get(channel)
        if not found:
            if channel is Channel.IN_APP and landed is not None:
                summary.append(ChannelDelivery(channel, DeliveryState.SENT, landed))
            continue
        states = {d.state for d in found}
        state = next(s for s in _PUSH_SUMMARY if s in states)
        speaker = next(d for d in found if d.state is state)
        latest = max(d.update_time for d in found)
        summary.append(ChannelDelivery(channel, state, latest, speaker.error))
    return tuple(summary)


def to_notification(row: Row, deliveries: Sequence[Delivery]) -> Notification:
    send_time, read_time, inbox_time = row["send_time"], row["read_time"], row["inbox_time"]
    channels = channels_of(row["channels"])
    landed = as_utc(inbox_time) if inbox_time else None
    return Notification(
        id=NotificationId(row["id"]),
        tenant_id=row["tenant_id"],
        user_id=UserId(row["user_id"]),
        category=row["category"],
        title=row["title"],
        body=row["body"],
        data=row["data"],
        channels=channels,
        create_time=as_utc(row["create_time"]),
        channel_id=row["channel_id"] or "",
        send_time=as_utc(send_time) if send_time else None,
        read_time=as_utc(read_time) if read_time else None,
        deliveries=summarize(deliveries, landed=landed if Channel.IN_APP in channels else None),
        inbox_time=landed,
    )


def to_preferences(row: Row) -> Preferences:
    quiet = None
    if row["quiet_start"] is not None:
        quiet = QuietHours(row["quiet_start"], row["quiet_end"], row["quiet_time_zone"] or "UTC")
    enabled = row["enabled_channels"]
    return Preferences(
        user_id=UserId(row["user_id"]),
        enabled_channels=ALL_CHANNELS if enabled is None else channels_of(enabled),
        email=row["email"],
        webhook_url=row["webhook_url"],
        webhook_secret=row["webhook_secret"],
        quiet_hours=quiet,
        rules=tuple(
            CategoryRule(rule["category"], Channel(rule["channel"]), bool(rule["enabled"]))
            for rule in row["rules"]
        ),
        update_time=as_utc(row["update_time"]),
    )


def preferences_row(preferences: Preferences) -> dict[str, Any]:
    """The columns of ``preferences`` (without ``tenant_id`` and ``update_time``)."""
    quiet = preferences.quiet_hours
    enabled = preferences.enabled_channels
    return {
        "user_id": preferences.user_id,
        "enabled_channels": None
        if set(enabled) == set(ALL_CHANNELS)
        else [str(c) for c in enabled],
        "email": preferences.email,
        "webhook_url": preferences.webhook_url,
        "webhook_secret": preferences.webhook_secret,
        "quiet_start": quiet.start if quiet else None,
        "quiet_end": quiet.end if quiet else None,
        "quiet_time_zone": quiet.time_zone if quiet else None,
        "rules": [
            {"category": r.category, "channel": str(r.channel), "enabled": r.enabled}
            for r in preferences.rules
        ],
    }


#: The names of a tenant's settings rows.
EMAIL_FROM = "email_from"
CATEGORY_DEFAULTS = "category_defaults"
WEBHOOK_URL = "webhook_url"
WEBHOOK_SECRET = "webhook_secret"
VAPID = "vapid"


def to_tenant_settings(rows: Iterable[Row]) -> TenantSettings:
    """The settings the tenant's rows hold (defaults for the missing ones)."""
    values: dict[str, Any] = {}
    changed = []
    for row in rows:
        values[row["name"]] = row["value"]
        if row["update_time"] is not None:
            changed.append(as_utc(row["update_time"]))
    vapid = values.get(VAPID) or {}
    return TenantSettings(
        email_from=(values.get(EMAIL_FROM) or {}).get("value", ""),
        category_defaults=tuple(
            CategoryDefault(
                d["category"], channels_of(d["enabled_channels"]), int(d["digest_window_seconds"])
            )
            for d in (values.get(CATEGORY_DEFAULTS) or {}).get("value", [])
        ),
        webhook_url=(values.get(WEBHOOK_URL) or {}).get("value", ""),
        webhook_secret=(values.get(WEBHOOK_SECRET) or {}).get("value", ""),
        vapid_public_key=vapid.get("public_key", ""),
        vapid_private_pem=vapid.get("private_pem", ""),
        update_time=max(changed) if changed else None,
    )


def tenant_settings_values(settings: TenantSettings, names: Iterable[str]) -> dict[str, Any]:
    """The stored value of each of ``names`` in ``settings``."""
    every: dict[str, Any] = {
        EMAIL_FROM: {"value": settings.email_from},
        CATEGORY_DEFAULTS: {
            "value": [
                {
                    "category": d.category,
                    "enabled_channels": [str(c) for c in d.enabled_channels],
                    "digest_window_seconds": d.digest_window_seconds,
                }
                for d in settings.category_defaults
            ]
        },
        WEBHOOK_URL: {"value": settings.webhook_url},
        WEBHOOK_SECRET: {"value": settings.webhook_secret},
        VAPID: {
            "public_key": settings.vapid_public_key,
            "private_pem": settings.vapid_private_pem,
        },
    }
    return {name: every[name] for name in names}


def to_subscription(row: Row) -> PushSubscription:
    return PushSubscription(
        id=row["id"],
        user_id=UserId(row["user_id"]),
        endpoint=row["endpoint"],
        p256dh=row["p256dh"],
        auth=row["auth"],
        create_time=as_utc(row["create_time"]),
    )


def to_attempt(row: Row) -> DeliveryAttempt:
    return DeliveryAttempt(
        id=row["id"],
        notification_id=NotificationId(row["notification_id"]),
        channel=Channel(row["channel"]),
        target=row["target"],
        attempt_time=as_utc(row["attempt_time"]),
        state=DeliveryState(row["state"]),
        status_code=row["status_code"],
        error=row["error"],
        delivery_id=row["delivery_id"],
    )
