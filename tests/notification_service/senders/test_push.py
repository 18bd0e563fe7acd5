"""Web Push: VAPID keys, subscription checks, and WebPushSender against a local push
service (aiohttp on 127.0.0.1) that does what a browser vendor's does: checks the
VAPID JWT (ES256 signature by the ``k=`` key, ``aud`` = its origin, ``exp`` in the
future, ``sub``) and — playing the browser — decrypts each message with the
subscription's private key (RFC 8291, ``http_ece``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from notification_service.senders import base64url
from notification_service.senders.base import (
    DeliveryFailed,
    PushTarget,
    SubscriptionGone,
    VapidKeys,
)
from notification_service.senders.push import (
    VAPID_TOKEN_SECONDS,
    WebPushSender,
    check_subscription,
    generate_vapid_keys,
)
from service_kit.outbound import OutboundHttp
from tests.notification_service.senders.conftest import http_server, notification

SUBJECT = "mailto:ops@example.com"

# -- keys and subscriptions -------------------------------------------------------------


def test_vapid_keys_are_a_p256_pair_in_the_forms_browsers_and_servers_use() -> None:
    keys = generate_vapid_keys(SUBJECT)

    private = serialization.load_pem_private_key(keys.private_pem.encode(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp256r1"
    assert keys.private_pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert "=" not in keys.public_key
    point = base64url.decode(keys.public_key)
    assert len(point) == 65 and point[0] == 4
    assert point == private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert keys.subject == SUBJECT
    assert generate_vapid_keys(SUBJECT).public_key != keys.public_key


@dataclass
class Browser:
    """A browser's side of a subscription: its key pair and auth secret."""

    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def p256dh(self) -> str:
        return base64url.encode(
            self.private_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )

    def target(self, endpoint: str) -> PushTarget:
        return PushTarget(endpoint, self.p256dh, base64url.encode(self.auth))

    def decrypt(self, body: bytes) -> bytes:
        return bytes(
            http_ece.decrypt(
                body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
            )
        )


def test_a_browsers_subscription_passes_the_check() -> None:
    browser = Browser()
    target = browser.target("https://fcm.googleapis.com/fcm/send/abc")
    assert check_subscription(target.endpoint, target.p256dh, target.auth) == []
    padded = target.p256dh + "=" * (-len(target.p256dh) % 4)
    assert check_subscription(target.endpoint, padded, target.auth) == []


def test_each_problem_of_a_subscription_is_named_with_its_field() -> None:
    browser = Browser()
    not_on_curve = base64url.encode(b"\x04" + b"\x01" * 64)
    compressed = base64url.encode(
        browser.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
    )
    cases = {
        ("ftp://push.example/x", browser.p256dh, base64url.encode(browser.auth)): ["endpoint"],
        ("https:///x", browser.p256dh, base64url.encode(browser.auth)): ["endpoint"],
        ("https://push.example/x", not_on_curve, base64url.encode(browser.auth)): ["p256dh"],
        ("https://push.example/x", compressed, base64url.encode(browser.auth)): ["p256dh"],
        ("https://push.example/x", "not base64!", base64url.encode(browser.auth)): ["p256dh"],
        ("https://push.example/x", browser.p256dh, base64url.encode(b"short")): ["auth"],
        ("https://push.example/x", browser.p256dh, "***"): ["auth"],
        ("", "", ""): ["endpoint", "p256dh", "auth"],
    }
    for (endpoint, p256dh, auth), fields in cases.items():
        problems = check_subscription(endpoint, p256dh, auth)
        assert [p.partition(": ")[0] for p in problems] == fields, (endpoint, p256dh, auth)
        assert all(p.partition(": ")[2] for p in problems)


# -- a push service ---------------------------------------------------------------------


@dataclass
class Delivery:
    """A message the push service took: its headers, JWT claims and plaintext."""

    path: str
    headers: dict[str, str]
    claims: dict[str, Any]
    public_key: str
    payload: dict[str, Any]


@dataclass
class PushService:
    """Subscriptions by path; answers 201 (or ``answers[path]``) to a message that
    passes every check, 400 saying what failed otherwise."""

    browsers: dict[str, Browser] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    delivered: list[Delivery] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    origin: str = ""

    def subscribe(self, path: str) -> PushTarget:
        browser = self.browsers[path] = Browser()
        return browser.target(self.origin + path)

    async def handle(self, request: web.Request) -> web.Response:
        if request.path in self.answers:
            return web.Response(status=self.answers[request.path], text="gone or failing")
        try:
            delivery = self._check(request, await request.read())
        except Exception as exc:  # said back, so the test's failure names it
            return web.Response(status=400, text=f"{type(exc).__name__}: {exc}")
        self.delivered.append(delivery)
        return web.Response(status=201)

    def _check(self, request: web.Request, body: bytes) -> Delivery:
        self.sizes.append(len(body))
        assert request.headers["Content-Encoding"] == "aes128gcm"
        assert int(request.headers["TTL"]) >= 0
        assert request.headers["Urgency"] == "normal"
        scheme, _, params = request.headers["Authorization"].partition(" ")
        assert scheme == "vapid"
        fields = dict(part.strip().split("=", 1) for part in params.split(","))
        public = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), base64url.decode(fields["k"])
        )
        claims = jwt.decode(
            fields["t"],
            public,
            algorithms=["ES256"],
            audience=self.origin,
            options={"require": ["aud", "exp", "sub"]},
        )
        assert claims["exp"] <= time.time() + 24 * 3600
        header = jwt.get_unverified_header(fields["t"])
        assert header["typ"] == "JWT" and header["alg"] == "ES256"
        payload = json.loads(self.browsers[request.path].decrypt(body))
        return Delivery(request.path, dict(request.headers), claims, fields["k"], payload)


