"""NotificationService through a real gRPC server (with a real gateway for users and
members), on SQLite and PostgreSQL: sending, inboxes, preferences, settings, push
subscriptions, scopes, tenant isolation and bad input."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.channels.v1 import channels_pb2
from keel.notifications.v1 import notifications_pb2 as pb

from notification_service.store import SqlNotificationStore
from service_kit.validation import is_uuid
from tests.gateway_bridge.conftest import field_violations
from tests.notification_service.conftest import Tenant, World, rpc_error

IN_APP = pb.NOTIFICATION_CHANNEL_IN_APP
EMAIL = pb.NOTIFICATION_CHANNEL_EMAIL
WEBHOOK = pb.NOTIFICATION_CHANNEL_WEBHOOK
PUSH = pb.NOTIFICATION_CHANNEL_PUSH
SENT = pb.DELIVERY_STATE_SENT
PENDING = pb.DELIVERY_STATE_PENDING
SKIPPED = pb.DELIVERY_STATE_SKIPPED
HELD = pb.DELIVERY_STATE_HELD
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
MISSING_ID = "00000000-0000-4000-8000-000000000000"


def states(notification: pb.Notification) -> dict[int, tuple[int, str]]:
    return {d.channel: (d.state, d.error) for d in notification.deliveries}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def browser_keys() -> tuple[str, str]:
    """A browser's p256dh and auth, base64url without padding."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return b64(point), b64(uuid.uuid4().bytes)


