"""Webhooks: endpoints, their event filters, where they may point, and when to retry.

Plain rules, no I/O except :func:`check_destination`, which resolves a host
name to refuse addresses inside the operator's network (loopback, private,
link-local — which includes cloud metadata services — multicast, reserved)
unless ``KEEL_WEBHOOK_ALLOW_PRIVATE`` allows them.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import random
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from gateway_bridge.gateway.events.errors import InvalidWebhook
from gateway_bridge.vocabulary import EVENT_NAMES
from service_kit.errors import FailedPrecondition
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


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for label, hit in (
        ("loopback", address.is_loopback),
        ("link-local (cloud metadata lives here)", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("unspecified", address.is_unspecified),
    ):
        if hit:
            return label
    return None


async def check_destination(url: str, *, allow_private: bool) -> None:
    """Resolve the URL's host; raise ``FailedPrecondition`` when it cannot be reached from
    outside or points into a private network (unless ``allow_private``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FailedPrecondition(f"url: cannot resolve {host!r}: {exc.strerror or exc}") from exc
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        reason = _refused(address)
        if reason is not None:
            raise FailedPrecondition(
                f"url: {host!r} resolves to {address}, a {reason} address; webhooks may only"
                " reach public addresses (the operator can allow private ones with"
                " KEEL_WEBHOOK_ALLOW_PRIVATE=1)"
            )


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
