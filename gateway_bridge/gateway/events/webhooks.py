"""Webhooks: endpoints, their event filters, where they may point, and when to retry.

Plain rules, no I/O except :func:`check_destination`, which resolves a webhook's
host when the webhook is created or its URL changed and refuses it unless every
address is globally routable (or ``KEEL_WEBHOOK_ALLOW_PRIVATE`` allows private
ones). The address rule and the client that delivers, which checks the address of
every connection again, are :mod:`service_kit.outbound`'s.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from gateway_bridge.gateway.events.errors import InvalidWebhook
from gateway_bridge.vocabulary import EVENT_NAMES
from service_kit.errors import FailedPrecondition
from service_kit.outbound import (
    NameResolver,
    OutboundError,
    SystemResolver,
    destination,
    resolve_destination,
)
from service_kit.validation import Violations, is_uuid

MAX_URL: Final = 2048
MAX_FILTERS: Final = 50
MAX_CHANNEL_FILTERS: Final = 1000
MAX_DESCRIPTION: Final = 500

#: The default retry schedule (seconds after each failed attempt): about 2.8 days in all.
DEFAULT_RETRY_SCHEDULE: Final = (
    5,
    300,
    1800,
    7200,
    18000,
    36000,
    36000,
    36000,
    36000,
    36000,
    36000,
)
PING: Final = "ping"


class WebhookState(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    DISABLED = "disabled"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    tenant_id: str
    url: str
    events: tuple[str, ...]
    channel_ids: tuple[str, ...]
    description: str
    state: WebhookState
    disabled_reason: str
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime

    def wants(self, event: str, channel_id: str) -> bool:
        """Whether this webhook's filters select an event."""
        if self.channel_ids and channel_id not in self.channel_ids:
            return False
        return matches(self.events, event)


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt_time: datetime
    status_code: int
    latency_ms: int
    error: str


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    webhook_id: str
    event_id: str
    event: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    created_at: datetime
    payload: Mapping[str, Any]
    attempts: tuple[Attempt, ...] = ()


def matches(patterns: Sequence[str], event: str) -> bool:
    """``message:created`` matches itself, ``message:*`` and ``*``."""
    area = event.partition(":")[0]
    return any(p == event or p == "*" or p == f"{area}:*" for p in patterns)


def check_filters(v: Violations, events: Sequence[str], channel_ids: Sequence[str]) -> None:
    """Event patterns must name known events (``message:created``, ``message:*``, ``*``)."""
    areas = {name.partition(":")[0] for name in EVENT_NAMES}
    if not events:
        v.add("events", "name at least one event, such as message:created or message:*")
    v.check(len(events) <= MAX_FILTERS, "events", f"at most {MAX_FILTERS} patterns")
    for i, pattern in enumerate(events[:MAX_FILTERS]):
        known = (
            pattern == "*"
            or pattern in EVENT_NAMES
            or (pattern.endswith(":*") and pattern[:-2] in areas)
        )
        v.check(
            known,
            f"events[{i}]",
            f"{pattern[:60]!r} is not an event: use one of {', '.join(sorted(EVENT_NAMES))},"
            " area:* or *",
        )
    v.check(
        len(channel_ids) <= MAX_CHANNEL_FILTERS,
        "channel_ids",
        f"at most {MAX_CHANNEL_FILTERS} channels",
    )
    for i, channel_id in enumerate(channel_ids[:MAX_CHANNEL_FILTERS]):
        v.check(is_uuid(channel_id), f"channel_ids[{i}]", "is not a valid id")


def check_url(v: Violations, url: str) -> None:
    """An absolute http(s) URL with a host, no credentials, at most 2048 characters."""
    if not url:
        v.add("url", "is required")
        return
    parts = urlsplit(url)
    v.check(len(url) <= MAX_URL, "url", f"at most {MAX_URL} characters")
    v.check(parts.scheme in ("http", "https"), "url", "must start with http:// or https://")
    v.check(bool(parts.hostname), "url", "needs a host")
    v.check(not parts.username and not parts.password, "url", "must not carry credentials")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        v.add("url", "has an invalid port")


async def check_destination(
    url: str, *, allow_private: bool, resolver: NameResolver | None = None
) -> None:
    """Resolve the URL's host (with ``resolver``, the system's by default); raise
    ``FailedPrecondition`` naming the address when it does not resolve or any address
    it resolves to may not be reached (:func:`service_kit.outbound.refusal_reason`),
    unless ``allow_private``."""
    try:
        host, port = destination(url)
        await resolve_destination(
            host, port, allow_private=allow_private, resolver=resolver or SystemResolver()
        )
    except (OutboundError, ValueError) as exc:
        raise FailedPrecondition(f"url: {exc}") from exc


def next_attempt(
    schedule: Sequence[float], attempts_made: int, now: datetime, retry_after: float | None
) -> datetime | None:
    """When to try again after ``attempts_made`` failed attempts (None: give up).

    The schedule's delay gets ±20 % jitter; a ``Retry-After`` longer than it wins.
    """
    if attempts_made > len(schedule):
        return None
    delay = schedule[attempts_made - 1] * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 86_400.0))
    return now + timedelta(seconds=delay)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def raise_violations(v: Violations) -> None:
    """Raise :class:`InvalidWebhook` naming every violation ``v`` collected, if any."""
    v.raise_if_any(InvalidWebhook)
