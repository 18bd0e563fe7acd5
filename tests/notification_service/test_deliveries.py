"""The delivery jobs with recording senders, on SQLite and PostgreSQL: attempts recorded and
retried through the kit's job queue, final failures, push subscriptions that are gone,
quiet hours, digests, scheduled sends, the live side, and what a job run twice does."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import timestamp_pb2
from keel.notifications.v1 import live_pb2
from keel.notifications.v1 import notifications_pb2 as pb
from sqlalchemy import func, select

from notification_service.senders.base import DeliveryFailed, SubscriptionGone
from service_kit.bus import NOTIFICATIONS_LIVE_TOPIC
from service_kit.db import write_transaction
from service_kit.purge import purge_tenant, start_tenant_purge
from service_kit.schema import tenant_owned_tables
from tests.notification_service.conftest import MAX_ATTEMPTS, Tenant, World, retryable
from tests.notification_service.test_servicer import (
    EMAIL,
    IN_APP,
    PUSH,
    WEBHOOK,
    browser_keys,
    states,
)

SENT = pb.DELIVERY_STATE_SENT
FAILED = pb.DELIVERY_STATE_FAILED
PENDING = pb.DELIVERY_STATE_PENDING
HELD = pb.DELIVERY_STATE_HELD
SKIPPED = pb.DELIVERY_STATE_SKIPPED


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


async def emailable(tenant: Tenant, user_id: str) -> None:
    await tenant.users(user_id)
    await tenant.preferences(user_id, email=f"{user_id}@example.com")


async def subscribe(tenant: Tenant, user_id: str, endpoint: str) -> pb.PushSubscription:
    p256dh, auth = browser_keys()
    response = await tenant.notifications.RegisterPushSubscription(
        pb.RegisterPushSubscriptionRequest(
            subscription=pb.PushSubscription(
                user_id=user_id, endpoint=endpoint, p256dh=p256dh, auth=auth
            )
        ),
        metadata=tenant.md,
    )
    return response.subscription


@pytest.fixture(autouse=True)
async def drained(world: World) -> None:
    """Jobs other tests left due run first, so they do not take this test's failures."""
    await world.run_jobs()
    for sender in (world.mailer, world.push, world.webhook):
        sender.failures.clear()


# -- one delivery ----------------------------------------------------------------------------


async def test_an_email_is_sent_once_and_its_attempt_recorded(world: World, tenant: Tenant) -> None:
    await emailable(tenant, "ann")
    await tenant.settings(email_from="Team <team@example.com>")
    sent = await tenant.send("ann", title="Invoice", channels=[EMAIL], category="billing")
    notification = sent[0]
    assert states(notification) == {EMAIL: (PENDING, "")}
    assert await world.run_jobs() >= 1
    emails = [e for e in world.mailer.sent if e.items[0].id == notification.id]
    assert len(emails) == 1
    email = emails[0]
    assert (email.to, email.sender) == ("ann@example.com", "Team <team@example.com>")
    assert email.message_id == f"<{notification.id}.email@keel>"
    assert [(i.title, i.category, i.user_id) for i in email.items] == [
        ("Invoice", "billing", "ann")
    ]
    assert email.unsubscribe_url.startswith("http://") and "token=" in email.unsubscribe_url
    assert states(await tenant.get(notification.id)) == {EMAIL: (SENT, "")}
    attempts = await tenant.attempts(notification.id)
    assert [(a.channel, a.target, a.state, a.error) for a in attempts] == [
        (EMAIL, "ann@example.com", SENT, "")
    ]
    assert attempts[0].notification_id == notification.id and attempts[0].attempt_time.seconds


async def test_a_job_run_again_after_its_delivery_settled_sends_nothing(
    world: World, tenant: Tenant
) -> None:
    """At least once: a job may run twice (a lease that expired, a crash before the success
    was recorded); once its delivery is SENT, another run sends nothing."""
    await emailable(tenant, "bob")
    notification = (await tenant.send("bob", channels=[EMAIL]))[0]
    [payload] = await world.job_payloads("notification.email", tenant.id)
    before = world.mailer.calls
    await world.run_handler("notification.email", payload, tenant_id=tenant.id)
    await world.run_handler("notification.email", payload, tenant_id=tenant.id, attempt=2)
    assert world.mailer.calls == before + 1
    assert len(await tenant.attempts(notification.id)) == 1
    assert await world.run_jobs() >= 1  # the queued job itself: nothing left to send
    assert world.mailer.calls == before + 1


