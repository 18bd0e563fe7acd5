"""The notification service's domain values: notifications, deliveries, preferences, settings.

Plain frozen dataclasses and enums; nothing here knows protobuf or SQL. Times are aware
UTC datetimes. A user's preferences and the tenant's settings always exist as values:
without a stored row they are the defaults (:data:`DEFAULT_PREFERENCES`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NewType

NotificationId = NewType("NotificationId", str)
UserId = NewType("UserId", str)

#: The category of a notification sent without one.
DEFAULT_CATEGORY: Final = "general"
#: Recipients one SendNotification may name, and members a channel send may reach.
MAX_USERS: Final = 1000
MAX_CHANNEL_MEMBERS: Final = 10_000
#: Recipients a tenant with only ``send:basic`` may name in one send.
MAX_BASIC_USERS: Final = 100
#: How far ahead ``send_at`` may be, and the longest digest window.
MAX_SCHEDULE_SECONDS: Final = 30 * 86_400
MAX_DIGEST_WINDOW_SECONDS: Final = 86_400
#: The push subscriptions (browsers) kept per user; registering one more drops the oldest.
MAX_PUSH_SUBSCRIPTIONS_PER_USER: Final = 20


#: The kinds of the jobs the service enqueues (service_kit/jobs.py); payloads hold ids only.
EMAIL_JOB: Final = "notification.email"
PUSH_JOB: Final = "notification.push"
WEBHOOK_JOB: Final = "notification.webhook"
DIGEST_JOB: Final = "notification.digest"
RELEASE_JOB: Final = "notification.release"


class Channel(enum.StrEnum):
    """A way of reaching a user (stored by these names)."""

    IN_APP = "in_app"
    EMAIL = "email"
    WEBHOOK = "webhook"
    PUSH = "push"


#: Every channel, in the order of the API's enum.
ALL_CHANNELS: Final = (Channel.IN_APP, Channel.EMAIL, Channel.WEBHOOK, Channel.PUSH)
#: The channels whose deliveries go through the job queue (and can be held or digested).
QUEUED_CHANNELS: Final = frozenset({Channel.EMAIL, Channel.WEBHOOK, Channel.PUSH})
#: The channels a category's digest window collapses.
DIGEST_CHANNELS: Final = frozenset({Channel.EMAIL, Channel.PUSH})
#: The job that delivers one delivery of each queued channel.
DELIVERY_JOBS: Final = {
    Channel.EMAIL: EMAIL_JOB,
    Channel.PUSH: PUSH_JOB,
    Channel.WEBHOOK: WEBHOOK_JOB,
}


class DeliveryState(enum.StrEnum):
    """Where a notification stands on one channel (see the proto's ``DeliveryState``)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"


class Hold(enum.StrEnum):
    """Why a delivery is HELD (empty when it is not)."""

    NONE = ""
    QUIET_HOURS = "quiet"
    DIGEST = "digest"
    SCHEDULED = "scheduled"


@dataclass(frozen=True, slots=True)
class ChannelDelivery:
    """A notification's state on one channel (the push channel sums its subscriptions)."""

    channel: Channel
    state: DeliveryState
    update_time: datetime
    error: str = ""


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one user, with its state on each channel."""

    id: NotificationId
    tenant_id: str
    user_id: UserId
    category: str
    title: str
    body: str
    data: Mapping[str, Any]
    channels: tuple[Channel, ...]
    create_time: datetime
    channel_id: str = ""
    send_time: datetime | None = None
    read_time: datetime | None = None
    deliveries: tuple[ChannelDelivery, ...] = ()
    #: When it landed in the user's inbox; None while it is not there (not sent in-app,
    #: or waiting for ``send_time``).
    inbox_time: datetime | None = None

    @property
    def read(self) -> bool:
        return self.read_time is not None


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily period (``HH:MM`` to ``HH:MM`` in ``time_zone``) in which email, push and
    webhook deliveries wait; ``end`` before ``start`` crosses midnight."""

    start: str
    end: str
    time_zone: str = "UTC"


@dataclass(frozen=True, slots=True)
class CategoryRule:
    """A user's on/off for one channel of one category."""

    category: str
    channel: Channel
    enabled: bool


@dataclass(frozen=True, slots=True)
class Preferences:
    """How a user wants to be reached; the defaults have no ``update_time``."""

    user_id: UserId
    enabled_channels: tuple[Channel, ...] = ALL_CHANNELS
    email: str = ""
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    quiet_hours: QuietHours | None = None
    rules: tuple[CategoryRule, ...] = ()
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class CategoryDefault:
    """The tenant's default channels and digest window of one category."""

    category: str
    enabled_channels: tuple[Channel, ...] = ()  # empty: every channel
    digest_window_seconds: int = 0


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """How the tenant's notifications are sent. ``webhook_secret`` and the VAPID private
    key never leave the service."""

    email_from: str = ""
    category_defaults: tuple[CategoryDefault, ...] = ()
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    vapid_public_key: str = ""
    vapid_private_pem: str = field(default="", repr=False)
    update_time: datetime | None = None

    def category_default(self, category: str) -> CategoryDefault:
        for default in self.category_defaults:
            if default.category == category:
                return default
        return CategoryDefault(category)


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """One browser's Web Push subscription (keys as the browser gave them, base64url)."""

    id: str
    user_id: UserId
    endpoint: str
    p256dh: str
    auth: str
    create_time: datetime


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One try at an email, push or webhook delivery."""

    id: str
    notification_id: NotificationId
    channel: Channel
    target: str
    attempt_time: datetime
    state: DeliveryState
    status_code: int = 0
    error: str = ""
    #: The delivery it was made for (not shown by the API).
    delivery_id: str = ""


@dataclass(frozen=True, slots=True)
class SendRequest:
    """What SendNotification asks for, checked (see :mod:`notification_service.service`)."""

    title: str
    body: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    category: str = DEFAULT_CATEGORY
    user_ids: Sequence[str] = ()
    channel_id: str = ""
    exclude_user_ids: Sequence[str] = ()
    channels: tuple[Channel, ...] = ()  # empty: every channel the caller may use
    request_id: str = ""
    send_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stored delivery: a notification on one channel (one push subscription)."""

    id: str
    tenant_id: str
    notification_id: NotificationId
    channel: Channel
    state: DeliveryState
    hold: Hold
    error: str
    update_time: datetime
    subscription_id: str | None = None
    digest_id: str | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    """When a queued delivery goes: in the digest of a ``digest_seconds`` window, else at
    ``hold_until`` (the end of quiet hours), else at once. ``quiet`` is the recipient's
    quiet hours (a digest that would fall in them waits for their end)."""

    hold_until: datetime | None = None
    digest_seconds: int = 0
    quiet: QuietHours | None = None


@dataclass(frozen=True, slots=True)
class PlannedChannel:
    """A recipient's channel as planned: ``skipped`` says why it is not used; a used
    queued channel goes with ``timing``; push goes to each of ``subscription_ids``."""

    channel: Channel
    skipped: str | None = None
    timing: Timing = Timing()
    subscription_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedRecipient:
    """One notification of a send: its id, its user and its channels."""

    notification_id: NotificationId
    user_id: UserId
    channels: tuple[PlannedChannel, ...]


@dataclass(frozen=True, slots=True)
class Digest:
    """A closed digest window: whose, which category and channel, and what it holds."""

    id: str
    tenant_id: str
    user_id: UserId
    category: str
    channel: Channel
    end_time: datetime


@dataclass(frozen=True, slots=True)
class InboxPage:
    """One page of a user's inbox and the number of unread notifications in it all."""

    notifications: list[Notification]
    unread_count: int
