"""The whole path of a push and a webhook notification with the production senders: the
RPCs register a browser's subscription and the user's webhook, SendNotification queues the
deliveries, the job worker sends them through the outbound guard, and

- a local push service (the one of ``senders/test_push.py``) checks the VAPID JWT with
  the key GetTenantSettings shows, and decrypts the message with the browser's key;
- a webhook receiver verifies the Standard Webhooks signature with the user's secret;
- a push service answering 410 makes the subscription go (ListPushSubscriptions).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from keel.notifications.v1 import notifications_pb2 as pb
from keel.webhooks import new_secret, verify

from tests.notification_service.conftest import World, running_world
from tests.notification_service.senders.conftest import http_server
from tests.notification_service.senders.test_push import PushService

PUSH = pb.NOTIFICATION_CHANNEL_PUSH
WEBHOOK = pb.NOTIFICATION_CHANNEL_WEBHOOK
SENT, FAILED = pb.DELIVERY_STATE_SENT, pb.DELIVERY_STATE_FAILED


@pytest.fixture(scope="module")
async def real_world(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    async with running_world(
        database_url, tmp_path_factory.mktemp("real-senders"), real_senders=True
    ) as running:
        yield running


@pytest.fixture
async def push_service() -> AsyncIterator[PushService]:
    service = PushService()
    async with http_server(service.handle) as origin:
        service.origin = origin
        yield service


async def test_a_push_reaches_the_browser_decryptable_and_signed_by_the_tenants_key(
    real_world: World, push_service: PushService
) -> None:
    tenant = await real_world.tenant()
    await tenant.users("hal")
    target = push_service.subscribe("/sub/hal")
    await tenant.notifications.RegisterPushSubscription(
        pb.RegisterPushSubscriptionRequest(
            subscription=pb.PushSubscription(
                user_id="hal", endpoint=target.endpoint, p256dh=target.p256dh, auth=target.auth
            )
        ),
        metadata=tenant.md,
    )
    sent = await tenant.send("hal", channels=[PUSH], title="Build green", body="main is fine")
    await real_world.run_jobs()

    (delivered,) = push_service.delivered
    assert delivered.payload["title"] == "Build green"
    assert delivered.payload["body"] == "main is fine"
    settings = await tenant.notifications.GetTenantSettings(
        pb.GetTenantSettingsRequest(), metadata=tenant.md
    )
    assert delivered.public_key == settings.settings.vapid_public_key
    assert delivered.claims["aud"] == push_service.origin
    notification = await tenant.get(sent[0].id)
    assert [(d.channel, d.state) for d in notification.deliveries] == [(PUSH, SENT)]
    (attempt,) = await tenant.attempts(sent[0].id)
    assert (attempt.target, attempt.state, attempt.status_code) == (target.endpoint, SENT, 201)


async def test_a_push_service_answering_410_removes_the_subscription(
    real_world: World, push_service: PushService
) -> None:
    tenant = await real_world.tenant()
    await tenant.users("ida")
    target = push_service.subscribe("/sub/ida")
    await tenant.notifications.RegisterPushSubscription(
        pb.RegisterPushSubscriptionRequest(
            subscription=pb.PushSubscription(
                user_id="ida", endpoint=target.endpoint, p256dh=target.p256dh, auth=target.auth
            )
        ),
        metadata=tenant.md,
    )
    push_service.answers["/sub/ida"] = 410
    sent = await tenant.send("ida", channels=[PUSH], title="Anyone there?")
    await real_world.run_jobs()

    (attempt,) = await tenant.attempts(sent[0].id)
    assert (attempt.state, attempt.status_code) == (FAILED, 410)
    listed = await tenant.notifications.ListPushSubscriptions(
        pb.ListPushSubscriptionsRequest(user_id="ida"), metadata=tenant.md
    )
    assert list(listed.subscriptions) == []


async def test_a_webhook_notification_verifies_with_the_users_secret(real_world: World) -> None:
    tenant = await real_world.tenant()
    await tenant.users("jo")
    secret = new_secret()
    received: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async with http_server(receive) as origin:
        await tenant.preferences("jo", webhook_url=f"{origin}/hooks/jo", webhook_secret=secret)
        sent = await tenant.send("jo", channels=[WEBHOOK], title="Deploy done", category="ops")
        await real_world.run_jobs()

    ((headers, body),) = received
    payload = verify(secret, headers, body)
    assert payload == json.loads(body)
    assert payload["type"] == "notification.created"
    assert payload["data"]["title"] == "Deploy done"
    assert payload["data"]["id"] == sent[0].id
    notification = await tenant.get(sent[0].id)
    assert [(d.channel, d.state) for d in notification.deliveries] == [(WEBHOOK, SENT)]