async def test_failed_attempts_are_retried_by_the_queue_and_each_is_recorded(
    world: World, tenant: Tenant
) -> None:
    await emailable(tenant, "cat")
    notification = (await tenant.send("cat", channels=[EMAIL]))[0]
    world.mailer.failures += [retryable(451), retryable(421)]
    await world.run_jobs()
    attempts = await tenant.attempts(notification.id)
    assert [(a.state, a.status_code) for a in attempts] == [(FAILED, 451), (FAILED, 421), (SENT, 0)]
    assert attempts[0].error == "HTTP 451"
    assert states(await tenant.get(notification.id)) == {EMAIL: (SENT, "")}


async def test_the_last_failed_attempt_fails_the_delivery(world: World, tenant: Tenant) -> None:
    await emailable(tenant, "dan")
    notification = (await tenant.send("dan", channels=[EMAIL]))[0]
    world.mailer.failures += [retryable() for _ in range(MAX_ATTEMPTS)]
    await world.run_jobs()
    assert [a.state for a in await tenant.attempts(notification.id)] == [FAILED] * MAX_ATTEMPTS
    assert states(await tenant.get(notification.id)) == {EMAIL: (FAILED, "HTTP 503")}


async def test_a_pending_delivery_says_its_attempt_failed_and_will_be_retried(
    world: World, tenant: Tenant
) -> None:
    await emailable(tenant, "eli")
    notification = (await tenant.send("eli", channels=[EMAIL]))[0]
    [payload] = await world.job_payloads("notification.email", tenant.id)
    world.mailer.failures.append(retryable(452))
    with pytest.raises(Exception, match="HTTP 452"):
        await world.run_handler("notification.email", payload, tenant_id=tenant.id)
    state, error = states(await tenant.get(notification.id))[EMAIL]
    assert state == PENDING and error == "attempt 1 failed: HTTP 452; it will be retried"


async def test_a_permanent_failure_fails_at_once(world: World, tenant: Tenant) -> None:
    await emailable(tenant, "fay")
    notification = (await tenant.send("fay", channels=[EMAIL]))[0]
    world.mailer.failures.append(
        DeliveryFailed("550 no such mailbox", permanent=True, status_code=550)
    )
    await world.run_jobs()
    attempts = await tenant.attempts(notification.id)
    assert [(a.state, a.status_code, a.error) for a in attempts] == [
        (FAILED, 550, "550 no such mailbox")
    ]
    assert states(await tenant.get(notification.id))[EMAIL] == (FAILED, "550 no such mailbox")


async def test_deliveries_run_together_each_use_their_own_users_inputs(
    world: World, tenant: Tenant
) -> None:
    """The worker's concurrent jobs read their inputs and record their outcomes in shared
    batches: still, each email goes once to its own user's address, a user who turned the
    category off is skipped alone, each push goes to its own browser, and each delivery
    has exactly its one attempt."""
    users = [f"mix{i}" for i in range(12)]
    for user_id in users:
        await emailable(tenant, user_id)
    await tenant.preferences(
        "mix3", "rules", rules=[pb.CategoryRule(category="news", channel=EMAIL, enabled=False)]
    )
    endpoints = {u: f"https://push.example.com/{u}" for u in users[:6]}
    for user_id, endpoint in endpoints.items():
        await subscribe(tenant, user_id, endpoint)
    sent = await tenant.send(*users, category="news", channels=[EMAIL, PUSH])
    await world.run_jobs()

    by_user = {n.user_id: await tenant.get(n.id) for n in sent}
    for user_id, notification in by_user.items():
        emails = [e for e in world.mailer.sent if e.items[0].id == notification.id]
        pushes = [p for p in world.push.sent if p[1][0].id == notification.id]
        if user_id == "mix3":
            assert emails == []
            assert states(notification)[EMAIL] == (
                SKIPPED,
                "the user turned email off for 'news'",
            )
        else:
            assert [e.to for e in emails] == [f"{user_id}@example.com"]
            assert states(notification)[EMAIL] == (SENT, "")
        assert [p[0].endpoint for p in pushes] == (
            [endpoints[user_id]] if user_id in endpoints else []
        )
        attempts = await tenant.attempts(notification.id)
        assert sorted((a.channel, a.target) for a in attempts) == sorted(
            ([(EMAIL, f"{user_id}@example.com")] if user_id != "mix3" else [])
            + ([(PUSH, endpoints[user_id])] if user_id in endpoints else [])
        )


