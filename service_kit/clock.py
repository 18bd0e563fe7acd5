"""Time as every Keel service reads and writes it: timezone-aware UTC.

Stores and services take a ``clock`` (a :data:`Clock`) so tests can fix the time;
:func:`utcnow` is the default everywhere, and :func:`rfc3339` is how a time is
written in JSON (events, webhook bodies): ``2026-11-30T10:07:38.123456Z``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

#: A source of the current time (timezone-aware, UTC).
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    """``value`` in RFC 3339 with ``Z`` for UTC, as JSON carries times."""
    return value.isoformat().replace("+00:00", "Z")