def missing_users(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    named = []
    for detail in status.details if status else ():
        info = error_details_pb2.ResourceInfo()
        if detail.Unpack(info):
            named.append(info.resource_name)
    return named


# -- sending --------------------------------------------------------------------------------


async def test_a_send_stores_one_notification_per_user_in_order(tenant: Tenant) -> None:
    await tenant.users("ann", "bob")
    data = struct_pb2.Struct()
    data.update({"link": "/threads/7", "n": 3})
    sent = await tenant.send(
        "bob", "ann", title="New reply", body="Bob answered", data=data, category="mention"
    )
    assert [n.user_id for n in sent] == ["bob", "ann"]
    for notification in sent:
        assert is_uuid(notification.id)
        assert (notification.title, notification.body, notification.category) == (
            "New reply",
            "Bob answered",
            "mention",
        )
        assert dict(notification.data) == {"link": "/threads/7", "n": 3}
        assert list(notification.channels) == [IN_APP, EMAIL, WEBHOOK, PUSH]
        assert not notification.read and notification.create_time.seconds > 0
        assert states(notification) == {
            IN_APP: (SENT, ""),
            EMAIL: (SKIPPED, "the user has no email address in their preferences"),
            WEBHOOK: (SKIPPED, "no webhook URL (neither the user's nor the tenant's)"),
            PUSH: (SKIPPED, "the user has no push subscription"),
        }
        assert await tenant.get(notification.id) == notification


async def test_the_inbox_is_newest_first_in_pages_with_the_unread_count(tenant: Tenant) -> None:
    await tenant.users("cat")
    ids = [(await tenant.send("cat", title=f"n{i}", channels=[IN_APP]))[0].id for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await tenant.inbox("cat", page_size=2, page_token=token)
        assert page.unread_count == 5
        assert len(page.notifications) <= 2
        seen += [n.id for n in page.notifications]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]

    marked = await tenant.notifications.MarkNotificationRead(
        pb.MarkNotificationReadRequest(user_id="cat", notification_ids=[ids[0], ids[3], ids[3]]),
        metadata=tenant.md,
    )
    assert (marked.marked_count, marked.unread_count) == (2, 3)
    unread = await tenant.inbox("cat", unread_only=True)
    assert [n.id for n in unread.notifications] == [ids[4], ids[2], ids[1]]
    read = await tenant.get(ids[0])
    assert read.read and read.read_time.seconds > 0
    again = await tenant.notifications.MarkNotificationRead(
        pb.MarkNotificationReadRequest(user_id="cat", all=True), metadata=tenant.md
    )
    assert (again.marked_count, again.unread_count) == (3, 0)
    assert (await tenant.inbox("cat")).unread_count == 0


async def test_a_page_token_belongs_to_its_list(tenant: Tenant) -> None:
    await tenant.users("dan")
    for _ in range(3):
        await tenant.send("dan", channels=[IN_APP])
    token = (await tenant.inbox("dan", page_size=1)).next_page_token
    assert token
    error = await rpc_error(tenant.inbox("dan", page_size=1, page_token=token, unread_only=True))
    assert error.code() == INVALID and field_violations(error) == ["page_token"]
    error = await rpc_error(tenant.inbox("other", page_size=1, page_token=token))
    assert error.code() == INVALID and field_violations(error) == ["page_token"]


async def test_a_channel_send_reaches_its_members_but_the_excluded(tenant: Tenant) -> None:
    created = await tenant.chat.CreateChannel(
        channels_pb2.CreateChannelRequest(
            name="team",
            type=channels_pb2.CHANNEL_TYPE_GROUP,
            created_by="ann",
            member_ids=["bob", "cat", "dan"],
        ),
        metadata=tenant.md,
    )
    channel_id = created.channel.id
    sent = await tenant.send(
        channel_id=channel_id, exclude_user_ids=["ann"], channels=[IN_APP], title="Standup"
    )
    assert [n.user_id for n in sent] == ["bob", "cat", "dan"]
    assert {n.channel_id for n in sent} == {channel_id}
    error = await rpc_error(tenant.send(channel_id=MISSING_ID))
    assert error.code() == NOT_FOUND


async def test_a_retry_with_the_same_request_id_returns_the_same_notifications(
    world: World, tenant: Tenant
) -> None:
    await tenant.users("eve")
    await tenant.preferences("eve", email="eve@example.com")
    first = await tenant.send("eve", request_id="r-1", channels=[IN_APP, EMAIL])
    await world.run_jobs()
    again = await tenant.send("eve", request_id="r-1", channels=[IN_APP, EMAIL])
    assert [n.id for n in again] == [n.id for n in first]
    assert states(again[0])[EMAIL][0] == SENT  # as they are now
    # The same request_id asking something else is refused, not answered with the first.
    for changed in ({"title": "other"}, {"channels": [IN_APP]}):
        error = await rpc_error(
            tenant.send("eve", request_id="r-1", **({"channels": [IN_APP, EMAIL]} | changed))
        )
        assert error.code() == INVALID and field_violations(error) == ["request_id"]
    assert len(await world.job_payloads("notification.email", tenant.id)) == 1
    assert (await tenant.inbox("eve")).unread_count == 1
    other = await tenant.send("eve", request_id="r-2", channels=[IN_APP])
    assert other[0].id != first[0].id


# -- who may do what ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "needed_for"),
    [
        ({"channel_id": MISSING_ID}, "sending to the members of a channel"),
        ({"user_ids": [f"u{i}" for i in range(101)]}, "sending to more than 100 users"),
        ({"channels": [PUSH]}, "sending by push"),
        ({"channels": [IN_APP, WEBHOOK]}, "sending by webhook"),
        ({"send_at": "soon"}, "scheduling a notification (send_at)"),
    ],
)
async def test_send_basic_may_not_do_what_needs_send_all(
    world: World, fields: dict[str, Any], needed_for: str
) -> None:
    basic = await world.tenant("send:basic", "chat:*")
    if fields.get("send_at") == "soon":
        fields["send_at"] = timestamp(datetime.now(UTC) + timedelta(hours=1))
    fields.setdefault("user_ids", ["ann"])
    if "channel_id" in fields:
        del fields["user_ids"]
    error = await rpc_error(
        basic.notifications.SendNotification(
            pb.SendNotificationRequest(title="x", **fields), metadata=basic.md
        )
    )
    assert error.code() == DENIED
    assert needed_for in (error.details() or "") and "'send:*'" in (error.details() or "")


