"""The ``NotificationStore`` role: what the notification service and its delivery jobs need
from storage. :class:`~notification_service.store.SqlNotificationStore` plays it.

Every method that takes a ``tenant_id`` is scoped by it: another tenant's notification is
absent like one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from notification_service.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Digest,
    Notification,
    NotificationId,
    Preferences,
    PushSubscription,
    TenantSettings,
    Timing,
    UserId,
)
from notification_service.store.deliveries import DeliveryInputs, Settle
from notification_service.store.sends import NewSend, StoredSend

After = tuple[datetime, str] | None


class NotificationStore(Protocol):
    # -- sends (notification_service/store/sends.py) -----------------------------------

    async def find_send(self, tenant_id: str, request_id: str) -> tuple[str, str] | None: ...

    async def send_notifications(self, tenant_id: str, send_id: str) -> list[Notification]: ...

    async def create_send(self, send: NewSend) -> StoredSend:
        """Reads, plans and stores the send in one transaction. Raises ``SendExists``
        when the request id was used, storing nothing."""
        ...

    async def scheduled_deliveries(
        self, tenant_id: str, send_id: str
    ) -> list[tuple[Delivery, UserId, str]]: ...

    async def release(
        self,
        tenant_id: str,
        send_id: str,
        timings: Mapping[str, Timing],
        *,
        now: datetime,
        max_attempts: int,
    ) -> list[NotificationId]: ...

    # -- inboxes (store/inbox.py) ------------------------------------------------------

    async def get_notification(
        self, tenant_id: str, notification_id: str
    ) -> Notification | None: ...

    async def get_notifications(
        self, tenant_id: str, notification_ids: Sequence[str]
    ) -> list[Notification]: ...

    async def list_inbox(
        self, tenant_id: str, user_id: str, *, unread_only: bool, limit: int, after: After
    ) -> tuple[list[Notification], int]: ...

    async def mark_read(
        self,
        tenant_id: str,
        user_id: str,
        notification_ids: Collection[str] | None,
        *,
        now: datetime,
    ) -> tuple[int, int]: ...

    async def unread_counts(self, tenant_id: str, user_ids: Sequence[str]) -> dict[str, int]: ...

    # -- preferences, settings, push subscriptions (store/settings.py) ----------------

    async def preferences_of(
        self, tenant_id: str, user_ids: Sequence[str]
    ) -> dict[str, Preferences]: ...

    async def update_preferences(
        self,
        tenant_id: str,
        user_id: str,
        change: Callable[[Preferences], Preferences],
        *,
        now: datetime,
    ) -> Preferences: ...

    async def tenant_settings(self, tenant_id: str) -> TenantSettings: ...

    async def add_tenant_settings(
        self, tenant_id: str, settings: TenantSettings, names: Collection[str], *, now: datetime
    ) -> TenantSettings: ...

    async def update_tenant_settings(
        self,
        tenant_id: str,
        change: Callable[[TenantSettings], TenantSettings],
        names: Collection[str],
        *,
        now: datetime,
    ) -> TenantSettings: ...

    async def register_push_subscription(
        self, tenant_id: str, subscription: PushSubscription
    ) -> PushSubscription: ...

    async def delete_push_subscription(
        self, tenant_id: str, *, subscription_id: str = "", user_id: str = "", endpoint: str = ""
    ) -> bool: ...

    async def push_subscriptions_of(
        self, tenant_id: str, user_ids: Sequence[str]
    ) -> dict[str, list[PushSubscription]]: ...

    async def push_subscription(
        self, tenant_id: str, subscription_id: str
    ) -> PushSubscription | None: ...

    # -- deliveries (store/deliveries.py) ----------------------------------------------

    async def delivery(self, delivery_id: str) -> tuple[Delivery, Notification] | None: ...

    async def delivery_inputs(self, delivery_ids: Sequence[str]) -> dict[str, DeliveryInputs]:
        """What the delivery jobs of ``delivery_ids`` read, by delivery id (gone: absent)."""
        ...

    async def settle_many(self, settles: Sequence[Settle]) -> None:
        """Record many attempts' outcomes (each as ``settle`` would) in one transaction."""
        ...

    async def settle(
        self,
        tenant_id: str,
        delivery_ids: Sequence[str],
        attempts: Sequence[DeliveryAttempt],
        *,
        state: DeliveryState,
        error: str,
        now: datetime,
    ) -> int: ...

    async def close_digest(
        self, digest_id: str
    ) -> tuple[Digest, list[tuple[Delivery, Notification]]] | None: ...

    async def list_attempts(
        self, tenant_id: str, notification_id: str, *, limit: int, after: After
    ) -> list[DeliveryAttempt]: ...
