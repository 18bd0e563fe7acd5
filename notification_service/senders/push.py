"""Web Push: VAPID keys, subscription checks, and the sender (RFC 8030, 8291, 8292).

A browser subscribes with ``pushManager.subscribe({applicationServerKey})`` using the
tenant's VAPID public key and hands over ``endpoint``, ``keys.p256dh`` and
``keys.auth`` (:func:`check_subscription` checks them). To deliver, :class:`WebPushSender`

1. renders the payload (:func:`~notification_service.senders.render.push_payload`:
   JSON, at most 3993 bytes);
2. encrypts it for the browser by RFC 8291 (``aes128gcm``, one record; a fresh ECDH
   key pair and salt per message) with ``http_ece``;
3. signs a VAPID JWT (RFC 8292: ES256, ``aud`` = the endpoint's origin, ``exp`` 12 hours
   ahead, ``sub`` = the operator's contact), reused while it has an hour left;
4. POSTs it to the endpoint through :class:`service_kit.outbound.OutboundHttp` (the
   address rule applies to push services as to webhooks) with ``Content-Encoding:
   aes128gcm``, ``TTL``, ``Urgency: normal`` and ``Authorization: vapid t=…, k=…``.

Answers: 2xx → the status; 404 or 410 → :class:`SubscriptionGone` (remove the
subscription); 408, 425, 429, 5xx, other statuses and no answer at all →
:class:`DeliveryFailed` to retry; any other 4xx (400 malformed, 401/403 a VAPID key
the subscription was not made with, 413 too large) → a permanent
:class:`DeliveryFailed`: the same request would get the same answer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from notification_service.senders import base64url, render
from notification_service.senders.base import (
    DeliveryFailed,
    NotificationContent,
    PushTarget,
    SubscriptionGone,
    VapidKeys,
)
from service_kit.outbound import OutboundError, OutboundHttp

#: How long a VAPID JWT is valid (RFC 8292 allows at most 24 hours).
VAPID_TOKEN_SECONDS: Final = 12 * 3600
#: A cached VAPID JWT is used while it has at least this long left.
_VAPID_TOKEN_MARGIN: Final = 3600
_MAX_CACHED_TOKENS: Final = 1024
_RETRYABLE_4XX: Final = frozenset({408, 425, 429})

# -- keys and subscriptions -------------------------------------------------------------


def generate_vapid_keys(subject: str) -> VapidKeys:
    """A new VAPID key pair on P-256 for the JWT ``sub`` ``subject`` (``mailto:`` or
    ``https:``)."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return VapidKeys(private_pem=pem, public_key=_public_point(private), subject=subject)


