"""Client tokens: short-lived JWTs that let a user's browser reach Keel directly.

A tenant's backend asks ``ChannelService.IssueClientToken`` for a user it has
authenticated; the browser hands the token to the bridge (to open a WebSocket) and to
the file service's HTTP endpoints (tus uploads, downloads), which verify it here. It
lives in the kit so that every service can verify it without importing another. Tokens
are HS256-signed with ``KEEL_TOKEN_SECRET``; a token signed with
``KEEL_TOKEN_SECRET_PREVIOUS`` is still accepted, so the secret can be rotated without
cutting browsers off.

Claims: ``iss`` = ``keel``, ``aud`` = ``keel.bridge`` (kept for every receiver, so
tokens already issued stay valid), ``sub`` = the user id, ``tid`` = the tenant id,
``iat``, ``exp``, ``jti``.

Verifying is on the path of every browser connection, so a token of exactly the shape
:meth:`ClientTokens.issue` makes, signed by one of the secrets and valid now, is checked
with the standard library alone (about a tenth of PyJWT's time); anything else — another
shape, a bad signature, an expiry passed — goes through PyJWT, which decides and words
the refusal. The fast path accepts only what PyJWT would accept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import jwt
from jwt.algorithms import HMACAlgorithm

from service_kit.errors import Unauthenticated

ISSUER = "keel"
AUDIENCE = "keel.bridge"
_ALGORITHM = "HS256"

#: One part of a token as :meth:`ClientTokens.issue` writes it: base64url, no padding.
_PART: Final = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_KEYS: Final = frozenset({"alg", "typ"})
_CLAIM_KEYS: Final = frozenset({"iss", "aud", "sub", "tid", "iat", "exp", "jti"})


class InvalidClientToken(Unauthenticated):
    """A client token is forged, expired, malformed or for another tenant."""


@dataclass(frozen=True, slots=True)
class ClientClaims:
    """What a verified client token says."""

    tenant_id: str
    user_id: str
    expires_at: datetime
    issued_at: datetime


class ClientTokens:
    """Issues and verifies client tokens with the configured secrets."""

    def __init__(
        self,
        secret: str,
        *,
        previous: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._secret = secret
        self._secrets = [secret] + ([previous] if previous else [])
        self._clock = clock
        # The HMAC keys of the fast path: PyJWT's own preparation, which refuses a secret
        # that looks like a public key (PyJWT then refuses every token, and so do we).
        self._keys: list[bytes] = []
        for each in self._secrets:
            try:
                self._keys.append(HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(each))
            except jwt.PyJWTError:
                self._keys = []
                break

    def issue(self, tenant_id: str, user_id: str, ttl_seconds: int) -> tuple[str, datetime]:
        """A token for ``user_id`` of ``tenant_id`` valid ``ttl_seconds``; and its expiry."""
        now = self._clock().replace(microsecond=0)
        expires = now + timedelta(seconds=ttl_seconds)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "tid": tenant_id,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM), expires

    def verify(self, token: str) -> ClientClaims:
        """The claims of a valid token; raises ``InvalidClientToken`` saying what is wrong.

        The message distinguishes an expired token (``"client token expired"``)
        from any other problem, so clients know to fetch a new one.
        """
        fast = self._verified_fast(token)
        return fast if fast is not None else self._verified_by_pyjwt(token)

    def _verified_by_pyjwt(self, token: str) -> ClientClaims:
        """:meth:`verify` by PyJWT alone: the reference, and the words of every refusal."""
        last_error: Exception | None = None
        for secret in self._secrets:
            try:
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=[_ALGORITHM],
                    audience=AUDIENCE,
                    issuer=ISSUER,
                    options={"require": ["exp", "sub", "tid", "iat"]},
                    leeway=0,
                )
            except jwt.ExpiredSignatureError as exc:
                raise InvalidClientToken("client token expired") from exc
            except jwt.InvalidSignatureError as exc:
                last_error = exc
                continue
            except jwt.PyJWTError as exc:
                raise InvalidClientToken(f"malformed client token: {exc}") from exc
            return ClientClaims(
                tenant_id=str(claims["tid"]),
                user_id=str(claims["sub"]),
                # PyJWT checked both are integers, or text or numbers that int() takes.
                expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
                issued_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
            )
        raise InvalidClientToken("client token signature does not verify") from last_error

    def _verified_fast(self, token: str) -> ClientClaims | None:
        """The claims of ``token`` when it has exactly the shape :meth:`issue` gives (an
        HS256 header, these claims with these types), one of the secrets signed it, and it
        is valid now (the clock PyJWT reads); None for anything else, which PyJWT then
        checks. Each condition is one PyJWT checks, or narrower."""
        header_part, _, rest = token.partition(".")
        payload_part, _, signature_part = rest.partition(".")
        if not (
            _PART.fullmatch(header_part)
            and _PART.fullmatch(payload_part)
            and _PART.fullmatch(signature_part)
        ):
            return None
        try:
            signature = _base64url(signature_part)
            header = json.loads(_base64url(header_part))
            claims = json.loads(_base64url(payload_part))
        except (binascii.Error, ValueError):
            return None
        signed = f"{header_part}.{payload_part}".encode("ascii")
        if not any(
            hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), signature)
            for key in self._keys
        ):
            return None
        if not (
            type(header) is dict
            and header.keys() <= _HEADER_KEYS
            and header.get("alg") == _ALGORITHM
            and header.get("typ", "JWT") == "JWT"
            and type(claims) is dict
            and claims.keys() <= _CLAIM_KEYS
        ):
            return None
        expires, issued = claims.get("exp"), claims.get("iat")
        user_id, tenant_id = claims.get("sub"), claims.get("tid")
        if not (
            type(expires) is int
            and type(issued) is int
            and type(user_id) is str
            and type(tenant_id) is str
            and claims.get("iss") == ISSUER
            and claims.get("aud") == AUDIENCE
            and type(claims.get("jti", "")) is str
        ):
            return None
        now = time.time()
        if expires <= now or issued > now:
            return None
        return ClientClaims(
            tenant_id=tenant_id,
            user_id=user_id,
            expires_at=datetime.fromtimestamp(expires, UTC),
            issued_at=datetime.fromtimestamp(issued, UTC),
        )


def _base64url(part: str) -> bytes:
    """``part`` decoded as PyJWT decodes it (base64url, padding added)."""
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
