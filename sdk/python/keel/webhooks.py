"""Signing and verifying Keel webhooks (the Standard Webhooks scheme).

Receivers use :func:`verify`; Keel's dispatcher uses :func:`sign`. Headers:

- ``webhook-id``: the event id, the same on every attempt (deduplicate by it);
- ``webhook-timestamp``: seconds since the epoch when this attempt was signed;
- ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` signatures of
  ``"{id}.{timestamp}.{body}"``, one per active secret (two during a rotation).

Secrets look like ``whsec_<base64>``; the HMAC key is the base64-decoded part.
This module needs nothing outside Python's standard library::

    from keel.webhooks import verify, WebhookVerificationError

    payload = verify(secret, request.headers, request.body)  # raises on a bad request
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["WebhookVerificationError", "new_secret", "sign", "verify"]

_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh Keel webhook."""


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` + base64 of 32 random bytes."""
    return _PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    encoded = secret[len(_PREFIX) :] if secret.startswith(_PREFIX) else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        raise WebhookVerificationError("the secret is not whsec_<base64>") from exc


def _signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,`` signature per secret."""
    return " ".join(
        "v1," + _signature(_key(secret), message_id, timestamp, body) for secret in secrets
    )


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> Any:
    """Check a webhook request and return its JSON payload.

    ``headers`` may use any capitalisation. Raises
    :class:`WebhookVerificationError` when a header is missing, the timestamp
    is more than ``tolerance`` seconds away from now, or no signature matches
    ``secret`` (the body must be exactly the bytes received).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp_text = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or too new")
    raw = body.encode() if isinstance(body, str) else body
    expected = _signature(_key(secret), message_id, timestamp, raw)
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return json.loads(raw)
    raise WebhookVerificationError("no signature matches the secret")
