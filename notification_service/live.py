"""The live side of the in-app channel: what the notification service publishes on the bus
for every WebSocket bridge once in-app notifications are stored.

Topic :data:`~service_kit.bus.NOTIFICATIONS_LIVE_TOPIC`, payload a serialized
``keel.notifications.v1.LiveNotifications``: every recipient whose in-app delivery
happened and that recipient's unread count. Announcements of one tenant that arrive
while another is being published (concurrent small sends) go together in the next
message, in the order they arrived, so a bridge decodes one message for many sends; a
call returns once its items were handed to the bus. A very large send is split into
several messages of at most :data:`MAX_LIVE_BYTES` each, so no bus message grows
without bound. Publishing is best-effort, as the bus is: the inbox in the database is
the truth, and a client that missed a live message sees the notification with
``ListNotifications``.

Each notification is converted to its wire form once (a send's many alike ones by
copying one: :func:`~notification_service.convert.notifications_to_proto`):
:meth:`LivePublisher.publish` returns the ``keel.notifications.v1.Notification``
messages it put in the bus message, and the servicer answers ``SendNotification`` with
those same messages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol

from keel.notifications.v1 import live_pb2
from keel.notifications.v1 import notifications_pb2 as pb

from notification_service.convert import notifications_to_proto
from notification_service.models import Notification
from service_kit.batching import Batcher
from service_kit.bus import NOTIFICATIONS_LIVE_TOPIC, EventBus

log = logging.getLogger(__name__)

#: The largest payload of one live message (items beyond it go in the next message).
MAX_LIVE_BYTES: Final = 1 << 20
#: Most announcements published together.
LIVE_BATCH: Final = 256


#: A notification as ``SendNotification`` answers it and the live message carries it.
WireNotification = pb.Notification
#: One ``publish`` call: the tenant, and its notifications with their users' unread counts.
_Announcement = tuple[str, Sequence[tuple[Notification, int]]]


class LivePublisher(Protocol):
    """Announces in-app notifications (each with its recipient's unread count)."""

    async def publish(
        self, tenant_id: str, items: Sequence[tuple[Notification, int]]
    ) -> list[pb.Notification]:
        """Announce ``items``; returns each item's notification in its wire form, in the
        order given (made once: for the bus and for whoever answers with them)."""
        ...


class BusLivePublisher:
    """:class:`LivePublisher` on the process's event bus (see the module docstring)."""

    def __init__(self, bus: EventBus, *, max_bytes: int = MAX_LIVE_BYTES) -> None:
        self._bus = bus
        self._max_bytes = max_bytes
        # One batch at a time, so announcements leave in the order they arrived.
        self._announcements: Batcher[_Announcement, list[pb.Notification]] = Batcher(
            self._publish_together, max_batch=LIVE_BATCH, max_in_flight=1
        )

    async def publish(
        self, tenant_id: str, items: Sequence[tuple[Notification, int]]
    ) -> list[pb.Notification]:
        return await self._announcements.submit((tenant_id, items))

    async def _publish_together(self, batch: list[_Announcement]) -> list[list[pb.Notification]]:
        # Converted before anything is published, so that every caller gets its messages
        # even when the bus fails.
        converted = [notifications_to_proto([n for n, _ in items]) for _, items in batch]
        merged: dict[str, list[tuple[pb.Notification, int]]] = {}
        for (tenant_id, items), messages in zip(batch, converted, strict=True):
            merged.setdefault(tenant_id, []).extend(
                zip(messages, (unread for _, unread in items), strict=True)
            )
        for tenant_id, wire_items in merged.items():
            await self._publish_now(tenant_id, wire_items)
        return converted

    async def _publish_now(
        self, tenant_id: str, items: Sequence[tuple[pb.Notification, int]]
    ) -> None:
        # An item's size is what a message of it alone would take.
        envelope = live_pb2.LiveNotifications(tenant_id=tenant_id).ByteSize()
        message = live_pb2.LiveNotifications(tenant_id=tenant_id)
        size = 0
        for notification, unread in items:
            item_size = envelope + _repeated_field_size(
                _live_item_size(notification.ByteSize(), unread)
            )
            if message.items and size + item_size > self._max_bytes:
                await self._send(message)
                message, size = live_pb2.LiveNotifications(tenant_id=tenant_id), 0
            message.items.add(unread_count=unread).notification.CopyFrom(notification)
            size += item_size
        if message.items:
            await self._send(message)

    async def _send(self, message: live_pb2.LiveNotifications) -> None:
        try:
            await self._bus.publish(NOTIFICATIONS_LIVE_TOPIC, message.SerializeToString())
        except Exception:  # the bus is best-effort; the inbox already holds them
            log.warning(
                "could not publish live notifications",
                exc_info=True,
                extra={"tenant_id": message.tenant_id, "count": len(message.items)},
            )


def _live_item_size(notification_size: int, unread: int) -> int:
    """Bytes of a ``LiveNotification`` holding a notification of ``notification_size``
    bytes (field 1) and ``unread`` (field 2, absent when 0)."""
    size = 1 + _varint_size(notification_size) + notification_size
    return size + (1 + _varint_size(unread) if unread else 0)


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _repeated_field_size(message_size: int) -> int:
    """Bytes one element of ``LiveNotifications.items`` (field 2) takes: its one-byte tag,
    its length as a varint, and the message."""
    return 1 + _varint_size(message_size) + message_size
