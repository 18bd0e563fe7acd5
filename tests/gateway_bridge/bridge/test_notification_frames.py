"""The notification frames against the real notification service (``keel serve all``'s
wiring: tenant service, gateway and notification service in one server; the bridge
calls it as it calls the gateway): ``inbox``, ``mark_read``, ``push_config``,
``push_subscribe``, ``push_unsubscribe``, a SendNotification reaching the user's open
connections live, the one-click unsubscribe link, and what an unreachable service
answers. Example frames in docs/protocol.md come from these tests."""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from keel.channels.v1 import channels_pb2
from keel.notifications.v1 import notifications_pb2 as n
from keel.notifications.v1 import notifications_pb2_grpc

from gateway_bridge.bridge.bridge import Bridge
from notification_service.senders.unsubscribe import make_token
from tests.conftest import free_port
from tests.gateway_bridge.bridge.conftest import (
    Dial,
    Json,
    Stack,
    http_request,
    join,
    running_bridge,
)
from tests.gateway_bridge.conftest import Tenant

PUSH_ENDPOINT = "https://push.example.com/send/dGVzdC1zdWJzY3JpcHRpb24"


def notifications(stack: Stack) -> notifications_pb2_grpc.NotificationServiceStub:
    return notifications_pb2_grpc.NotificationServiceStub(stack.keel.client)


async def users(stack: Stack, tenant: Tenant, *user_ids: str) -> None:
    for user_id in user_ids:
        await tenant.stub.UpsertUser(
            channels_pb2.UpsertUserRequest(user=channels_pb2.User(id=user_id)), metadata=tenant.md
        )


async def send(stack: Stack, tenant: Tenant, user_id: str, title: str, **fields: Any) -> str:
    """An in-app notification for ``user_id``, sent as a tenant's backend sends it; its id."""
    response = await notifications(stack).SendNotification(
        n.SendNotificationRequest(
            user_ids=[user_id],
            title=title,
            category=fields.pop("category", "mention"),
            channels=[n.NOTIFICATION_CHANNEL_IN_APP],
            **fields,
        ),
        metadata=tenant.md,
    )
    return str(response.notifications[0].id)


async def sending_tenant(stack: Stack, *user_ids: str) -> Tenant:
    tenant = await stack.tenant("chat:*", "send:basic")
    await users(stack, tenant, *user_ids)
    return tenant