async def test_a_push_subscription_that_is_gone_is_removed(world: World, tenant: Tenant) -> None:
    await tenant.users("gus")
    gone = await subscribe(tenant, "gus", "https://push.example.com/gone")
    kept = await subscribe(tenant, "gus", "https://push.example.com/kept")
    notification = (await tenant.send("gus", channels=[PUSH], title="Ping"))[0]
    assert states(notification) == {PUSH: (PENDING, "")}
    world.push.failures.append(SubscriptionGone("410 Gone", status_code=410))
    await world.run_jobs()
    attempts = await tenant.attempts(notification.id)
    assert sorted((a.target, a.state, a.status_code) for a in attempts) == [
        (gone.endpoint, FAILED, 410),
        (kept.endpoint, SENT, 201),
    ] or sorted((a.target, a.state, a.status_code) for a in attempts) == [
        (gone.endpoint, SENT, 201),
        (kept.endpoint, FAILED, 410),
    ]
    failed = next(a for a in attempts if a.state == FAILED)
    assert failed.error == "subscription gone: 410 Gone"
    listed = await tenant.notifications.ListPushSubscriptions(
        pb.ListPushSubscriptionsRequest(user_id="gus"), metadata=tenant.md
    )
    assert [s.endpoint for s in listed.subscriptions] == [
        a.target for a in attempts if a.state == SENT
    ]
    assert states(await tenant.get(notification.id)) == {PUSH: (SENT, "")}  # one browser got it
    pushed = [p for p in world.push.sent if p[1][0].id == notification.id]
    _, items, vapid = pushed[0]
    settings = await tenant.notifications.GetTenantSettings(
        pb.GetTenantSettingsRequest(), metadata=tenant.md
    )
    assert vapid.public_key == settings.settings.vapid_public_key
    assert "PRIVATE KEY" in vapid.private_pem and [i.title for i in items] == ["Ping"]


async def test_one_send_plans_each_recipient_by_their_own_preferences_and_browsers(
    world: World, tenant: Tenant
) -> None:
    """Recipients without preferences or browsers share one plan; the others get theirs."""
    await tenant.users("ava", "ben", "cal", "dee")
    await emailable(tenant, "ben")
    await subscribe(tenant, "cal", "https://push.example.com/cal")
    await tenant.preferences("dee", enabled_channels=[EMAIL])  # in-app and push off
    sent = await tenant.send("ava", "ben", "cal", "dee", channels=[IN_APP, EMAIL, PUSH])
    no_email = (SKIPPED, "the user has no email address in their preferences")
    no_push = (SKIPPED, "the user has no push subscription")
    assert [states(n) for n in sent] == [
        {IN_APP: (SENT, ""), EMAIL: no_email, PUSH: no_push},
        {IN_APP: (SENT, ""), EMAIL: (PENDING, ""), PUSH: no_push},
        {IN_APP: (SENT, ""), EMAIL: no_email, PUSH: (PENDING, "")},
        {
            IN_APP: (SKIPPED, "the user turned in_app off"),
            EMAIL: no_email,
            PUSH: (SKIPPED, "the user turned push off"),
        },
    ]
    assert [(await tenant.get(n.id)) for n in sent] == sent


