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
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from service_kit.errors import Unauthenticated

ISSUER = "keel"
AUDIENCE = "keel.bridge"
_ALGORITHM = "HS256"


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
                expires_at=datetime.fromtimestamp(claims["exp"], UTC),
                issued_at=datetime.fromtimestamp(claims["iat"], UTC),
            )
        raise InvalidClientToken("client token signature does not verify") from last_error
