"""Signed tokens: round trip, every part tampered, another purpose, expiry, rotation, and
that nothing a client sends raises anything but InvalidSignedToken."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service_kit.signed_tokens import (
    MAX_TOKEN_LENGTH,
    BadTokenSignature,
    ExpiredSignedToken,
    InvalidSignedToken,
    seal,
    sign,
    unseal,
    verify,
)

SECRET = "current-token-secret-0123456789abcdef"
PREVIOUS = "previous-token-secret-0123456789abcdef"
DOWNLOAD = b"keel.files.download.v1"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CLAIMS: dict[str, str | int] = {"tid": "tenant-1", "fid": "file-ü/42", "size": 1_048_576}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _flip(text: str, index: int) -> str:
    replacement = "A" if text[index] != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


def test_a_token_verifies_as_the_claims_it_was_signed_with() -> None:
    token = sign(SECRET, DOWNLOAD, CLAIMS, expires_at=NOW + timedelta(minutes=5))

    assert verify(token, [SECRET], DOWNLOAD, now=NOW) == CLAIMS
    assert all(c.isalnum() or c in "-_." for c in token)
    assert len(token) < 200


def test_a_token_without_expiry_verifies_at_any_time() -> None:
    token = sign(SECRET, DOWNLOAD, CLAIMS, expires_at=None)
    far_future = NOW + timedelta(days=365 * 50)
    assert verify(token, [SECRET], DOWNLOAD, now=far_future) == CLAIMS


def test_a_token_expires_at_its_expiry() -> None:
    expires_at = NOW + timedelta(seconds=60)
    token = sign(SECRET, DOWNLOAD, CLAIMS, expires_at=expires_at)

    assert verify(token, [SECRET], DOWNLOAD, now=expires_at - timedelta(seconds=1)) == CLAIMS
    with pytest.raises(ExpiredSignedToken, match="expired"):
        verify(token, [SECRET], DOWNLOAD, now=expires_at)
    # An expired token is an invalid one for a caller that catches only that.
    with pytest.raises(InvalidSignedToken):
        verify(token, [SECRET], DOWNLOAD, now=expires_at + timedelta(days=1))


def test_a_token_for_another_purpose_is_refused() -> None:
    token = sign(SECRET, DOWNLOAD, CLAIMS, expires_at=None)
    with pytest.raises(BadTokenSignature, match="signature does not match"):
        verify(token, [SECRET], b"keel.files.upload.v1", now=NOW)
    with pytest.raises(BadTokenSignature):
        unseal(seal(SECRET, DOWNLOAD, "u1.abc"), [SECRET], b"keel.notifications.v1")


def test_every_part_tampered_is_refused() -> None:
    token = sign(SECRET, DOWNLOAD, CLAIMS, expires_at=NOW + timedelta(minutes=5))
    version, payload, mac = token.split(".")
    forged_claims = _b64(b'{"fid":"file-other","size":1048576,"tid":"tenant-1"}')
    tampered = [
        f"s2.{payload}.{mac}",
        f"{version}.{forged_claims}.{mac}",
        f"{version}.{_flip(payload, 3)}.{mac}",
        f"{version}.{payload}.{_flip(mac, 0)}",
        f"{version}.{payload}.{_flip(mac, len(mac) - 1)}",
        f"{version}.{payload}.{mac}A",
        f"{version}.{payload}.{mac[:-1]}",
        f"{version}.{payload}.{payload}.{mac}",
    ]
    for forged in tampered:
        with pytest.raises(BadTokenSignature):
            verify(forged, [SECRET], DOWNLOAD, now=NOW)


def test_a_longer_expiry_cannot_be_written_in() -> None:
    token = sign(SECRET, DOWNLOAD, {"fid": "f"}, expires_at=NOW)
    version, _, mac = token.split(".")
    extended = _b64(b'{"exp":4102444800,"fid":"f"}')
    with pytest.raises(BadTokenSignature):
        verify(f"{version}.{extended}.{mac}", [SECRET], DOWNLOAD, now=NOW)


def test_a_token_of_the_previous_secret_is_accepted_during_rotation() -> None:
    token = sign(PREVIOUS, DOWNLOAD, CLAIMS, expires_at=None)

    assert verify(token, [SECRET, PREVIOUS], DOWNLOAD, now=NOW) == CLAIMS
    assert verify(token, ["", PREVIOUS], DOWNLOAD, now=NOW) == CLAIMS
    with pytest.raises(BadTokenSignature):
        verify(token, [SECRET], DOWNLOAD, now=NOW)


def test_a_jwt_or_a_mac_with_the_raw_secret_does_not_pass() -> None:
    client_token = jwt.encode({"sub": "u-1", "tid": "tenant-1"}, SECRET, algorithm="HS256")
    with pytest.raises(BadTokenSignature):
        verify(client_token, [SECRET], DOWNLOAD, now=NOW)
    genuine = sign(SECRET, DOWNLOAD, CLAIMS, expires_at=None)
    body = genuine.rpartition(".")[0]
    raw = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()
    with pytest.raises(BadTokenSignature):
        verify(f"{body}.{_b64(raw)}", [SECRET], DOWNLOAD, now=NOW)


def test_a_sealed_body_is_signed_with_the_key_derived_for_its_purpose() -> None:
    # The format unsubscribe links already sent by email rely on: <body>.<mac>, the mac
    # being HMAC-SHA256(HMAC-SHA256(secret, purpose), body) in base64url.
    key = hmac.new(SECRET.encode(), DOWNLOAD, hashlib.sha256).digest()
    expected_mac = _b64(hmac.new(key, b"u1.eyJhIjoxfQ", hashlib.sha256).digest())

    token = seal(SECRET, DOWNLOAD, "u1.eyJhIjoxfQ")

    assert token == f"u1.eyJhIjoxfQ.{expected_mac}"
    assert unseal(token, [SECRET], DOWNLOAD) == "u1.eyJhIjoxfQ"


def test_a_sealed_body_is_not_a_token_with_claims() -> None:
    token = seal(SECRET, DOWNLOAD, "u1." + _b64(b'{"fid":"f"}'))
    with pytest.raises(InvalidSignedToken, match="unknown format"):
        verify(token, [SECRET], DOWNLOAD, now=NOW)
    for body in ("s1." + _b64(b'["f"]'), "s1." + _b64(b'{"fid":true}'), "s1.not-json"):
        with pytest.raises(InvalidSignedToken, match="malformed claims"):
            verify(seal(SECRET, DOWNLOAD, body), [SECRET], DOWNLOAD, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "s1",
        "s1.",
        "s1..mac",
        ".payload.mac",
        "s1.payload.",
        "s1.pay load.mac",
        "s1.päyload.mac",
        "s1.payload.mac=",
        "s1/payload/mac",
        "s1." + "a" * MAX_TOKEN_LENGTH + ".b",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidSignedToken):
        verify(token, [SECRET], DOWNLOAD, now=NOW)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.text(alphabet="abcXYZ019-_.=", max_size=300),
        st.binary(max_size=200).map(lambda raw: "s1." + _b64(raw) + "." + _b64(raw[:32])),
        # Genuinely signed, so what is checked after the signature is reached too.
        st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)).map(
            lambda raw: seal(SECRET, DOWNLOAD, "s1." + _b64(raw)) if raw else "s1"
        ),
    )
)
def test_nothing_a_client_sends_raises_anything_but_invalid_signed_token(token: str) -> None:
    try:
        verify(token, [SECRET, PREVIOUS], DOWNLOAD, now=NOW)
    except InvalidSignedToken:
        pass


def test_configuration_errors_are_not_bad_tokens() -> None:
    token = sign(SECRET, DOWNLOAD, CLAIMS, expires_at=None)
    with pytest.raises(ValueError, match="secret"):
        verify(token, ["", ""], DOWNLOAD, now=NOW)
    with pytest.raises(ValueError, match="secret"):
        sign("", DOWNLOAD, CLAIMS, expires_at=None)
    with pytest.raises(ValueError, match="purpose"):
        sign(SECRET, b"", CLAIMS, expires_at=None)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(token, [SECRET], DOWNLOAD, now=datetime(2026, 11, 30, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(SECRET, DOWNLOAD, CLAIMS, expires_at=datetime(2026, 11, 30, 12, 0))


@pytest.mark.parametrize(
    "claims",
    [{"exp": 5}, {"admin": True}, {"x": 1.5}, {"x": None}, {"x": ["a"]}, {"x": "y" * 3000}],
)
def test_claims_that_cannot_be_signed_are_refused(claims: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        sign(SECRET, DOWNLOAD, claims, expires_at=None)  # type: ignore[arg-type]
