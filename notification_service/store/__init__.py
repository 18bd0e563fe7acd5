"""Where the notification service keeps its data: the :class:`NotificationStore` role and
its SQL implementation (SQLite or PostgreSQL), composed of one part per concern."""

from __future__ import annotations

from notification_service.store.deliveries import DeliveryInputs, Settle, SqlDeliveries
from notification_service.store.inbox import SqlInbox
from notification_service.store.interface import NotificationStore
from notification_service.store.sends import (
    NewSend,
    SendExists,
    SendInputs,
    SqlSends,
    StoredSend,
)
from notification_service.store.settings import SqlSettings


class SqlNotificationStore(SqlSends, SqlInbox, SqlSettings, SqlDeliveries):
    """The notification store in SQL (each part's module says what it keeps)."""


__all__ = [
    "DeliveryInputs",
    "NewSend",
    "NotificationStore",
    "SendExists",
    "SendInputs",
    "Settle",
    "SqlNotificationStore",
    "StoredSend",
]
