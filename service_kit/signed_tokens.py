"""Signed tokens: the one HMAC scheme for every capability Keel puts in a URL.

An unsubscribe link, a download URL, an upload token: each is a few claims that Keel
signs and later accepts from whoever presents them, without looking anything up. This
module signs and checks them; what the claims mean is the caller's business.

Format: ``<body>.<mac>``, all in the base64url alphabet (no padding) and dots, so a
token needs no escaping in a URL. ``mac`` is base64url of HMAC-SHA256 over ``body``
with a key derived from the secret and a *purpose* label (``HMAC-SHA256(secret,
purpose)``), so a token made for one purpose never verifies for another, and nothing
else signed with the same secret (such as a client token, an HS256 JWT signed with the
secret itself) passes for a signed token. Signatures are compared as text in constant
time; there is exactly one way to write a valid one.

Two layers:

* :func:`sign` / :func:`verify`: claims (text or integer values) and an optional expiry.
  The body is ``s1.<payload>``, ``payload`` being base64url of the claims as compact JSON
  with the expiry, if any, as ``exp`` (Unix seconds). A token expires at ``exp`` itself.
* :func:`seal` / :func:`unseal`: a body the caller encodes itself, for formats older than
  this module (unsubscribe links, ``u1.<payload>``, whose emails must keep working).

Rotation: :func:`verify` and :func:`unseal` take several secrets (the current
``KEEL_TOKEN_SECRET``, then ``KEEL_TOKEN_SECRET_PREVIOUS``; empty ones are skipped) and
accept a token any of them signed.

Exception tree (plain exceptions, not :class:`service_kit.errors.KeelError`: a token
arrives in a URL, and what a bad one means is the receiver's call — the file service's
HTTP layer answers 403, unsubscribe answers with its own ``InvalidUnsubscribeToken``)::

    InvalidSignedToken          not a token this scheme made (malformed, too long, …)
     ├── BadTokenSignature      well-formed, but no given secret signed it for this purpose
     └── ExpiredSignedToken     genuine, but past its expiry

Nothing a client sends makes :func:`verify` or :func:`unseal` raise anything else; a
missing secret or purpose is a configuration error (``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

#: The longest token accepted (and made): a URL stays well under common limits.
MAX_TOKEN_LENGTH: Final = 2048
_FORMAT: Final = "s1"
_EXPIRY_CLAIM: Final = "exp"
# Dot-separated runs of the base64url alphabet; the last run is the signature.
_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")

Claims = Mapping[str, str | int]


class InvalidSignedToken(Exception):
    """A token that is not one Keel made for this purpose; ``reason`` says why, in words
    safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadTokenSignature(InvalidSignedToken):
    """A well-formed token whose signature none of the secrets made for this purpose:
    altered, forged, made for another purpose, or signed with a retired secret."""

    def __init__(self) -> None:
        super().__init__("the token's signature does not match")


class ExpiredSignedToken(InvalidSignedToken):
    """A genuine token whose expiry has passed."""

    def __init__(self) -> None:
        super().__init__("the token has expired")


def sign(secret: str, purpose: bytes, claims: Claims, *, expires_at: datetime | None) -> str:
    """A token carrying ``claims``, signed with ``secret`` for ``purpose``, that
    :func:`verify` accepts until ``expires_at`` (timezone-aware; truncated to the second
    before it) or forever when it is None. Claim values are text or integers (not
    booleans); ``exp`` is reserved. Raises ValueError for a missing secret or purpose,
    bad claims, or a token longer than :data:`MAX_TOKEN_LENGTH`."""
    document: dict[str, str | int] = dict(claims)
    if _EXPIRY_CLAIM in document:
        raise ValueError(f"the claim {_EXPIRY_CLAIM!r} is reserved for the expiry")
    if not _valid_claims(document):
        raise ValueError("claims must map text to text or integers")
    if expires_at is not None:
        document[_EXPIRY_CLAIM] = math.floor(_aware(expires_at, "expires_at").timestamp())
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return seal(secret, purpose, f"{_FORMAT}.{_encode(text.encode())}")


def verify(
    token: str, secrets: Sequence[str], purpose: bytes, *, now: datetime
) -> dict[str, str | int]:
    """The claims :func:`sign` put in ``token``, when one of ``secrets`` signed it for
    ``purpose`` and it has not expired at ``now`` (timezone-aware); the expiry is not
    among them. Raises :class:`InvalidSignedToken` (or its :class:`BadTokenSignature`,
    :class:`ExpiredSignedToken`) saying why not; ValueError when no secret is given."""
    moment = _aware(now, "now").timestamp()
    body = unseal(token, secrets, purpose)
    version, _, payload = body.partition(".")
    if version != _FORMAT or "." in payload:
        raise InvalidSignedToken("not a token of this kind (unknown format)")
    claims = _decode_claims(payload)
    expiry = claims.pop(_EXPIRY_CLAIM, None)
    if isinstance(expiry, str):
        raise InvalidSignedToken("malformed claims")
    if expiry is not None and moment >= expiry:
        raise ExpiredSignedToken()
    return claims


def seal(secret: str, purpose: bytes, body: str) -> str:
    """``body`` with its signature appended: ``<body>.<mac>``. ``body`` is made of
    base64url runs joined by dots (such as ``u1.<payload>``). Raises ValueError for a
    missing secret or purpose, another body, or a token longer than
    :data:`MAX_TOKEN_LENGTH`."""
    if not secret:
        raise ValueError("signing a token needs a secret")
    token = f"{body}.{_mac(_key(secret, purpose), body)}"
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
        raise ValueError("a token body is base64url runs joined by dots, and short")
    return token


def unseal(token: str, secrets: Sequence[str], purpose: bytes) -> str:
    """The body of ``token`` when one of ``secrets`` (empty ones skipped) sealed it for
    ``purpose``. Raises :class:`InvalidSignedToken` for a malformed token,
    :class:`BadTokenSignature` for a wrong signature; ValueError when no secret is
    given."""
    keys = [_key(secret, purpose) for secret in secrets if secret]
    if not keys:
        raise ValueError("verifying a token needs a secret")
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
        raise InvalidSignedToken("malformed")
    body, _, mac_text = token.rpartition(".")
    # Every key is tried, so the time taken does not say which secret almost matched.
    matches = [hmac.compare_digest(mac_text, _mac(key, body)) for key in keys]
    if not any(matches):
        raise BadTokenSignature()
    return body


def _decode_claims(payload: str) -> dict[str, str | int]:
    """The claims in a payload whose signature was checked."""
    try:
        document = json.loads(_decode(payload))
    except (ValueError, RecursionError):
        raise InvalidSignedToken("malformed claims") from None
    if not isinstance(document, dict) or not _valid_claims(document):
        raise InvalidSignedToken("malformed claims")
    return document


def _valid_claims(document: Mapping[Any, object]) -> bool:
    """Whether every key is text and every value text or an integer (booleans are not)."""
    return all(
        isinstance(key, str) and isinstance(value, str | int) and not isinstance(value, bool)
        for key, value in document.items()
    )


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment


def _key(secret: str, purpose: bytes) -> bytes:
    """The HMAC key for ``purpose``: unrelated to the key of any other purpose and to
    the secret itself."""
    if not purpose:
        raise ValueError("a signed token needs a purpose")
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


def _mac(key: bytes, body: str) -> str:
    return _encode(hmac.new(key, body.encode("ascii"), hashlib.sha256).digest())


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    """The bytes of unpadded base64url ``text`` (its alphabet was checked already)."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
