from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from service_kit.client_tokens import AUDIENCE, ClientTokens, InvalidClientToken

SECRET = "s" * 32
OTHER = "o" * 32


def test_a_token_names_tenant_user_and_expiry() -> None:
    tokens = ClientTokens(SECRET)
    token, expires = tokens.issue("tenant-1", "alice", 600)
    claims = tokens.verify(token)
    assert (claims.tenant_id, claims.user_id) == ("tenant-1", "alice")
    assert claims.expires_at == expires
    assert timedelta(seconds=590) < expires - datetime.now(UTC) <= timedelta(seconds=600)


def test_expired_tokens_say_so() -> None:
    past = ClientTokens(SECRET, clock=lambda: datetime.now(UTC) - timedelta(hours=2))
    token, _ = past.issue("t", "alice", 60)
    with pytest.raises(InvalidClientToken) as caught:
        ClientTokens(SECRET).verify(token)
    assert caught.value.message == "client token expired"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        jwt.encode({"sub": "a", "tid": "t", "exp": 9999999999, "iat": 1}, SECRET),  # no aud/iss
        jwt.encode(
            {"aud": AUDIENCE, "iss": "keel", "sub": "a", "tid": "t", "exp": 9999999999, "iat": 1},
            OTHER,
            algorithm="HS256",
        ),
        jwt.encode(
            {"aud": AUDIENCE, "iss": "keel", "sub": "a", "tid": "t", "exp": 9999999999, "iat": 1},
            SECRET * 2,
            algorithm="HS512",
        ),
    ],
)
def test_forged_or_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidClientToken):
        ClientTokens(SECRET).verify(token)


def test_tampering_with_the_payload_breaks_the_signature() -> None:
    token, _ = ClientTokens(SECRET).issue("tenant-a", "alice", 60)
    header, payload, signature = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b"tenant-a", b"tenant-b")
    ).decode()
    with pytest.raises(InvalidClientToken):
        ClientTokens(SECRET).verify(f"{header}.{forged_payload}.{signature}")


def test_rotation_keeps_tokens_of_the_previous_secret_valid() -> None:
    old_token, _ = ClientTokens(OTHER).issue("t", "alice", 60)
    rotated = ClientTokens(SECRET, previous=OTHER)
    assert rotated.verify(old_token).user_id == "alice"
    new_token, _ = rotated.issue("t", "bob", 60)
    with pytest.raises(InvalidClientToken):
        ClientTokens(OTHER).verify(new_token)