async def test_send_basic_sends_in_app_and_email_to_listed_users(world: World) -> None:
    basic = await world.tenant("send:basic", "chat:*")
    await basic.users(*[f"u{i}" for i in range(100)])
    sent = await basic.send(*[f"u{i}" for i in range(100)])
    assert len(sent) == 100
    assert list(sent[0].channels) == [IN_APP, EMAIL]  # its default channels
    await basic.preferences("u1", email="u1@example.com")
    settings = await basic.notifications.GetTenantSettings(
        pb.GetTenantSettingsRequest(), metadata=basic.md
    )
    assert settings.settings.vapid_public_key
    error = await rpc_error(basic.settings(email_from="Team <team@example.com>"))
    assert error.code() == DENIED


async def test_a_tenant_without_send_scopes_is_refused(world: World) -> None:
    chat_only = await world.tenant("chat:*")
    error = await rpc_error(chat_only.inbox("ann"))
    assert error.code() == DENIED


# -- tenants are apart ----------------------------------------------------------------------


async def test_another_tenants_ids_answer_not_found(world: World) -> None:
    a, b = await world.tenant(), await world.tenant()
    await a.users("ann")
    await b.users("bea")
    sent = await a.send("ann", channels=[IN_APP])
    error = await rpc_error(b.get(sent[0].id))
    assert error.code() == NOT_FOUND
    error = await rpc_error(
        b.notifications.ListDeliveryAttempts(
            pb.ListDeliveryAttemptsRequest(notification_id=sent[0].id), metadata=b.md
        )
    )
    assert error.code() == NOT_FOUND
    marked = await b.notifications.MarkNotificationRead(
        pb.MarkNotificationReadRequest(user_id="ann", notification_ids=[sent[0].id]),
        metadata=b.md,
    )
    assert marked.marked_count == 0
    assert (await a.inbox("ann")).unread_count == 1
    error = await rpc_error(b.send("bea", "ann", "nobody"))
    assert error.code() == NOT_FOUND
    assert missing_users(error) == ["ann", "nobody"]
    assert "'ann'" in (error.details() or "")
    assert (error.details() or "").endswith("; nothing was sent")
    assert (await b.inbox("bea")).notifications == []  # nothing was stored
    error = await rpc_error(b.preferences("ann", email="x@example.com"))
    assert error.code() == NOT_FOUND
    assert error.details() == "user not found: 'ann'"  # not a send: nothing to say of one


# -- bad input ------------------------------------------------------------------------------


def _send(**fields: Any) -> pb.SendNotificationRequest:
    fields.setdefault("title", "x")
    if "channel_id" not in fields:
        fields.setdefault("user_ids", ["ann"])
    return pb.SendNotificationRequest(**fields)


def _future(**delta: float) -> timestamp_pb2.Timestamp:
    return timestamp(datetime.now(UTC) + timedelta(**delta))


BAD_SENDS = [
    (_send(user_ids=[]), ["user_ids"]),
    (_send(user_ids=[f"u{i}" for i in range(1001)]), ["user_ids"]),
    (_send(user_ids=["ann", " ann"]), ["user_ids[1]"]),
    (_send(user_ids=["ann", "ann"]), ["user_ids[1]"]),
    (_send(title=""), ["title"]),
    (_send(title="t" * 257), ["title"]),
    (_send(category="Billing!"), ["category"]),
    (_send(category="x" * 65), ["category"]),
    (_send(channels=[IN_APP, 9]), ["channels[1]"]),
    (_send(channels=[0]), ["channels[0]"]),
    (_send(channel_id="not-a-uuid", user_ids=[]), ["channel_id"]),
    (_send(channel_id=MISSING_ID, user_ids=["ann"]), ["user_ids"]),
    (_send(exclude_user_ids=["bob"]), ["exclude_user_ids"]),
    (_send(send_at=_future(seconds=-60)), ["send_at"]),
    (_send(send_at=_future(days=31)), ["send_at"]),
    (_send(body="b" * 65537), ["body"]),
]


