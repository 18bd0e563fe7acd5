"""Client ids and secrets: generation, slow hashing (scrypt) and constant-time checks.

A stored hash reads ``scrypt$<log2 N>$<r>$<p>$<salt>$<key>`` (base64), so the
cost can be raised later without breaking the hashes already stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_R, _P, _KEY_BYTES = 8, 1, 32


def new_client_id() -> str:
    """A fresh public client id, e.g. ``kc_3f9a0c1b2d4e5f60718a``."""
    return "kc_" + secrets.token_hex(10)


def new_client_secret() -> str:
    """A fresh client secret with 256 bits of randomness."""
    return "ks_" + secrets.token_urlsafe(32)


def _scrypt(secret: str, salt: bytes, cost: int, r: int, p: int) -> bytes:
    n = 1 << cost
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=256 * r * n + (1 << 20)
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_secret(secret: str, *, cost: int) -> str:
    """The storable scrypt hash of ``secret`` with N = 2**``cost``. Slow on purpose."""
    salt = secrets.token_bytes(16)
    key = _scrypt(secret, salt, cost, _R, _P)
    return f"scrypt${cost}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches the ``stored`` hash; compares in constant time."""
    try:
        scheme, cost, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        actual = _scrypt(secret, base64.b64decode(salt), int(cost), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


# Checked when a client id is unknown, so that answer takes as long as a wrong secret.
DUMMY_HASH_SECRET = "keel-dummy-secret"
