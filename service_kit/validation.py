"""Request checks shared by the servicers: field violations, ids, page sizes and page tokens.

A servicer collects every problem of a request in :class:`Violations` and
raises them together, so the caller sees all bad fields at once.

A page token is opaque to clients: base64 of JSON holding a position (strings and
64-bit integers only) and a fingerprint of the query it pages, of the RPC method and
of the calling tenant (:data:`page_token_scope_var`, set by the interceptor for each
call). Whatever a client sends back, decoding either yields a position of that shape
or raises INVALID_ARGUMENT naming ``page_token``: a token of another list, method or
tenant, or bytes that are no token at all, never reach a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

from service_kit.errors import FieldViolation, InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

#: What a page token made in this context is bound to besides its query: the RPC method
#: and the calling tenant (the interceptor sets it; empty outside an RPC).
page_token_scope_var: ContextVar[str] = ContextVar("keel_page_token_scope", default="")

_INT64 = range(-(2**63), 2**63)
_NOT_A_TOKEN = "is not a token this API returned"


class Violations:
    """Collects field violations; :meth:`raise_if_any` reports them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        """Record a violation unless ``ok``; returns ``ok``."""
        if not ok:
            self.add(field, description)
        return ok

    def raise_if_any(self, error: type[InvalidArgument] = InvalidArgument) -> None:
        """Raise ``error`` (an :class:`InvalidArgument`) naming every violation, if any."""
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items)
            raise error(f"invalid request: {summary}", self.items)

    def uuid(self, field: str, value: str, *, required: bool = True) -> None:
        """Check that ``value`` is a UUID (Keel's ids), or empty when not ``required``."""
        if not value:
            self.check(not required, field, "is required")
            return
        self.check(is_uuid(value), field, f"{_shorten(value)!r} is not a valid id (a UUID)")

    def text(self, field: str, value: str, *, max_length: int, required: bool = True) -> None:
        """Check a free-text field: present when ``required``, at most ``max_length`` chars."""
        if not value.strip():
            self.check(not required, field, "is required")
        elif len(value) > max_length:
            self.add(field, f"is {len(value)} characters long; the limit is {max_length}")


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def new_id() -> str:
    """A new random id for a resource Keel names (a UUID4 string)."""
    return str(uuid.uuid4())


def _shorten(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def page_size(value: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """The page size to use: ``default`` for 0; INVALID_ARGUMENT outside 0..``maximum``."""
    if value == 0:
        return default
    if not 0 < value <= maximum:
        raise InvalidArgument.for_field("page_size", f"must be between 0 and {maximum}")
    return value


def encode_page_token(position: list[Any], *, query: str) -> str:
    """An opaque token holding ``position`` (JSON values), bound to the ``query`` it pages."""
    payload = {"p": position, "q": _fingerprint(query)}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def decode_page_token(token: str, *, query: str) -> list[str | int] | None:
    """The position in ``token`` (None for an empty token): a list of strings and 64-bit
    integers, as :func:`encode_page_token` wrote it.

    Raises INVALID_ARGUMENT naming ``page_token`` for anything that is not such a token,
    and for a token made for another query, method or tenant.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw, parse_constant=_no_constant)
        position, fingerprint = payload["p"], payload["q"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidArgument.for_field("page_token", _NOT_A_TOKEN) from None
    if not (isinstance(position, list) and all(map(_is_position_part, position))):
        raise InvalidArgument.for_field("page_token", _NOT_A_TOKEN)
    if fingerprint != _fingerprint(query):
        raise InvalidArgument.for_field(
            "page_token", "was returned for a different request; start again without it"
        )
    return position


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _is_position_part(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, str) or (isinstance(value, int) and value in _INT64)


def _fingerprint(query: str) -> str:
    scoped = f"{page_token_scope_var.get()}\n{query}"
    return hashlib.sha256(scoped.encode()).hexdigest()[:16]


def encode_time_position(time: datetime, key: str, *, query: str) -> str:
    """A page token for lists ordered by (time, key), such as creation time and id."""
    return encode_page_token([time.isoformat(), key], query=query)


def decode_time_position(token: str, *, query: str) -> tuple[datetime, str] | None:
    """The (time, key) position :func:`encode_time_position` stored; None for no token."""
    position = decode_page_token(token, query=query)
    if position is None:
        return None
    try:
        time, key = position
        return datetime.fromisoformat(str(time)), str(key)
    except (ValueError, TypeError):
        raise InvalidArgument.for_field("page_token", _NOT_A_TOKEN) from None


def decode_seq_position(token: str, *, query: str) -> int | None:
    """The seq a page token written as ``encode_page_token([seq], ...)`` holds (None for
    no token); INVALID_ARGUMENT naming ``page_token`` unless it is one non-negative int."""
    position = decode_page_token(token, query=query)
    if position is None:
        return None
    match position:
        case [int(seq)] if seq >= 0:
            return seq
    raise InvalidArgument.for_field("page_token", _NOT_A_TOKEN)


def time_page(
    found: list[T], limit: int, position: Callable[[T], tuple[datetime, str]], *, query: str
) -> tuple[list[T], str]:
    """The first ``limit`` of ``found`` (fetched with ``limit + 1``) and the token of the
    next page, empty when there is none."""
    page = found[:limit]
    if len(found) <= limit:
        return page, ""
    time, key = position(page[-1])
    return page, encode_time_position(time, key, query=query)


def valid_id(field: str, value: str) -> str:
    """``value`` if it is a Keel id (a UUID); INVALID_ARGUMENT naming ``field`` otherwise."""
    v = Violations()
    v.uuid(field, value)
    v.raise_if_any()
    return value