@pytest.mark.parametrize(("request_", "fields"), BAD_SENDS)
async def test_bad_sends_name_every_bad_field_and_store_nothing(
    tenant: Tenant, request_: pb.SendNotificationRequest, fields: list[str]
) -> None:
    await tenant.users("ann")
    error = await rpc_error(tenant.notifications.SendNotification(request_, metadata=tenant.md))
    assert error.code() == INVALID, error.details()
    assert field_violations(error) == fields
    assert (await tenant.inbox("ann")).notifications == []


async def test_oversized_data_is_refused(tenant: Tenant) -> None:
    data = struct_pb2.Struct()
    data.update({"blob": "x" * 70_000})
    error = await rpc_error(tenant.send("ann", data=data))
    assert error.code() == INVALID and field_violations(error) == ["data"]


def _prefs(**values: Any) -> tuple[dict[str, Any], list[str]]:
    return values, list(values)


BAD_PREFERENCES = [
    (_prefs(email="not-an-email"), ["preferences.email"]),
    (_prefs(email="a b@example.com"), ["preferences.email"]),
    (_prefs(email="ann@"), ["preferences.email"]),
    (_prefs(email="ann@example.com\n"), ["preferences.email"]),  # would end the To header
    (_prefs(webhook_url="ftp://example.com/x"), ["preferences.webhook_url"]),
    (_prefs(webhook_url="https://user:pw@example.com/x"), ["preferences.webhook_url"]),
    (_prefs(webhook_secret="secret"), ["preferences.webhook_secret"]),
    (
        _prefs(quiet_hours=pb.QuietHours(start="22:00", end="7:00", time_zone="Europe/Paris")),
        ["preferences.quiet_hours.end"],
    ),
    (
        _prefs(quiet_hours=pb.QuietHours(start="24:00", end="07:00", time_zone="Mars/Olympus")),
        ["preferences.quiet_hours.start", "preferences.quiet_hours.time_zone"],
    ),
    (
        _prefs(quiet_hours=pb.QuietHours(start="07:00", end="07:00")),
        ["preferences.quiet_hours.end"],
    ),
    (_prefs(enabled_channels=[IN_APP, 12]), ["preferences.enabled_channels[1]"]),
    (
        _prefs(rules=[pb.CategoryRule(category="Bad Category", channel=EMAIL)]),
        ["preferences.rules[0].category"],
    ),
    (
        _prefs(rules=[pb.CategoryRule(category="billing\n", channel=EMAIL)]),
        ["preferences.rules[0].category"],
    ),
    (
        _prefs(quiet_hours=pb.QuietHours(start="22:00\n", end="07:00")),
        ["preferences.quiet_hours.start"],
    ),
    (
        _prefs(
            rules=[
                pb.CategoryRule(category="x", channel=EMAIL),
                pb.CategoryRule(category="x", channel=EMAIL, enabled=True),
            ]
        ),
        ["preferences.rules[1]"],
    ),
]


@pytest.mark.parametrize(("given", "fields"), BAD_PREFERENCES)
async def test_bad_preferences_name_every_bad_field_and_change_nothing(
    tenant: Tenant, given: tuple[dict[str, Any], list[str]], fields: list[str]
) -> None:
    await tenant.users("ann")
    values, paths = given
    error = await rpc_error(tenant.preferences("ann", *paths, **values))
    assert error.code() == INVALID, error.details()
    assert field_violations(error) == fields
    stored = await tenant.notifications.GetPreferences(
        pb.GetPreferencesRequest(user_id="ann"), metadata=tenant.md
    )
    assert not stored.preferences.HasField("update_time")


async def test_an_update_mask_must_name_known_fields(tenant: Tenant) -> None:
    await tenant.users("ann")
    for paths in ([], ["email", "colour"]):
        error = await rpc_error(
            tenant.notifications.UpdatePreferences(
                pb.UpdatePreferencesRequest(
                    preferences=pb.Preferences(user_id="ann", email="a@example.com"),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                ),
                metadata=tenant.md,
            )
        )
        assert error.code() == INVALID and field_violations(error) == ["update_mask"]