async def test_an_email_queued_before_the_user_unsubscribed_is_not_sent(
    world: World, tenant: Tenant
) -> None:
    await emailable(tenant, "kit")
    notification = (await tenant.send("kit", category="billing", channels=[EMAIL]))[0]
    assert states(notification) == {EMAIL: (PENDING, "")}
    # The one-click link (or the user's settings page) turns billing email off before the
    # queued email goes (held for quiet hours or a digest, or the queue is just behind).
    await tenant.preferences(
        "kit", "rules", rules=[pb.CategoryRule(category="billing", channel=EMAIL, enabled=False)]
    )
    await world.run_jobs()

    assert [e for e in world.mailer.sent if e.to == "kit@example.com"] == []
    assert states(await tenant.get(notification.id)) == {
        EMAIL: (SKIPPED, "the user turned email off for 'billing'")
    }


async def test_a_push_queued_for_a_user_never_reaches_the_next_user_of_that_browser(
    world: World, tenant: Tenant
) -> None:
    await tenant.users("ivy", "jon")
    endpoint = "https://push.example.com/shared-laptop"
    await subscribe(tenant, "ivy", endpoint)
    notification = (await tenant.send("ivy", channels=[PUSH], title="For ivy only"))[0]
    await subscribe(tenant, "jon", endpoint)  # ivy logs out, jon logs in, before it goes
    await world.run_jobs()

    assert [p for p in world.push.sent if p[1][0].id == notification.id] == []
    assert states(await tenant.get(notification.id)) == {
        PUSH: (SKIPPED, "the browser's push subscription is another user's now")
    }


async def test_webhooks_go_to_the_users_url_or_the_tenants_signed_by_its_secret(
    world: World, tenant: Tenant
) -> None:
    await tenant.users("hal", "ida")
    user_secret = "whsec_" + base64.b64encode(b"u" * 32).decode()
    await tenant.preferences(
        "hal", webhook_url="http://127.0.0.1:9/hal", webhook_secret=user_secret
    )
    await tenant.settings(webhook_url="http://127.0.0.1:9/tenant")
    sent = await tenant.send("hal", "ida", channels=[WEBHOOK])
    await world.run_jobs()
    posted = {m: (url, secret) for url, secret, m, _ in world.webhook.sent}
    hal, ida = sent
    assert posted[hal.id] == ("http://127.0.0.1:9/hal", user_secret)
    url, tenant_secret = posted[ida.id]
    assert url == "http://127.0.0.1:9/tenant" and tenant_secret.startswith("whsec_")
    assert tenant_secret != user_secret


# -- quiet hours, digests, send_at -------------------------------------------------------


async def test_quiet_hours_hold_email_until_they_end_but_not_the_inbox(
    world: World, tenant: Tenant
) -> None:
    await emailable(tenant, "jan")
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)), (now + timedelta(hours=1))
    quiet = pb.QuietHours(start=start.strftime("%H:%M"), end=end.strftime("%H:%M"))
    await tenant.preferences("jan", quiet_hours=quiet)
    notification = (await tenant.send("jan", channels=[IN_APP, EMAIL]))[0]
    state, error = states(notification)[EMAIL]
    assert state == HELD and error.startswith("quiet hours until ")
    until = datetime.fromisoformat(error.removeprefix("quiet hours until ").replace("Z", "+00:00"))
    assert until.strftime("%H:%M") == end.strftime("%H:%M") and until > now
    assert states(notification)[IN_APP] == (SENT, "")
    assert (await tenant.inbox("jan")).unread_count == 1
    await world.run_jobs()
    assert states(await tenant.get(notification.id))[EMAIL][0] == HELD  # not due yet
    [payload] = await world.job_payloads("notification.email", tenant.id)
    await world.run_handler("notification.email", payload, tenant_id=tenant.id)  # at its time
    assert states(await tenant.get(notification.id))[EMAIL] == (SENT, "")


