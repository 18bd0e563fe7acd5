"""BusLivePublisher (notification_service/live.py) on the in-process bus: what a bridge
receives for announcements made together, and for one too large for one message."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from keel.notifications.v1 import live_pb2

from notification_service.convert import notification_to_proto
from notification_service.live import BusLivePublisher, _live_item_size
from notification_service.models import Channel, Notification, NotificationId, UserId
from service_kit.bus import NOTIFICATIONS_LIVE_TOPIC, InProcessEventBus


def _notification(tenant_id: str, title: str, user_id: str = "ann") -> Notification:
    return Notification(
        NotificationId(f"id-{title}"),
        tenant_id,
        UserId(user_id),
        "general",
        title,
        "",
        {},
        (Channel.IN_APP,),
        datetime.now(UTC),
    )


async def _received(bus: InProcessEventBus) -> list[live_pb2.LiveNotifications]:
    messages: list[live_pb2.LiveNotifications] = []
    await bus.subscribe(
        NOTIFICATIONS_LIVE_TOPIC,
        lambda raw: messages.append(live_pb2.LiveNotifications.FromString(raw)),
    )
    return messages


async def test_announcements_made_together_go_in_one_message_per_tenant_in_order() -> None:
    bus = InProcessEventBus()
    messages = await _received(bus)
    live = BusLivePublisher(bus)
    await asyncio.gather(
        live.publish("t1", [(_notification("t1", "a"), 1)]),
        live.publish("t2", [(_notification("t2", "b"), 1)]),
        live.publish("t1", [(_notification("t1", "c"), 2), (_notification("t1", "d", "bob"), 1)]),
        live.publish("t1", [(_notification("t1", "e"), 3)]),
    )
    got = [
        (m.tenant_id, [(i.notification.title, i.unread_count) for i in m.items]) for m in messages
    ]
    assert got == [
        ("t1", [("a", 1), ("c", 2), ("d", 1), ("e", 3)]),
        ("t2", [("b", 1)]),
    ]


async def test_a_large_announcement_is_split_into_messages_of_bounded_size() -> None:
    bus = InProcessEventBus()
    messages = await _received(bus)
    live = BusLivePublisher(bus, max_bytes=400)
    items = [(_notification("t1", f"n{i:03}"), i) for i in range(20)]
    await live.publish("t1", items)
    assert len(messages) > 1
    assert all(m.ByteSize() <= 400 for m in messages)
    titles = [i.notification.title for m in messages for i in m.items]
    assert titles == [f"n{i:03}" for i in range(20)]


def test_an_items_size_is_counted_as_protobuf_encodes_it() -> None:
    wire = notification_to_proto(_notification("t1", "sized"))
    for unread in (0, 1, 127, 128, 1 << 20):
        item = live_pb2.LiveNotification(notification=wire, unread_count=unread)
        assert _live_item_size(wire.ByteSize(), unread) == item.ByteSize()