def _keys() -> dict[str, str]:
    p256dh, auth = browser_keys()
    return {"p256dh": p256dh, "auth": auth}


BAD_SUBSCRIPTIONS = [
    ({"endpoint": "ftp://push.example.com/x"} | _keys(), ["subscription.endpoint"]),
    ({"endpoint": ""} | _keys(), ["subscription.endpoint"]),
    (
        {"endpoint": "https://push.example.com/x", "p256dh": "AAAA", "auth": _keys()["auth"]},
        ["subscription.p256dh"],
    ),
    (
        {
            "endpoint": "https://push.example.com/x",
            "p256dh": base64.urlsafe_b64encode(b"\x04" + b"\x01" * 64).decode().rstrip("="),
            "auth": _keys()["auth"],
        },
        ["subscription.p256dh"],  # 65 bytes, but not a point on the curve
    ),
    (
        {"endpoint": "https://push.example.com/x", "p256dh": _keys()["p256dh"], "auth": "AAAA"},
        ["subscription.auth"],
    ),
    ({"endpoint": "https://push.example.com/x", "p256dh": "", "auth": ""}, None),
]


@pytest.mark.parametrize(("fields", "bad"), BAD_SUBSCRIPTIONS)
async def test_bad_push_subscriptions_are_refused(
    tenant: Tenant, fields: dict[str, str], bad: list[str] | None
) -> None:
    await tenant.users("ann")
    error = await rpc_error(
        tenant.notifications.RegisterPushSubscription(
            pb.RegisterPushSubscriptionRequest(
                subscription=pb.PushSubscription(user_id="ann", **fields)
            ),
            metadata=tenant.md,
        )
    )
    assert error.code() == INVALID
    if bad is not None:
        assert field_violations(error) == bad
    else:
        assert set(field_violations(error)) == {"subscription.p256dh", "subscription.auth"}
    listed = await tenant.notifications.ListPushSubscriptions(
        pb.ListPushSubscriptionsRequest(user_id="ann"), metadata=tenant.md
    )
    assert list(listed.subscriptions) == []


BAD_SETTINGS = [
    ({"email_from": "not a mailbox"}, ["settings.email_from"]),
    ({"webhook_url": "http://"}, ["settings.webhook_url"]),
    ({"webhook_secret": "whsec_!!!"}, ["settings.webhook_secret"]),
    (
        {"category_defaults": [pb.CategoryDefault(category="x", digest_window_seconds=86401)]},
        ["settings.category_defaults[0].digest_window_seconds"],
    ),
    (
        {"category_defaults": [pb.CategoryDefault(category="x"), pb.CategoryDefault(category="x")]},
        ["settings.category_defaults[1].category"],
    ),
    (
        {"category_defaults": [pb.CategoryDefault(category="x", enabled_channels=[7])]},
        ["settings.category_defaults[0].enabled_channels[0]"],
    ),
]


@pytest.mark.parametrize(("values", "fields"), BAD_SETTINGS)
async def test_bad_tenant_settings_are_refused(
    tenant: Tenant, values: dict[str, Any], fields: list[str]
) -> None:
    error = await rpc_error(tenant.settings(**values))
    assert error.code() == INVALID, error.details()
    assert field_violations(error) == fields


async def test_unknown_ids_and_users_are_refused(tenant: Tenant) -> None:
    error = await rpc_error(tenant.get("nope"))
    assert error.code() == INVALID and field_violations(error) == ["id"]
    error = await rpc_error(tenant.get(MISSING_ID))
    assert error.code() == NOT_FOUND
    error = await rpc_error(tenant.inbox(""))
    assert error.code() == INVALID and field_violations(error) == ["user_id"]
    error = await rpc_error(
        tenant.notifications.MarkNotificationRead(
            pb.MarkNotificationReadRequest(user_id="ann", notification_ids=["x"]),
            metadata=tenant.md,
        )
    )
    assert error.code() == INVALID and field_violations(error) == ["notification_ids[0]"]
    error = await rpc_error(
        tenant.notifications.MarkNotificationRead(
            pb.MarkNotificationReadRequest(user_id="ann"), metadata=tenant.md
        )
    )
    assert error.code() == INVALID and field_violations(error) == ["notification_ids"]


