"""Base64url without padding: how Web Push writes keys and how unsubscribe tokens are
written, so both fit in a URL unescaped."""

from __future__ import annotations

import base64
import binascii


def encode(data: bytes) -> str:
    """``data`` as base64url without ``=`` padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(text: str) -> bytes:
    """The bytes of base64url ``text``, padded or not; ValueError for any character
    outside the alphabet."""
    standard = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
