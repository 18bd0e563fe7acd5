"""Notification webhooks: HttpWebhookSender against a real receiver (aiohttp on
127.0.0.1) that verifies every request with ``keel.webhooks.verify``, as a tenant's
backend would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from keel.webhooks import WebhookVerificationError, new_secret, verify

from notification_service.senders.base import DeliveryFailed
from notification_service.senders.webhook import HttpWebhookSender
from service_kit.outbound import OutboundHttp
from tests.notification_service.senders.conftest import http_server, notification

SECRET = new_secret()


@dataclass
class Receiver:
    """Verifies each request with :data:`SECRET`; answers ``status`` to a genuine one
    and 401 to any other."""

    status: int = 200
    verified: list[tuple[dict[str, str], bytes, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = verify(SECRET, dict(request.headers), body)
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return web.Response(status=401, text=str(exc))
        self.verified.append((dict(request.headers), body, payload))
        return web.Response(status=self.status, text="thanks")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with http_server(receiver.handle) as origin:
        receiver.url = f"{origin}/hooks"
        yield receiver


async def test_a_notification_webhook_is_signed_and_verifies(
    receiver: Receiver, http: OutboundHttp
) -> None:
    item = notification(3)

    status = await HttpWebhookSender(http).post(receiver.url, SECRET, item.id, [item])

    assert status == 200
    [(headers, _, payload)] = receiver.verified
    assert headers["webhook-id"] == item.id
    assert headers["Content-Type"] == "application/json"
    assert payload == {
        "type": "notification.created",
        "timestamp": "2026-11-30T10:07:41.123456Z",
        "data": {
            "id": item.id,
            "user_id": "u-1",
            "category": "mention",
            "title": "Ada mentioned you (3)",
            "body": "in #team: look at this, number 3",
            "data": {"url": "https://chat.example.com/team/42", "n": 3},
            "create_time": "2026-11-30T10:07:41.123456Z",
            "channel_id": "c-team",
        },
    }


async def test_every_attempt_sends_the_same_body_and_id(
    receiver: Receiver, http: OutboundHttp
) -> None:
    item = notification(1)
    sender = HttpWebhookSender(http)
    for _ in range(2):
        await sender.post(receiver.url, SECRET, item.id, [item])

    (first_headers, first_body, _), (second_headers, second_body, _) = receiver.verified
    assert first_body == second_body
    assert first_headers["webhook-id"] == second_headers["webhook-id"] == item.id


async def test_a_digest_webhook_lists_every_notification(
    receiver: Receiver, http: OutboundHttp
) -> None:
    items = [notification(n) for n in (1, 2)]

    await HttpWebhookSender(http).post(receiver.url, SECRET, "digest-1", items)

    [(headers, _, payload)] = receiver.verified
    assert headers["webhook-id"] == "digest-1"
    assert payload["type"] == "notification.digest"
    assert payload["timestamp"] == "2026-11-30T10:07:40.123456Z"
    assert payload["data"]["count"] == 2
    assert [n["id"] for n in payload["data"]["notifications"]] == [i.id for i in items]


async def test_a_receiver_with_another_secret_rejects_the_webhook(
    receiver: Receiver, http: OutboundHttp
) -> None:
    with pytest.raises(DeliveryFailed) as failed:
        await HttpWebhookSender(http).post(receiver.url, new_secret(), "n-1", [notification()])

    assert receiver.rejected == ["no signature matches the secret"]
    assert (failed.value.permanent, failed.value.status_code) == (False, 401)


@pytest.mark.parametrize(("status", "permanent"), [(410, True), (500, False), (429, False)])
async def test_410_is_permanent_and_other_failures_are_retried(
    receiver: Receiver, http: OutboundHttp, status: int, permanent: bool
) -> None:
    receiver.status = status

    with pytest.raises(DeliveryFailed) as failed:
        await HttpWebhookSender(http).post(receiver.url, SECRET, "n-1", [notification()])

    assert (failed.value.permanent, failed.value.status_code) == (permanent, status)


@pytest.mark.parametrize("secret", ["", "whsec_not base64!"])
async def test_a_missing_or_malformed_secret_is_a_permanent_failure(
    receiver: Receiver, http: OutboundHttp, secret: str
) -> None:
    with pytest.raises(DeliveryFailed) as failed:
        await HttpWebhookSender(http).post(receiver.url, secret, "n-1", [notification()])

    assert failed.value.permanent
    assert receiver.verified == [] and receiver.rejected == []


async def test_a_private_destination_is_refused_and_retryable(
    receiver: Receiver, guarded_http: OutboundHttp
) -> None:
    with pytest.raises(DeliveryFailed) as failed:
        await HttpWebhookSender(guarded_http).post(receiver.url, SECRET, "n-1", [notification()])

    assert "loopback" in str(failed.value)
    assert not failed.value.permanent
    assert receiver.verified == [] and receiver.rejected == []
