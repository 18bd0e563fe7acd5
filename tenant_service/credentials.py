"""Client ids and secrets: generation, the two ways a secret is hashed, constant-time checks.

Which scheme a secret gets depends only on its form, never on who asks:

- ``hmac-sha256$<salt>$<mac>`` (base64) — the **fast** scheme, for secrets of the form Keel
  generates (``ks_`` and 43 URL-safe characters: 256 random bits). HMAC-SHA256 keyed with
  a random 16-byte salt takes microseconds; nobody can guess 256 random bits, so slowing a
  guesser down gains nothing, and a fast check cannot be used to exhaust the server.
- ``scrypt$<log2 N>$<r>$<p>$<salt>$<key>`` (base64) — the **slow** scheme, for any other
  secret (one an operator chose, which may be guessable). Each hash records its cost, so
  the cost can be raised later without breaking the hashes already stored.

Invariants: every comparison is constant-time; a malformed stored hash matches nothing; a
client id that does not exist is checked against :func:`dummy_hash` (the fast scheme), so
its refusal costs and looks exactly like a wrong secret for a tenant with a generated one.
A stored slow hash of a secret of the generated form (written before the fast scheme
existed) is worth replacing with the fast form: :func:`upgradable` says when.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

_R, _P, _KEY_BYTES, _SALT_BYTES = 8, 1, 32, 16
_SCRYPT, _HMAC = "scrypt", "hmac-sha256"
_GENERATED = re.compile(r"^ks_[A-Za-z0-9_-]{43}$")


def new_client_id() -> str:
    """A fresh public client id, e.g. ``kc_3f9a0c1b2d4e5f60718a``."""
    return "kc_" + secrets.token_hex(10)


def new_client_secret() -> str:
    """A fresh client secret with 256 bits of randomness (the generated form)."""
    return "ks_" + secrets.token_urlsafe(32)


def has_generated_form(secret: str) -> bool:
    """Whether ``secret`` looks like one :func:`new_client_secret` makes (it is hashed fast)."""
    return _GENERATED.fullmatch(secret) is not None


def is_slow(stored: str) -> bool:
    """Whether checking a secret against the ``stored`` hash is slow (scrypt)."""
    return stored.startswith(_SCRYPT + "$")


def upgradable(secret: str, stored: str) -> bool:
    """Whether ``stored`` (which ``secret`` matched) should be rewritten in the fast form."""
    return is_slow(stored) and has_generated_form(secret)


def _scrypt(secret: str, salt: bytes, cost: int, r: int, p: int) -> bytes:
    n = 1 << cost
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=256 * r * n + (1 << 20)
    )


def _mac(secret: str, salt: bytes) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_secret(secret: str, *, cost: int) -> str:
    """The storable hash of ``secret``: fast for the generated form, else scrypt with
    N = 2**``cost`` (slow on purpose)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    if has_generated_form(secret):
        return f"{_HMAC}${_b64(salt)}${_b64(_mac(secret, salt))}"
    key = _scrypt(secret, salt, cost, _R, _P)
    return f"{_SCRYPT}${cost}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches the ``stored`` hash (either scheme); constant-time."""
    try:
        scheme, *fields = stored.split("$")
        if scheme == _HMAC:
            salt, key = fields
            actual = _mac(secret, base64.b64decode(salt))
        elif scheme == _SCRYPT:
            cost, r, p, salt, key = fields
            actual = _scrypt(secret, base64.b64decode(salt), int(cost), int(r), int(p))
        else:
            return False
        expected = base64.b64decode(key)
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def dummy_hash() -> str:
    """A fast hash that no secret matches (of a random secret that is then forgotten), for
    checking a client id that does not exist the same way as one that does."""
    return hash_secret(new_client_secret(), cost=0)