@pytest.fixture
async def push_service() -> AsyncIterator[PushService]:
    service = PushService()
    async with http_server(service.handle) as origin:
        service.origin = origin
        yield service


@pytest.fixture
def vapid() -> VapidKeys:
    return generate_vapid_keys(SUBJECT)


# -- sending ----------------------------------------------------------------------------


async def test_a_push_arrives_decryptable_by_the_browser_with_a_valid_vapid_jwt(
    push_service: PushService, http: OutboundHttp, vapid: VapidKeys
) -> None:
    target = push_service.subscribe("/push/one")
    item = notification(7)

    status = await WebPushSender(http).send(target, [item], vapid, ttl_seconds=600)

    assert status == 201
    [delivery] = push_service.delivered
    assert delivery.payload == {
        "id": item.id,
        "user_id": "u-1",
        "category": "mention",
        "title": "Ada mentioned you (7)",
        "body": "in #team: look at this, number 7",
        "data": {"url": "https://chat.example.com/team/42", "n": 7},
        "create_time": "2026-11-30T10:07:45.123456Z",
        "channel_id": "c-team",
    }
    assert delivery.headers["TTL"] == "600"
    assert delivery.public_key == vapid.public_key
    assert delivery.claims["sub"] == SUBJECT
    assert delivery.claims["aud"] == push_service.origin
    assert delivery.claims["exp"] > time.time() + VAPID_TOKEN_SECONDS - 3600


async def test_a_digest_push_says_how_many_and_carries_each(
    push_service: PushService, http: OutboundHttp, vapid: VapidKeys
) -> None:
    target = push_service.subscribe("/push/digest")
    items = [notification(n) for n in (1, 2, 3)]

    await WebPushSender(http).send(target, items, vapid)

    payload = push_service.delivered[0].payload
    assert payload["digest"] is True
    assert payload["count"] == 3
    assert payload["category"] == "mention"
    assert payload["title"] == "3 new mention notifications"
    assert [entry["id"] for entry in payload["items"]] == [item.id for item in items]


async def test_a_large_notification_is_cut_to_fit_what_push_services_accept(
    push_service: PushService, http: OutboundHttp, vapid: VapidKeys
) -> None:
    target = push_service.subscribe("/push/large")
    item = notification(1, body="é" * 60000, data={"blob": "x" * 60000})

    await WebPushSender(http).send(target, [item], vapid)

    assert push_service.sizes[0] <= 4096
    payload = push_service.delivered[0].payload
    assert payload["truncated"] is True
    assert payload["id"] == item.id and payload["data"] == {}
    assert payload["body"].startswith("é" * 100)


async def test_every_browser_gets_its_own_encryption(
    push_service: PushService, http: OutboundHttp, vapid: VapidKeys
) -> None:
    sender = WebPushSender(http)
    item = notification(1)
    for path in ("/push/a", "/push/b"):
        await sender.send(push_service.subscribe(path), [item], vapid)
    assert [d.payload["id"] for d in push_service.delivered] == [item.id, item.id]


@pytest.mark.parametrize("status", [404, 410])
async def test_a_gone_subscription_says_so(
    push_service: PushService, http: OutboundHttp, vapid: VapidKeys, status: int
) -> None:
    target = push_service.subscribe("/push/gone")
    push_service.answers["/push/gone"] = status

    with pytest.raises(SubscriptionGone) as gone:
        await WebPushSender(http).send(target, [notification()], vapid)

    assert gone.value.permanent and gone.value.status_code == status


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(400, True), (403, True), (413, True), (429, False), (500, False), (503, False)],
)
async def test_other_refusals_are_permanent_or_retryable_by_status(
    push_service: PushService, http: OutboundHttp, vapid: VapidKeys, status: int, permanent: bool
) -> None:
    target = push_service.subscribe("/push/failing")
    push_service.answers["/push/failing"] = status

    with pytest.raises(DeliveryFailed) as failed:
        await WebPushSender(http).send(target, [notification()], vapid)

    assert not isinstance(failed.value, SubscriptionGone)
    assert (failed.value.permanent, failed.value.status_code) == (permanent, status)
    assert "gone or failing" in str(failed.value)


async def test_a_push_service_at_a_private_address_is_refused_by_the_outbound_guard(
    push_service: PushService, guarded_http: OutboundHttp, vapid: VapidKeys
) -> None:
    target = push_service.subscribe("/push/private")

    with pytest.raises(DeliveryFailed) as failed:
        await WebPushSender(guarded_http).send(target, [notification()], vapid)

    assert "loopback" in str(failed.value)
    assert failed.value.status_code == 0
    assert push_service.sizes == []


async def test_an_unusable_subscription_is_a_permanent_failure(
    push_service: PushService, http: OutboundHttp, vapid: VapidKeys
) -> None:
    target = PushTarget(push_service.origin + "/push/x", "bm90IGEga2V5", "c2hvcnQ")

    with pytest.raises(DeliveryFailed) as failed:
        await WebPushSender(http).send(target, [notification()], vapid)

    assert failed.value.permanent
    assert push_service.sizes == []