# -- preferences, settings, push subscriptions ----------------------------------------


async def test_preferences_default_then_change_field_by_field(tenant: Tenant) -> None:
    await tenant.users("ann")
    defaults = await tenant.notifications.GetPreferences(
        pb.GetPreferencesRequest(user_id="ann"), metadata=tenant.md
    )
    assert list(defaults.preferences.enabled_channels) == [IN_APP, EMAIL, WEBHOOK, PUSH]
    assert not defaults.preferences.HasField("update_time")
    await tenant.preferences("ann", email="ann@example.com")
    quiet = pb.QuietHours(start="22:00", end="07:00", time_zone="Europe/Paris")
    rule = pb.CategoryRule(category="billing", channel=EMAIL, enabled=False)
    stored = await tenant.preferences(
        "ann",
        enabled_channels=[IN_APP, EMAIL],
        quiet_hours=quiet,
        rules=[rule],
        webhook_url="http://127.0.0.1:9/ann",
        webhook_secret="whsec_" + base64.b64encode(b"k" * 32).decode(),
    )
    assert stored.email == "ann@example.com"  # kept: not in the mask
    assert list(stored.enabled_channels) == [IN_APP, EMAIL]
    assert stored.quiet_hours == quiet and list(stored.rules) == [rule]
    assert stored.webhook_url == "http://127.0.0.1:9/ann"
    assert stored.webhook_secret == ""  # write-only
    assert stored.update_time.seconds > 0
    got = await tenant.notifications.GetPreferences(
        pb.GetPreferencesRequest(user_id="ann"), metadata=tenant.md
    )
    assert got.preferences == stored
    cleared = await tenant.preferences("ann", "quiet_hours")
    assert not cleared.HasField("quiet_hours") and cleared.email == "ann@example.com"


async def test_tenant_settings_have_a_vapid_key_from_the_first_read(tenant: Tenant) -> None:
    first = await tenant.notifications.GetTenantSettings(
        pb.GetTenantSettingsRequest(), metadata=tenant.md
    )
    key = first.settings.vapid_public_key
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(raw) == 65 and raw[0] == 4 and "=" not in key
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # on the curve
    assert not first.settings.HasField("update_time")
    default = pb.CategoryDefault(
        category="mention", enabled_channels=[IN_APP, PUSH], digest_window_seconds=600
    )
    changed = await tenant.settings(
        email_from="Team <team@example.com>",
        category_defaults=[default],
        webhook_url="http://127.0.0.1:9/tenant",
    )
    assert changed.email_from == "Team <team@example.com>"
    assert list(changed.category_defaults) == [default]
    assert changed.webhook_url == "http://127.0.0.1:9/tenant" and changed.webhook_secret == ""
    assert changed.vapid_public_key == key and changed.update_time.seconds > 0
    again = await tenant.notifications.GetTenantSettings(
        pb.GetTenantSettingsRequest(), metadata=tenant.md
    )
    assert again.settings == changed