async def test_a_digest_collapses_five_emails_into_one(world: World, tenant: Tenant) -> None:
    await emailable(tenant, "kim")
    await tenant.settings(
        category_defaults=[pb.CategoryDefault(category="mention", digest_window_seconds=600)]
    )
    sent = [
        (
            await tenant.send(
                "kim", title=f"mention {i}", category="mention", channels=[IN_APP, EMAIL]
            )
        )[0]
        for i in range(5)
    ]
    held = {states(n)[EMAIL] for n in sent}
    assert len(held) == 1 and next(iter(held))[0] == HELD
    assert next(iter(held))[1].startswith("digest until ")
    assert (await tenant.inbox("kim")).unread_count == 5  # each in the inbox at once
    assert await world.job_payloads("notification.email", tenant.id) == []
    [payload] = await world.job_payloads("notification.digest", tenant.id)
    await world.run_handler("notification.digest", payload, tenant_id=tenant.id)
    emails = [e for e in world.mailer.sent if e.to == "kim@example.com"]
    assert len(emails) == 1
    assert [i.title for i in emails[0].items] == [f"mention {i}" for i in range(5)]
    assert emails[0].message_id == f"<{payload['digest_id']}.digest@keel>"
    for notification in sent:
        assert states(await tenant.get(notification.id))[EMAIL] == (SENT, "")
        [attempt] = await tenant.attempts(notification.id)
        assert (attempt.state, attempt.target) == (SENT, "kim@example.com")
    await world.run_handler("notification.digest", payload, tenant_id=tenant.id)
    assert len([e for e in world.mailer.sent if e.to == "kim@example.com"]) == 1
    later = (await tenant.send("kim", category="mention", channels=[EMAIL]))[0]
    assert states(later)[EMAIL][0] == HELD  # a new window
    assert len(await world.job_payloads("notification.digest", tenant.id)) == 2


async def test_concurrent_digest_sends_to_the_same_users_in_any_order_all_succeed(
    world: World, tenant: Tenant
) -> None:
    # Each send locks the digest window of every recipient; listed in opposite orders,
    # two sends would wait for each other's locks (PostgreSQL: deadlock detected).
    users = [f"dg{n:02}" for n in range(12)]
    for user in users:
        await emailable(tenant, user)
    await tenant.settings(
        category_defaults=[pb.CategoryDefault(category="digested", digest_window_seconds=600)]
    )
    for round_ in range(4):
        sent = await asyncio.gather(
            tenant.send(*users, title=f"forward {round_}", category="digested", channels=[EMAIL]),
            tenant.send(
                *users[::-1], title=f"backward {round_}", category="digested", channels=[EMAIL]
            ),
        )
        assert [len(notifications) for notifications in sent] == [12, 12]
    digests = await world.job_payloads("notification.digest", tenant.id)
    assert len(digests) == 12  # one window per user, joined by every send


async def test_a_scheduled_send_is_released_at_its_time(world: World, tenant: Tenant) -> None:
    await emailable(tenant, "lou")
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    notification = (
        await tenant.send("lou", channels=[IN_APP, EMAIL], send_at=stamp(at), title="Later")
    )[0]
    scheduled = f"scheduled for {at.isoformat().replace('+00:00', 'Z')}"
    assert states(notification) == {IN_APP: (HELD, scheduled), EMAIL: (HELD, scheduled)}
    assert notification.send_time == stamp(at)
    assert (await tenant.inbox("lou")).notifications == []
    assert await world.job_payloads("notification.email", tenant.id) == []
    live: list[bytes] = []
    subscription = await world.runtime.bus.subscribe(NOTIFICATIONS_LIVE_TOPIC, live.append)
    try:
        [payload] = await world.job_payloads("notification.release", tenant.id)
        await world.run_handler("notification.release", payload, tenant_id=tenant.id)
        await world.run_handler("notification.release", payload, tenant_id=tenant.id)  # twice
    finally:
        await subscription.close()
    inbox = await tenant.inbox("lou")
    assert [n.id for n in inbox.notifications] == [notification.id]
    mine = [m for m in map(live_pb2.LiveNotifications.FromString, live) if m.tenant_id == tenant.id]
    assert [[i.notification.id for i in m.items] for m in mine] == [[notification.id]]
    assert len(await world.job_payloads("notification.email", tenant.id)) == 1
    await world.run_jobs()
    assert states(await tenant.get(notification.id)) == {IN_APP: (SENT, ""), EMAIL: (SENT, "")}


# -- live -----------------------------------------------------------------------------------


