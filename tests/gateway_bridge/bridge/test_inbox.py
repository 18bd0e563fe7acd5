"""Notifications in the browser (``gateway_bridge.bridge.inbox``): the live
``notification`` frame, fed by the notification service's bus topic, to every open
connection of the recipient and only to them, while the tenant holds ``send:basic``;
and what the notification frames answer on a bridge without a notification service."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from keel.notifications.v1 import live_pb2
from keel.notifications.v1 import notifications_pb2 as n

from gateway_bridge.bridge.bridge import Bridge
from service_kit.bus import NOTIFICATIONS_LIVE_TOPIC
from tests.gateway_bridge.bridge.conftest import Client, Dial, Json, Stack, join
from tests.gateway_bridge.conftest import Tenant

SEND = ("chat:*", "send:basic")


def notification(user_id: str, title: str, **fields: Any) -> n.Notification:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(datetime(2026, 3, 1, 9, 30, 5, 250000, tzinfo=UTC))
    data = struct_pb2.Struct()
    data.update({"url": "/billing", "n": 2})
    return n.Notification(
        id=str(uuid.uuid4()),
        user_id=user_id,
        title=title,
        body="Your invoice is ready.",
        data=data,
        category="billing",
        channels=[n.NOTIFICATION_CHANNEL_IN_APP, n.NOTIFICATION_CHANNEL_EMAIL],
        create_time=created,
        deliveries=[
            n.ChannelDelivery(
                channel=n.NOTIFICATION_CHANNEL_IN_APP,
                state=n.DELIVERY_STATE_SENT,
                update_time=created,
            ),
            n.ChannelDelivery(
                channel=n.NOTIFICATION_CHANNEL_EMAIL,
                state=n.DELIVERY_STATE_SKIPPED,
                update_time=created,
                error="the user has no email address",
            ),
            n.ChannelDelivery(
                channel=n.NOTIFICATION_CHANNEL_WEBHOOK,
                state=n.DELIVERY_STATE_FAILED,
                update_time=created,
                error="'hooks.internal' resolves to 10.0.0.5, a private address",
            ),
        ],
        **fields,
    )


async def publish(stack: Stack, tenant: Tenant, *items: tuple[n.Notification, int]) -> None:
    """What the notification service publishes once it stored in-app notifications."""
    live = live_pb2.LiveNotifications(
        tenant_id=tenant.id,
        items=[live_pb2.LiveNotification(notification=x, unread_count=c) for x, c in items],
    )
    await stack.runtime.bus.publish(NOTIFICATIONS_LIVE_TOPIC, live.SerializeToString())


def is_notification(frame: Json) -> bool:
    return frame["type"] == "notification"


async def notifications_in(client: Client) -> list[Json]:
    """The ``notification`` frames ``client`` got (and no test waited for) before the
    bridge answered a ping."""
    await client.flush()
    found = [f for f in client.inbox if is_notification(f)]
    client.inbox[:] = [f for f in client.inbox if not is_notification(f)]
    return found


async def test_a_notification_reaches_every_connection_of_its_user_and_nobody_else(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant(*SEND)
    other_tenant = await stack.tenant(*SEND)
    alice_tab, alice_phone = [await join(dial, bridge, tenant, "alice") for _ in range(2)]
    bob = await join(dial, bridge, tenant, "bob")
    other_alice = await join(dial, bridge, other_tenant, "alice")  # same id, another tenant
    sent = notification("alice", "Invoice #12")
    await publish(stack, tenant, (sent, 3))
    for client in (alice_tab, alice_phone):
        frame = await client.expect(is_notification)
        assert frame == {
            "type": "notification",
            "notification": {
                "id": sent.id,
                "user_id": "alice",
                "category": "billing",
                "title": "Invoice #12",
                "body": "Your invoice is ready.",
                "data": {"url": "/billing", "n": 2.0},
                "channel_id": "",
                "channels": ["in_app", "email"],
                "read": False,
                "read_time": None,
                "create_time": "2026-03-01T09:30:05.250000Z",
                "send_time": None,
                "deliveries": [
                    {
                        "channel": "in_app",
                        "state": "sent",
                        "update_time": "2026-03-01T09:30:05.250000Z",
                        "error": "",
                    },
                    {
                        "channel": "email",
                        "state": "skipped",
                        "update_time": "2026-03-01T09:30:05.250000Z",
                        "error": "the user has no email address",
                    },
                    {  # a failure's reason is for the backend (gRPC), not the browser
                        "channel": "webhook",
                        "state": "failed",
                        "update_time": "2026-03-01T09:30:05.250000Z",
                        "error": "",
                    },
                ],
            },
            "unread_count": 3,
        }
    for client in (bob, other_alice):
        assert await notifications_in(client) == []


async def test_one_publish_for_many_users_reaches_each_with_their_own_count(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant("chat:*", "send:*")
    users = [f"user-{i}" for i in range(5)]
    clients = {user: await join(dial, bridge, tenant, user) for user in users}
    sent = [notification(user, f"hello {user}") for user in users]
    await publish(stack, tenant, *((x, i + 1) for i, x in enumerate(sent)))
    for i, user in enumerate(users):
        frame = await clients[user].expect(is_notification)
        assert frame["notification"]["id"] == sent[i].id and frame["unread_count"] == i + 1
        assert await notifications_in(clients[user]) == []  # its own, once


async def test_notifications_arrive_in_the_order_they_were_published(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant(*SEND)
    alice = await join(dial, bridge, tenant, "alice")
    sent = [notification("alice", f"#{i}") for i in range(20)]
    for i, item in enumerate(sent):
        await publish(stack, tenant, (item, i + 1))
    received = [await alice.expect(is_notification) for _ in sent]
    assert [f["notification"]["id"] for f in received] == [x.id for x in sent]
    assert [f["unread_count"] for f in received] == list(range(1, 21))


async def test_a_tenant_without_send_basic_gets_no_notifications_live(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    chat_only = await stack.tenant("chat:*")
    sender = await stack.tenant(*SEND)
    alice = await join(dial, bridge, chat_only, "alice")
    witness = await join(dial, bridge, sender, "witness")
    await publish(stack, chat_only, (notification("alice", "not for a chat-only tenant"), 1))
    # Live payloads are handled one at a time, in order: once the next one arrived, the
    # first was handled too.
    await publish(stack, sender, (notification("witness", "after"), 1))
    await witness.expect(is_notification)
    assert await notifications_in(alice) == []


async def test_losing_send_basic_stops_live_notifications_at_once(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant(*SEND)
    witness_tenant = await stack.tenant(*SEND)
    alice = await join(dial, bridge, tenant, "alice")
    witness = await join(dial, bridge, witness_tenant, "witness")
    await publish(stack, tenant, (notification("alice", "before"), 1))
    assert (await alice.expect(is_notification))["notification"]["title"] == "before"
    await stack.keel.set_permissions(tenant, "chat:*")
    await publish(stack, tenant, (notification("alice", "after"), 2))
    await publish(stack, witness_tenant, (notification("witness", "after"), 1))
    await witness.expect(is_notification)
    assert await notifications_in(alice) == []
    await stack.keel.set_permissions(tenant, "chat:*", "send:*")
    await publish(stack, tenant, (notification("alice", "granted again"), 3))
    assert (await alice.expect(is_notification))["notification"]["title"] == "granted again"


async def test_a_payload_that_does_not_parse_is_dropped_and_the_next_one_arrives(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant(*SEND)
    alice = await join(dial, bridge, tenant, "alice")
    await stack.runtime.bus.publish(NOTIFICATIONS_LIVE_TOPIC, b"\xff\xff not protobuf")
    sent = notification("alice", "still here")
    await publish(stack, tenant, (sent, 1))
    assert (await alice.expect(is_notification))["notification"]["id"] == sent.id


async def test_a_closed_connection_gets_nothing_and_the_others_still_do(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant(*SEND)
    gone = await join(dial, bridge, tenant, "alice")
    staying = await join(dial, bridge, tenant, "alice")
    await gone.ws.close()
    await publish(stack, tenant, (notification("alice", "one left"), 1))
    assert (await staying.expect(is_notification))["unread_count"] == 1


# -- the frames, on a bridge without a notification service ---------------------------------


async def test_without_a_notification_service_the_frames_answer_not_configured(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant(*SEND)
    alice = await join(dial, bridge, tenant, "alice")
    subscription = {"endpoint": "https://push.example/1", "keys": {"p256dh": "a", "auth": "b"}}
    for kind, fields in [
        ("inbox", {}),
        ("mark_read", {"all": True}),
        ("push_config", {}),
        ("push_subscribe", {"subscription": subscription}),
        ("push_unsubscribe", {"endpoint": "https://push.example/1"}),
    ]:
        error = await alice.error(kind, **fields)
        assert error["code"] == "not_configured", error
        assert "KEEL_NOTIFICATION_SERVICE_ADDR" in error["message"]
    assert (await alice.call("ping"))["type"] == "pong"


async def test_the_notification_frames_need_send_basic(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant("chat:*")
    alice = await join(dial, bridge, tenant, "alice")
    for kind in ("inbox", "push_config"):
        error = await alice.error(kind)
        assert error["code"] == "permission_denied" and "send:basic" in error["message"]


async def test_mark_read_needs_ids_or_all(stack: Stack, bridge: Bridge, dial: Dial) -> None:
    tenant = await stack.tenant(*SEND)
    alice = await join(dial, bridge, tenant, "alice")
    for fields in [{}, {"ids": []}, {"all": False}]:
        error = await alice.error("mark_read", **fields)
        assert error["code"] == "bad_frame" and '"ids"' in error["message"], error
    bad = await alice.error("mark_read", ids="n-1")
    assert bad == {
        "type": "error",
        "code": "bad_frame",
        "message": 'mark_read: "ids" must be a list of strings',
        "id": bad["id"],
    }