def _public_point(private: ec.EllipticCurvePrivateKey) -> str:
    return base64url.encode(
        private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def check_subscription(endpoint: str, p256dh: str, auth: str) -> list[str]:
    """What is wrong with a browser's subscription, one ``"field: problem"`` a problem
    (``field`` is ``endpoint``, ``p256dh`` or ``auth``); empty when it is usable.

    ``endpoint`` must be an http(s) URL with a host; ``p256dh`` the base64url of an
    uncompressed point on P-256 (65 bytes, first 0x04); ``auth`` the base64url of 16
    bytes.
    """
    problems: list[str] = []
    parts = urlsplit(endpoint)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problems.append("endpoint: must be an https:// URL (the subscription's endpoint)")
    try:
        _browser_key(p256dh)
    except ValueError as exc:
        problems.append(f"p256dh: {exc}")
    try:
        if len(base64url.decode(auth)) != 16:
            problems.append("auth: must be 16 bytes (base64url)")
    except ValueError:
        problems.append("auth: must be base64url")
    return problems


def _browser_key(p256dh: str) -> bytes:
    """The browser's public key as bytes; ValueError saying what is wrong."""
    try:
        point = base64url.decode(p256dh)
    except ValueError as exc:
        raise ValueError("must be base64url") from exc
    if len(point) != 65 or point[0] != 4:
        raise ValueError("must be an uncompressed P-256 point (65 bytes, base64url)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise ValueError("is not a point on the P-256 curve") from exc
    return point


# -- encryption and authorization -------------------------------------------------------


def encrypt(payload: bytes, target: PushTarget) -> bytes:
    """``payload`` encrypted for ``target`` by RFC 8291 (``aes128gcm``, one record).

    Raises ValueError when the target's keys are unusable.
    """
    browser_key = _browser_key(target.p256dh)
    auth_secret = base64url.decode(target.auth)
    if len(auth_secret) != 16:
        raise ValueError("auth: must be 16 bytes")
    return bytes(
        http_ece.encrypt(
            payload,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=browser_key,
            auth_secret=auth_secret,
            version="aes128gcm",
        )
    )


@functools.lru_cache(maxsize=256)
def _load_private_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("the VAPID private key is not a P-256 key")
    return key


def origin_of(endpoint: str) -> str:
    """``scheme://host[:port]`` of ``endpoint``: the ``aud`` of its VAPID JWT."""
    return str(URL(endpoint).origin())


class _VapidTokens:
    """VAPID JWTs, made once per (origin, key, subject) and reused until an hour before
    they expire, so a burst of pushes signs once."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], tuple[str, int]] = {}

    def authorization(self, endpoint: str, vapid: VapidKeys, now: float) -> str:
        audience = origin_of(endpoint)
        key = (audience, vapid.public_key, vapid.subject)
        cached = self._tokens.get(key)
        if cached is None or cached[1] - now < _VAPID_TOKEN_MARGIN:
            if len(self._tokens) >= _MAX_CACHED_TOKENS:
                self._tokens.clear()
            expires = int(now) + VAPID_TOKEN_SECONDS
            claims = {"aud": audience, "exp": expires, "sub": vapid.subject}
            token = jwt.encode(claims, _load_private_key(vapid.private_pem), algorithm="ES256")
            cached = self._tokens[key] = (token, expires)
        return f"vapid t={cached[0]}, k={vapid.public_key}"


# -- the sender -------------------------------------------------------------------------


class WebPushSender:
    """A :class:`~notification_service.senders.base.PushSender` (see the module's
    docstring) posting through ``http``, which it does not own (nor close)."""

    def __init__(self, http: OutboundHttp, *, urgency: str = "normal") -> None:
        self._http = http
        self._urgency = urgency
        self._tokens = _VapidTokens()

    async def send(
        self,
        target: PushTarget,
        items: Sequence[NotificationContent],
        vapid: VapidKeys,
        *,
        ttl_seconds: int = 86400,
    ) -> int:
        """Deliver ``items`` (one notification or a digest) to ``target``; the push
        service's 2xx status. Raises :class:`SubscriptionGone` or
        :class:`DeliveryFailed`."""
        try:
            body = encrypt(render.push_payload(items), target)
            authorization = self._tokens.authorization(target.endpoint, vapid, time.time())
        except ValueError as exc:
            raise DeliveryFailed(f"cannot make the push message: {exc}", permanent=True) from exc
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "aes128gcm",
            "TTL": str(max(0, ttl_seconds)),
            "Urgency": self._urgency,
            "Authorization": authorization,
        }
        try:
            response = await self._http.post(target.endpoint, body=body, headers=headers)
        except OutboundError as exc:
            raise DeliveryFailed(f"push service unreachable: {exc.message}") from exc
        status = response.status
        if 200 <= status < 300:
            return status
        said = response.body[:200].decode("utf-8", "replace").strip()
        message = f"the push service answered {status}" + (f": {said}" if said else "")
        if status in (404, 410):
            raise SubscriptionGone(message, status_code=status)
        permanent = 400 <= status < 500 and status not in _RETRYABLE_4XX
        raise DeliveryFailed(message, permanent=permanent, status_code=status)
