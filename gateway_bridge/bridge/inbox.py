"""Notifications in the browser: each user's new notifications pushed live to every
open connection of theirs, and the frames that read and mark their inbox and register
their browser for Web Push.

**Live.** The notification service publishes a ``LiveNotifications`` on the bus
(``NOTIFICATIONS_LIVE_TOPIC``) once it stored in-app notifications; every bridge
writes a ``notification`` frame to each open connection of each recipient — no
subscription needed — encoded once per recipient and found with one lookup per
recipient in the connections' per-user index. A tenant without ``send:basic``
(or ``send:*``) at that moment gets none. Payloads are handled in the order they
came, one at a time.

**Frames.** ``inbox``, ``mark_read``, ``push_config``, ``push_subscribe`` and
``push_unsubscribe`` stand for ``NotificationService`` calls
(:mod:`~gateway_bridge.bridge.notification_link`) made for the connection's tenant,
always for the connection's user (the token's, never the frame's). A bridge without a
notification service answers them ``not_configured``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from keel.notifications.v1 import live_pb2
from keel.notifications.v1 import notifications_pb2 as n

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.connection import Conn, Connections
from gateway_bridge.bridge.notification_link import NotConfigured, NotificationLink
from gateway_bridge.bridge.rpc_errors import frame_error
from service_kit.auth import Authenticator
from service_kit.bus import NOTIFICATIONS_LIVE_TOPIC, EventBus, Subscription
from service_kit.clock import rfc3339
from service_kit.errors import KeelError
from service_kit.protobuf import dict_of

log = logging.getLogger(__name__)

T = TypeVar("T")
Reply = Callable[[Conn, str], Awaitable[None]]
Handler = Callable[[Conn, p.Command], Awaitable[None]]

#: The scope a tenant needs for its users to get notifications live (and for every
#: notification frame: ``commands.FRAME_SCOPES``).
NOTIFICATIONS_SCOPE: Final = "send:basic"

#: Request field paths as the frames name them, per frame (for ``error`` frames' fields).
_MARK_READ_FIELDS: Final = {"notification_ids": "ids"}
_PUSH_FIELDS: Final = {
    "subscription.p256dh": "subscription.keys.p256dh",
    "subscription.auth": "subscription.keys.auth",
}


class Inbox:
    """Live notifications and the notification frames (see the module docstring)."""

    def __init__(
        self,
        *,
        link: NotificationLink,
        connections: Connections,
        tenants: Authenticator,
        write: Callable[[Conn, bytes], None],
        reply: Reply,
    ) -> None:
        self._link = link
        self._connections = connections
        self._tenants = tenants
        self._write = write
        self._reply = reply
        self._live: asyncio.Queue[live_pb2.LiveNotifications] = asyncio.Queue()
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        #: The handler of each notification frame (``Commands`` adds them to its table).
        self.handlers: dict[str, Handler] = {
            "inbox": self._inbox,
            "mark_read": self._mark_read,
            "push_config": self._push_config,
            "push_subscribe": self._push_subscribe,
            "push_unsubscribe": self._push_unsubscribe,
        }

    # -- live ------------------------------------------------------------------------------

    async def start(self, bus: EventBus) -> None:
        self._subscription = await bus.subscribe(NOTIFICATIONS_LIVE_TOPIC, self._on_live)
        self._task = asyncio.create_task(self._deliver_live(), name="live-notifications")

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
        if self._task is not None:
            self._task.cancel()

    def _on_live(self, payload: bytes) -> None:
        try:
            live = live_pb2.LiveNotifications.FromString(payload)
        except DecodeError:
            log.warning("a live notification payload that does not parse was dropped")
            return
        if self._connections.of_tenant(live.tenant_id):
            self._live.put_nowait(live)

    async def _deliver_live(self) -> None:
        while True:
            live = await self._live.get()
            try:
                tenant = await self._tenants.tenant_by_id(live.tenant_id)
            except KeelError as exc:
                log.warning(
                    "live notifications dropped: their tenant cannot be read",
                    extra={"tenant_id": live.tenant_id, "error": exc.message},
                )
                continue
            if tenant.allows(NOTIFICATIONS_SCOPE):
                self.push(live)

    def push(self, live: live_pb2.LiveNotifications) -> None:
        """Write each notification to its recipient's open connections on this bridge."""
        for item in live.items:
            recipients = self._connections.user_connections(
                live.tenant_id, item.notification.user_id
            )
            if not recipients:
                continue
            text = p.notification_frame(notification_data(item.notification), item.unread_count)
            frame = p.encode_text_frame(text.encode())
            for conn in list(recipients):
                self._write(conn, frame)

    # -- frames ----------------------------------------------------------------------------

    async def _ask(
        self, command: p.Command, call: Awaitable[T], fields: Mapping[str, str] | None = None
    ) -> T:
        """The answer of ``call``; a refusal (FrameError) when it failed."""
        try:
            return await call
        except NotConfigured as exc:
            raise p.FrameError(p.ErrorCode.NOT_CONFIGURED, str(exc), command.id) from exc
        except grpc.aio.AioRpcError as exc:
            raise frame_error(exc, command.id, fields) from exc

    async def _ack(self, conn: Conn, command: p.Command, result: dict[str, Any]) -> None:
        await self._reply(conn, p.ack_frame(command.id, result))

    async def _inbox(self, conn: Conn, command: p.Command) -> None:
        fields = command.fields
        request = n.ListNotificationsRequest(
            user_id=conn.user_id,
            unread_only=fields.get("unread_only", False),
            page_size=fields.get("page_size", 0),
            page_token=fields.get("page_token", ""),
        )
        page = await self._ask(command, self._link.list_notifications(conn.tenant_id, request))
        result = {
            "notifications": [notification_data(item) for item in page.notifications],
            "next_page_token": page.next_page_token,
            "unread_count": page.unread_count,
        }
        await self._ack(conn, command, result)

    async def _mark_read(self, conn: Conn, command: p.Command) -> None:
        ids, everything = command.fields.get("ids"), command.fields.get("all", False)
        if not everything and not ids:
            raise p.FrameError(
                p.ErrorCode.BAD_FRAME,
                'mark_read: give "ids" (notification ids) or "all": true',
                command.id,
            )
        request = n.MarkNotificationReadRequest(
            user_id=conn.user_id, notification_ids=ids or [], all=everything
        )
        response = await self._ask(
            command, self._link.mark_read(conn.tenant_id, request), _MARK_READ_FIELDS
        )
        result = {"marked_count": response.marked_count, "unread_count": response.unread_count}
        await self._ack(conn, command, result)

    async def _push_config(self, conn: Conn, command: p.Command) -> None:
        response = await self._ask(command, self._link.tenant_settings(conn.tenant_id))
        await self._ack(conn, command, {"vapid_public_key": response.settings.vapid_public_key})

    async def _push_subscribe(self, conn: Conn, command: p.Command) -> None:
        subscription = command.fields["subscription"]
        request = n.RegisterPushSubscriptionRequest(
            subscription=n.PushSubscription(
                user_id=conn.user_id,
                endpoint=subscription["endpoint"],
                p256dh=subscription["keys"]["p256dh"],
                auth=subscription["keys"]["auth"],
            )
        )
        response = await self._ask(
            command, self._link.register_push(conn.tenant_id, request), _PUSH_FIELDS
        )
        stored = response.subscription
        result = {
            "id": stored.id,
            "endpoint": stored.endpoint,
            "create_time": _time(stored, "create_time"),
        }
        await self._ack(conn, command, result)

    async def _push_unsubscribe(self, conn: Conn, command: p.Command) -> None:
        endpoint = command.fields["endpoint"]
        request = n.DeletePushSubscriptionRequest(user_id=conn.user_id, endpoint=endpoint)
        await self._ask(command, self._link.delete_push(conn.tenant_id, request))
        await self._ack(conn, command, {"endpoint": endpoint})