async def test_push_subscriptions_register_replace_list_and_delete(tenant: Tenant) -> None:
    await tenant.users("ann", "bob")
    keys = _keys()

    async def register(user_id: str, endpoint: str, **given: str) -> pb.PushSubscription:
        response = await tenant.notifications.RegisterPushSubscription(
            pb.RegisterPushSubscriptionRequest(
                subscription=pb.PushSubscription(
                    user_id=user_id, endpoint=endpoint, **(keys | given)
                )
            ),
            metadata=tenant.md,
        )
        return response.subscription

    async def listed(user_id: str) -> list[str]:
        response = await tenant.notifications.ListPushSubscriptions(
            pb.ListPushSubscriptionsRequest(user_id=user_id), metadata=tenant.md
        )
        return [s.endpoint for s in response.subscriptions]

    first = await register("ann", "https://push.example.com/a")
    assert is_uuid(first.id) and first.p256dh == keys["p256dh"]
    await register("ann", "https://push.example.com/b")
    newer = _keys()
    replaced = await register("ann", "https://push.example.com/a", **newer)
    assert replaced.id == first.id and replaced.p256dh == newer["p256dh"]
    assert await listed("ann") == ["https://push.example.com/a", "https://push.example.com/b"]
    moved = await register("bob", "https://push.example.com/b")  # the browser changed hands
    assert await listed("ann") == ["https://push.example.com/a"]
    assert await listed("bob") == [moved.endpoint]
    for _ in range(2):  # deleting one that is gone is not an error
        await tenant.notifications.DeletePushSubscription(
            pb.DeletePushSubscriptionRequest(user_id="ann", endpoint="https://push.example.com/a"),
            metadata=tenant.md,
        )
    assert await listed("ann") == []
    error = await rpc_error(register("nobody", "https://push.example.com/c"))
    assert error.code() == NOT_FOUND


async def test_a_user_keeps_the_20_newest_push_subscriptions(tenant: Tenant) -> None:
    await tenant.users("ann")
    endpoints = [f"https://push.example.com/{n:02}" for n in range(23)]
    for endpoint in endpoints:
        await tenant.notifications.RegisterPushSubscription(
            pb.RegisterPushSubscriptionRequest(
                subscription=pb.PushSubscription(user_id="ann", endpoint=endpoint, **_keys())
            ),
            metadata=tenant.md,
        )
    listed = await tenant.notifications.ListPushSubscriptions(
        pb.ListPushSubscriptionsRequest(user_id="ann"), metadata=tenant.md
    )
    assert sorted(s.endpoint for s in listed.subscriptions) == endpoints[3:]


async def test_unsubscribe_turns_that_categorys_email_off(world: World, tenant: Tenant) -> None:
    from notification_service.senders.unsubscribe import make_token

    await tenant.users("ann")
    await tenant.preferences("ann", email="ann@example.com")
    secret = world.runtime.settings.token_secret
    assert secret
    token = make_token(secret, tenant.id, "ann", "billing")
    peer = (("authorization", f"Bearer {world.runtime.settings.admin_token}"),)
    answer = await tenant.notifications.Unsubscribe(
        pb.UnsubscribeRequest(token=token), metadata=peer
    )
    assert (answer.user_id, answer.category) == ("ann", "billing")
    sent = await tenant.send("ann", channels=[EMAIL], category="billing")
    assert states(sent[0])[EMAIL] == (SKIPPED, "the user turned email off for 'billing'")
    other = await tenant.send("ann", channels=[EMAIL], category="mention")
    assert states(other[0])[EMAIL][0] == PENDING
    error = await rpc_error(
        tenant.notifications.Unsubscribe(pb.UnsubscribeRequest(token=token), metadata=tenant.md)
    )
    assert error.code() in (grpc.StatusCode.UNAUTHENTICATED, DENIED)  # tenants may not
    error = await rpc_error(
        tenant.notifications.Unsubscribe(
            pb.UnsubscribeRequest(token=token[:-2] + "xx"), metadata=peer
        )
    )
    assert error.code() == INVALID and field_violations(error) == ["token"]
    # A link of a user the tenant no longer has (or of a deleted tenant) stores nothing.
    gone = make_token(secret, tenant.id, "zoe", "billing")
    error = await rpc_error(
        tenant.notifications.Unsubscribe(pb.UnsubscribeRequest(token=gone), metadata=peer)
    )
    assert error.code() == NOT_FOUND
    stored = await SqlNotificationStore(world.runtime.engine).preferences_of(tenant.id, ["zoe"])
    assert stored == {}
