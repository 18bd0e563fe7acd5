from __future__ import annotations

import time
from collections.abc import Callable
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


def _signed(claims: dict[str, object], secret: str = SECRET, **headers: object) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers or None)


_NOW = int(time.time())
_GOOD: dict[str, object] = {
    "iss": "keel",
    "aud": AUDIENCE,
    "sub": "alice",
    "tid": "tenant-1",
    "iat": _NOW - 5,
    "exp": _NOW + 600,
    "jti": "j",
}


@pytest.mark.parametrize(
    "token",
    [
        _signed(_GOOD),
        _signed(_GOOD, OTHER),  # the previous secret
        _signed({k: v for k, v in _GOOD.items() if k != "jti"}),
        _signed(_GOOD | {"exp": _NOW - 1}),  # expired
        _signed(_GOOD | {"exp": _NOW}),  # expires this second
        _signed(_GOOD | {"iat": _NOW + 600}),  # issued in the future
        _signed(_GOOD | {"exp": float(_NOW + 600)}),
        _signed(_GOOD | {"exp": True}),
        _signed(_GOOD | {"iat": "1"}),
        _signed(_GOOD | {"aud": [AUDIENCE, "other"]}),
        _signed(_GOOD | {"aud": "other"}),
        _signed(_GOOD | {"iss": "not-keel"}),
        _signed(_GOOD | {"sub": 7}),
        _signed(_GOOD | {"sub": ""}),
        _signed(_GOOD | {"tid": 7}),
        _signed(_GOOD | {"jti": 7}),
        _signed(_GOOD | {"nbf": _NOW + 600}),
        _signed(_GOOD | {"extra": "x"}),
        _signed({k: v for k, v in _GOOD.items() if k != "tid"}),
        _signed(_GOOD, kid="k1"),
        _signed(_GOOD, typ="at+jwt"),
        _signed(_GOOD, "x" * 32),  # no secret of ours
        jwt.encode(_GOOD, SECRET * 2, algorithm="HS512"),
        jwt.encode(_GOOD, "", algorithm="none"),
        _signed(_GOOD) + "=",
        _signed(_GOOD) + ".x",
        "." + _signed(_GOOD),
        "a.b.c",
        "",
    ],
)
def test_the_fast_check_answers_what_pyjwt_answers(token: str) -> None:
    """Verification skips PyJWT for a well-formed, valid token: for every token, valid or
    not, the answer (claims, or the refusal's words) is PyJWT's."""
    tokens = ClientTokens(SECRET, previous=OTHER)

    def outcome(verify: Callable[[str], object]) -> object:
        try:
            return verify(token)
        except InvalidClientToken as exc:
            return exc.message

    assert outcome(tokens.verify) == outcome(tokens._verified_by_pyjwt)


def test_a_valid_token_is_checked_without_pyjwt(monkeypatch: pytest.MonkeyPatch) -> None:
    token, _ = ClientTokens(SECRET).issue("tenant-1", "alice", 600)

    def no_pyjwt(*args: object, **kwargs: object) -> object:
        raise AssertionError("PyJWT was asked")

    monkeypatch.setattr(jwt, "decode", no_pyjwt)
    assert ClientTokens(SECRET).verify(token).user_id == "alice"