def browser_subscription() -> dict[str, Any]:
    """What a browser's ``PushSubscription.toJSON()`` gives: real P-256 and auth keys."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {
        "endpoint": PUSH_ENDPOINT,
        "expirationTime": None,
        "keys": {"p256dh": b64(point), "auth": b64(b"0123456789abcdef")},
    }


def titles(result: Json) -> list[str]:
    return [item["title"] for item in result["notifications"]]


# -- inbox and mark_read ------------------------------------------------------------------------


async def test_inbox_lists_the_tokens_user_newest_first_with_the_unread_count(
    notifying_stack: Stack, notifying_bridge: Bridge, dial: Dial
) -> None:
    stack = notifying_stack
    tenant = await sending_tenant(stack, "alice", "bob")
    ids = [await send(stack, tenant, "alice", f"#{i}") for i in range(3)]
    await send(stack, tenant, "bob", "for bob only")
    alice = await join(dial, notifying_bridge, tenant, "alice")
    page = (await alice.ok("inbox"))["result"]
    assert titles(page) == ["#2", "#1", "#0"]
    assert [item["id"] for item in page["notifications"]] == ids[::-1]
    assert page["unread_count"] == 3 and page["next_page_token"] == ""
    first = page["notifications"][2]
    assert first["user_id"] == "alice" and first["read"] is False
    assert first["category"] == "mention" and first["channels"] == ["in_app"]
    assert first["deliveries"][0]["channel"] == "in_app"
    assert first["deliveries"][0]["state"] == "sent"


async def test_inbox_pages_and_filters_unread(
    notifying_stack: Stack, notifying_bridge: Bridge, dial: Dial
) -> None:
    stack = notifying_stack
    tenant = await sending_tenant(stack, "alice")
    ids = [await send(stack, tenant, "alice", f"#{i}") for i in range(3)]
    alice = await join(dial, notifying_bridge, tenant, "alice")
    first = (await alice.ok("inbox", page_size=2))["result"]
    assert titles(first) == ["#2", "#1"] and first["next_page_token"]
    rest = (await alice.ok("inbox", page_size=2, page_token=first["next_page_token"]))["result"]
    assert titles(rest) == ["#0"] and rest["next_page_token"] == ""
    await alice.ok("mark_read", ids=[ids[1]])
    unread = (await alice.ok("inbox", unread_only=True))["result"]
    assert titles(unread) == ["#2", "#0"] and unread["unread_count"] == 2


async def test_mark_read_by_ids_then_all(
    notifying_stack: Stack, notifying_bridge: Bridge, dial: Dial
) -> None:
    stack = notifying_stack
    tenant = await sending_tenant(stack, "alice", "bob")
    ids = [await send(stack, tenant, "alice", f"#{i}") for i in range(3)]
    bobs = await send(stack, tenant, "bob", "bob's")
    alice = await join(dial, notifying_bridge, tenant, "alice")
    marked = await alice.ok("mark_read", ids=[ids[0]])
    assert marked["result"] == {"marked_count": 1, "unread_count": 2}
    again = await alice.ok("mark_read", ids=[ids[0], bobs])  # read already; not hers
    assert again["result"] == {"marked_count": 0, "unread_count": 2}
    everything = await alice.ok("mark_read", all=True)
    assert everything["result"] == {"marked_count": 2, "unread_count": 0}
    bob_inbox = await notifications(stack).ListNotifications(
        n.ListNotificationsRequest(user_id="bob"), metadata=tenant.md
    )
    assert bob_inbox.unread_count == 1  # bob's stays unread


async def test_the_service_refusing_a_frame_names_the_bad_fields(
    notifying_stack: Stack, notifying_bridge: Bridge, dial: Dial
) -> None:
    tenant = await sending_tenant(notifying_stack, "alice")
    alice = await join(dial, notifying_bridge, tenant, "alice")
    error = await alice.error("inbox", page_size=5000)
    assert error["code"] == "invalid_argument"
    assert [f["field"] for f in error["fields"]] == ["page_size"], error
    error = await alice.error("inbox", page_token="not-a-token")
    assert error["code"] == "invalid_argument"
    assert [f["field"] for f in error["fields"]] == ["page_token"], error


# -- live -------------------------------------------------------------------------------------


async def test_a_notification_sent_over_grpc_reaches_every_open_connection_of_its_user(
    notifying_stack: Stack, notifying_bridge: Bridge, dial: Dial
) -> None:
    stack = notifying_stack
    tenant = await sending_tenant(stack, "alice", "bob")
    await send(stack, tenant, "alice", "before")
    tab = await join(dial, notifying_bridge, tenant, "alice")
    phone = await join(dial, notifying_bridge, tenant, "alice")
    bob = await join(dial, notifying_bridge, tenant, "bob")
    sent = await send(stack, tenant, "alice", "Ana mentioned you", body="in #general")
    for client in (tab, phone):
        frame = await client.expect(lambda f: f["type"] == "notification")
        assert frame["notification"]["id"] == sent and frame["unread_count"] == 2
        assert frame["notification"]["title"] == "Ana mentioned you"
        assert frame["notification"]["body"] == "in #general"
    assert [f for f in await bob.flush() if f["type"] == "notification"] == []
    assert [f for f in bob.inbox if f["type"] == "notification"] == []


# -- Web Push registration ------------------------------------------------------------------


async def test_push_config_subscribe_and_unsubscribe(
    notifying_stack: Stack, notifying_bridge: Bridge, dial: Dial
) -> None:
    stack = notifying_stack
    tenant = await sending_tenant(stack, "alice")
    alice = await join(dial, notifying_bridge, tenant, "alice")
    key = (await alice.ok("push_config"))["result"]["vapid_public_key"]
    point = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(point) == 65 and point[0] == 4  # an uncompressed P-256 point
    subscription = browser_subscription()
    stored = (await alice.ok("push_subscribe", subscription=subscription))["result"]
    assert stored["endpoint"] == PUSH_ENDPOINT and stored["id"] and stored["create_time"]
    listed = await notifications(stack).ListPushSubscriptions(
        n.ListPushSubscriptionsRequest(user_id="alice"), metadata=tenant.md
    )
    assert [(s.endpoint, s.p256dh, s.auth) for s in listed.subscriptions] == [
        (PUSH_ENDPOINT, subscription["keys"]["p256dh"], subscription["keys"]["auth"])
    ]
    removed = await alice.ok("push_unsubscribe", endpoint=PUSH_ENDPOINT)
    assert removed["result"] == {"endpoint": PUSH_ENDPOINT}
    listed = await notifications(stack).ListPushSubscriptions(
        n.ListPushSubscriptionsRequest(user_id="alice"), metadata=tenant.md
    )
    assert list(listed.subscriptions) == []


async def test_an_invalid_push_subscription_names_its_fields_as_the_frame_does(
    notifying_stack: Stack, notifying_bridge: Bridge, dial: Dial
) -> None:
    tenant = await sending_tenant(notifying_stack, "alice")
    alice = await join(dial, notifying_bridge, tenant, "alice")
    subscription = browser_subscription()
    subscription["keys"]["p256dh"] = "bm90IGEga2V5"
    subscription["endpoint"] = "http://push.example.com/plain"
    error = await alice.error("push_subscribe", subscription=subscription)
    assert error["code"] == "invalid_argument", error
    fields = sorted(f["field"] for f in error["fields"])
    assert fields == ["subscription.endpoint", "subscription.keys.p256dh"], error
    listed = await notifications(notifying_stack).ListPushSubscriptions(
        n.ListPushSubscriptionsRequest(user_id="alice"), metadata=tenant.md
    )
    assert list(listed.subscriptions) == []  # nothing half-stored


# -- the one-click unsubscribe link ---------------------------------------------------------


async def email_rules(stack: Stack, tenant: Tenant, user_id: str) -> list[tuple[str, bool]]:
    found = await notifications(stack).GetPreferences(
        n.GetPreferencesRequest(user_id=user_id), metadata=tenant.md
    )
    return [
        (rule.category, rule.enabled)
        for rule in found.preferences.rules
        if rule.channel == n.NOTIFICATION_CHANNEL_EMAIL
    ]


async def test_following_the_link_turns_that_categorys_email_off_and_get_does_not(
    notifying_stack: Stack, notifying_bridge: Bridge
) -> None:
    stack = notifying_stack
    tenant = await sending_tenant(stack, "alice")
    secret = stack.runtime.settings.token_secret
    assert secret is not None
    token = make_token(secret, tenant.id, "alice", "billing")
    path = f"/notifications/unsubscribe?token={token}"
    shown = await http_request(notifying_bridge.port, "GET", path)
    assert shown.status == 200 and "<form" in shown.text
    assert await email_rules(stack, tenant, "alice") == []  # a GET changes nothing
    done = await http_request(
        notifying_bridge.port,
        "POST",
        path,
        b"List-Unsubscribe=One-Click",
        (("Content-Type", "application/x-www-form-urlencoded"),),
    )
    assert done.status == 200 and "billing" in done.text, done.text
    assert await email_rules(stack, tenant, "alice") == [("billing", False)]


async def test_a_tampered_token_is_400_and_changes_nothing(
    notifying_stack: Stack, notifying_bridge: Bridge
) -> None:
    stack = notifying_stack
    tenant = await sending_tenant(stack, "alice")
    secret = stack.runtime.settings.token_secret
    assert secret is not None
    token = make_token(secret, tenant.id, "alice", "billing")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for bad in (tampered, "not-a-token", make_token("another-secret", tenant.id, "alice", "x")):
        answer = await http_request(
            notifying_bridge.port, "POST", f"/notifications/unsubscribe?token={bad}"
        )
        assert answer.status == 400, answer.text
        assert "This unsubscribe link is not valid" in answer.text
    assert await email_rules(stack, tenant, "alice") == []


# -- an unreachable notification service ----------------------------------------------------


async def test_an_unreachable_notification_service_answers_unavailable_and_503(
    notifying_stack: Stack, dial: Dial
) -> None:
    tenant = await sending_tenant(notifying_stack, "alice")
    nowhere = f"127.0.0.1:{free_port()}"
    async with running_bridge(notifying_stack, notification_addr=nowhere) as bridge:
        alice = await join(dial, bridge, tenant, "alice")
        error = await alice.error("inbox")
        assert error["code"] == "unavailable", error
        answer = await http_request(
            bridge.port, "POST", "/notifications/unsubscribe?token=u1.a.b", b"x=1"
        )
        assert answer.status == 503 and "try again" in answer.text