async def test_in_app_sends_are_published_live_with_each_recipients_unread_count(
    world: World, tenant: Tenant
) -> None:
    await tenant.users("max", "nat")
    await tenant.send("max", "nat", channels=[IN_APP])
    await tenant.send("max", channels=[IN_APP])
    live: list[bytes] = []
    subscription = await world.runtime.bus.subscribe(NOTIFICATIONS_LIVE_TOPIC, live.append)
    try:
        sent = await tenant.send("max", "nat", channels=[IN_APP, EMAIL], title="Live")
    finally:
        await subscription.close()
    mine = [m for m in map(live_pb2.LiveNotifications.FromString, live) if m.tenant_id == tenant.id]
    assert len(mine) == 1
    assert [(i.notification.id, i.notification.user_id, i.unread_count) for i in mine[0].items] == [
        (sent[0].id, "max", 3),
        (sent[1].id, "nat", 2),
    ]
    assert mine[0].items[0].notification.title == "Live"


async def test_nothing_is_published_for_a_send_without_in_app(world: World, tenant: Tenant) -> None:
    await emailable(tenant, "oli")
    live: list[bytes] = []
    subscription = await world.runtime.bus.subscribe(NOTIFICATIONS_LIVE_TOPIC, live.append)
    try:
        await tenant.send("oli", channels=[EMAIL])
    finally:
        await subscription.close()
    assert [
        m for m in map(live_pb2.LiveNotifications.FromString, live) if m.tenant_id == tenant.id
    ] == []


# -- attempts, retries, purge -------------------------------------------------------------


async def test_delivery_attempts_come_a_page_at_a_time_oldest_first(
    world: World, tenant: Tenant
) -> None:
    await emailable(tenant, "pia")
    notification = (await tenant.send("pia", channels=[EMAIL]))[0]
    world.mailer.failures += [retryable(450 + i) for i in range(MAX_ATTEMPTS - 1)]
    await world.run_jobs()
    pages, token = [], ""
    while True:
        page = await tenant.notifications.ListDeliveryAttempts(
            pb.ListDeliveryAttemptsRequest(
                notification_id=notification.id, page_size=1, page_token=token
            ),
            metadata=tenant.md,
        )
        pages.append([(a.state, a.status_code) for a in page.attempts])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[(FAILED, 450)], [(FAILED, 451)], [(SENT, 0)]]


async def test_concurrent_retries_of_one_request_store_and_enqueue_once(
    world: World, tenant: Tenant
) -> None:
    await emailable(tenant, "quinn")
    answers = await asyncio.gather(
        *(tenant.send("quinn", request_id="same", channels=[IN_APP, EMAIL]) for _ in range(5))
    )
    assert len({a[0].id for a in answers}) == 1
    assert len(await world.job_payloads("notification.email", tenant.id)) == 1
    assert (await tenant.inbox("quinn")).unread_count == 1


async def test_a_purged_tenant_leaves_no_notification_rows(world: World, tenant: Tenant) -> None:
    await emailable(tenant, "rae")
    await subscribe(tenant, "rae", "https://push.example.com/rae")
    await tenant.settings(
        category_defaults=[pb.CategoryDefault(category="mention", digest_window_seconds=60)]
    )
    await tenant.send("rae", request_id="purge-me", category="mention")  # held for digests
    await tenant.send("rae", channels=[EMAIL], category="billing")  # sent: an attempt
    await world.run_jobs()
    tables = [t for t in tenant_owned_tables() if t.name.startswith(("notification", "push_"))]
    assert len(tables) == 8

    async def counts() -> dict[str, int]:
        async with world.runtime.engine.connect() as conn:
            return {
                t.name: int(
                    (
                        await conn.execute(
                            select(func.count()).select_from(t).where(t.c.tenant_id == tenant.id)
                        )
                    ).scalar_one()
                )
                for t in tables
            }

    assert all(count > 0 for count in (await counts()).values()), await counts()
    async with write_transaction(world.runtime.engine) as conn:
        await start_tenant_purge(conn, tenant_id=tenant.id, name=tenant.name, now=datetime.now(UTC))
    await purge_tenant(world.runtime.engine, tenant.id)
    assert set((await counts()).values()) == {0}
