"""One-click unsubscribe tokens: round trip, tampering, secrets (wrong, rotated), and
that no other token signed with KEEL_TOKEN_SECRET passes for one."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from notification_service.senders import base64url
from notification_service.senders.unsubscribe import (
    InvalidUnsubscribeToken,
    UnsubscribeClaim,
    make_token,
    read_token,
    unsubscribe_url,
)

SECRET = "current-token-secret-0123456789abcdef"
PREVIOUS = "previous-token-secret-0123456789abcdef"
ISSUED = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def test_a_token_reads_back_as_what_it_was_made_for() -> None:
    token = make_token(SECRET, "tenant-1", "user-ü/1", "billing", issued_at=ISSUED)

    assert read_token([SECRET], token) == UnsubscribeClaim(
        "tenant-1", "user-ü/1", "billing", ISSUED
    )
    assert token.startswith("u1.")
    assert all(c.isalnum() or c in "-_." for c in token)


def test_the_link_carries_the_token_unchanged() -> None:
    token = make_token(SECRET, "tenant-1", "u-1", "mention")
    url = unsubscribe_url("https://chat.example.com/", token)

    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "https://chat.example.com/notifications/unsubscribe"
    )
    assert parse_qs(parts.query) == {"token": [token]}


def test_a_token_of_the_previous_secret_is_still_accepted() -> None:
    token = make_token(PREVIOUS, "tenant-1", "u-1", "mention")
    assert read_token([SECRET, PREVIOUS], token).user_id == "u-1"


def test_a_token_of_another_secret_is_refused() -> None:
    token = make_token(PREVIOUS, "tenant-1", "u-1", "mention")
    with pytest.raises(InvalidUnsubscribeToken) as invalid:
        read_token([SECRET], token)
    assert invalid.value.reason == "the token's signature does not match"
    assert [v.field for v in invalid.value.violations] == ["token"]


def test_a_changed_claim_is_refused() -> None:
    token = make_token(SECRET, "tenant-1", "u-1", "mention", issued_at=ISSUED)
    version, payload, mac = token.split(".")
    forged = base64url.encode(b'["tenant-1","u-2","mention",1796032800]')
    with pytest.raises(InvalidUnsubscribeToken, match="signature does not match"):
        read_token([SECRET], f"{version}.{forged}.{mac}")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    with pytest.raises(InvalidUnsubscribeToken, match="signature does not match"):
        read_token([SECRET], f"{version}.{payload}.{flipped}")


@pytest.mark.parametrize(
    "token",
    ["", "u1", "u1..", "u2.abc.def", "garbage", "u1.abc", "ü1.a.b", "u1." + "a" * 3000 + ".b"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidUnsubscribeToken, match=r"not an unsubscribe token|signature"):
        read_token([SECRET], token)


def test_a_client_token_or_a_mac_with_the_raw_secret_does_not_pass() -> None:
    client_token = jwt.encode({"sub": "u-1", "tid": "tenant-1"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidUnsubscribeToken):
        read_token([SECRET], client_token)
    # the same payload, but MACed with the secret itself rather than the derived key
    genuine = make_token(SECRET, "tenant-1", "u-1", "mention")
    version, payload, _ = genuine.split(".")
    raw = hmac.new(SECRET.encode(), f"{version}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidUnsubscribeToken, match="signature does not match"):
        read_token([SECRET], f"{version}.{payload}.{base64url.encode(raw)}")


def test_no_secret_is_a_configuration_error_not_a_bad_token() -> None:
    with pytest.raises(ValueError, match="KEEL_TOKEN_SECRET"):
        read_token(["", ""], make_token(SECRET, "t", "u", "c"))
    with pytest.raises(ValueError, match="KEEL_TOKEN_SECRET"):
        make_token("", "t", "u", "c")
