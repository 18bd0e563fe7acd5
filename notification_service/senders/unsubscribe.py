"""One-click unsubscribe tokens: the signed part of an email's ``List-Unsubscribe`` link.

A token names a tenant, a user and a category; following its link (RFC 8058: a POST
with ``List-Unsubscribe=One-Click``) turns that category's email off for that user.
It needs no expiry (an old email's link should still work) but carries when it was
issued.

Format: ``u1.<payload>.<mac>``, all base64url without padding, so the token needs no
escaping in a URL. ``payload`` is the JSON ``[tenant_id, user_id, category,
issued_at]``; the body ``u1.<payload>`` is sealed by :mod:`service_kit.signed_tokens`
(HMAC-SHA256 with a key derived from ``KEEL_TOKEN_SECRET`` and the purpose label
:data:`KEY_PURPOSE`), so neither a client token (an HS256 JWT signed with the secret
itself) nor any other use of the secret can pass for an unsubscribe token, or the
reverse. The format predates that module and is kept as it was, so the links of emails
already sent keep working. Tokens made with ``KEEL_TOKEN_SECRET_PREVIOUS`` are still
read, so the secret can be rotated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from notification_service.senders import base64url
from service_kit import signed_tokens
from service_kit.clock import utcnow
from service_kit.errors import FieldViolation, InvalidArgument

VERSION: Final = "u1"
#: What the HMAC key is derived for; a different label gives an unrelated key.
KEY_PURPOSE: Final = b"keel.notifications.unsubscribe.v1"
#: The path of the link on the bridge's HTTP port.
UNSUBSCRIBE_PATH: Final = "/notifications/unsubscribe"


class InvalidUnsubscribeToken(InvalidArgument):
    """The token is not one Keel made (malformed, altered, or signed with another
    secret); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"token: {reason}", [FieldViolation("token", reason)])
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UnsubscribeClaim:
    """What a genuine token says."""

    tenant_id: str
    user_id: str
    category: str
    issued_at: datetime


def make_token(
    secret: str,
    tenant_id: str,
    user_id: str,
    category: str,
    *,
    issued_at: datetime | None = None,
) -> str:
    """A token that unsubscribes ``user_id`` of ``tenant_id`` from ``category`` emails,
    signed with ``secret`` (``KEEL_TOKEN_SECRET``)."""
    if not secret:
        raise ValueError("an unsubscribe token needs a secret (KEEL_TOKEN_SECRET)")
    issued = int((issued_at or utcnow()).timestamp())
    document = [tenant_id, user_id, category, issued]
    payload = base64url.encode(
        json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    )
    return signed_tokens.seal(secret, KEY_PURPOSE, f"{VERSION}.{payload}")


def read_token(secrets: Sequence[str], token: str) -> UnsubscribeClaim:
    """The claim of ``token`` when one of ``secrets`` (the current, then the previous
    ``KEEL_TOKEN_SECRET``; empty ones are skipped) signed it. Raises
    :class:`InvalidUnsubscribeToken` saying why not."""
    if not any(secrets):
        raise ValueError("reading unsubscribe tokens needs a secret (KEEL_TOKEN_SECRET)")
    try:
        body = signed_tokens.unseal(token, secrets, KEY_PURPOSE)
    except signed_tokens.BadTokenSignature as exc:
        raise InvalidUnsubscribeToken(exc.reason) from None
    except signed_tokens.InvalidSignedToken as exc:
        raise InvalidUnsubscribeToken(f"not an unsubscribe token ({exc.reason})") from None
    version, _, payload = body.partition(".")
    if version != VERSION:
        raise InvalidUnsubscribeToken("not an unsubscribe token (unknown version)")
    if "." in payload:
        raise InvalidUnsubscribeToken("not an unsubscribe token (malformed)")
    return _claim(payload)


def _claim(payload: str) -> UnsubscribeClaim:
    """The claim of a payload whose signature was checked."""
    try:
        tenant_id, user_id, category, issued = json.loads(base64url.decode(payload))
        fields = (tenant_id, user_id, category)
        if not all(isinstance(value, str) and value for value in fields):
            raise ValueError("empty or not text")
        issued_at = datetime.fromtimestamp(int(issued), UTC)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidUnsubscribeToken(f"not an unsubscribe token ({exc})") from None
    return UnsubscribeClaim(tenant_id, user_id, category, issued_at)


def unsubscribe_url(public_base_url: str, token: str) -> str:
    """``{public_base_url}/notifications/unsubscribe?token=…``: the link of an email."""
    return f"{public_base_url.rstrip('/')}{UNSUBSCRIBE_PATH}?token={quote(token, safe='')}"