# -- notifications as JSON ------------------------------------------------------------------


def notification_data(notification: n.Notification) -> dict[str, Any]:
    """A notification as frames carry it: the fields of ``keel.notifications.v1.Notification``
    in snake_case, times in RFC 3339 (null when unset), channels and states as words
    (``in_app``, ``email``, ``webhook``, ``push``; ``pending``, ``sent``, ``failed``,
    ``skipped``, ``held``)."""
    return {
        "id": notification.id,
        "user_id": notification.user_id,
        "category": notification.category,
        "title": notification.title,
        "body": notification.body,
        "data": dict_of(notification.data),
        "channel_id": notification.channel_id,
        "channels": [_channel(c) for c in notification.channels],
        "read": notification.read,
        "read_time": _time(notification, "read_time"),
        "create_time": _time(notification, "create_time"),
        "send_time": _time(notification, "send_time"),
        "deliveries": [
            {
                "channel": _channel(d.channel),
                "state": _state(d.state),
                "update_time": _time(d, "update_time"),
                # Why a delivery is held or skipped is the user's business; why one failed
                # (an SMTP answer, a refused webhook host and its address) is the backend's.
                "error": d.error if d.state in _USER_FACING_REASONS else "",
            }
            for d in notification.deliveries
        ],
    }


_USER_FACING_REASONS = frozenset({n.DELIVERY_STATE_HELD, n.DELIVERY_STATE_SKIPPED})


def _words(values: Mapping[str, int], prefix: str) -> dict[int, str]:
    """Each value of an enum as a lowercase word (``NOTIFICATION_CHANNEL_IN_APP``: ``in_app``)."""
    return {number: name.removeprefix(prefix).lower() for name, number in values.items()}


_CHANNELS: Final = _words(dict(n.NotificationChannel.items()), "NOTIFICATION_CHANNEL_")
_STATES: Final = _words(dict(n.DeliveryState.items()), "DELIVERY_STATE_")


def _channel(value: int) -> str:
    return _CHANNELS.get(value) or str(value)  # its number, for one this bridge does not know


def _state(value: int) -> str:
    return _STATES.get(value) or str(value)


def _time(message: Any, field: str) -> str | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return _stamp_text(stamp.seconds, stamp.nanos)


@functools.lru_cache(maxsize=256)
def _stamp_text(seconds: int, nanos: int) -> str:
    """A time stamp in RFC 3339. Remembered: every notification of one send carries the
    same times, and a send to 1,000 connected users converts them 1,000 times."""
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    return rfc3339(stamp.ToDatetime(tzinfo=UTC))
