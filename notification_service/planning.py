"""Which channels each recipient gets, and when: the rules of sending, with no I/O.

For one recipient of one notification :func:`plan_recipient` decides, per channel:

1. **Asked for?** The channels of the request (empty: every channel the caller may use).
2. **Turned on?** A user's :class:`CategoryRule` for (category, channel) decides when
   there is one. Otherwise the channel must be in the user's ``enabled_channels`` (by
   default all) *and* in the tenant's default channels for the category (by default
   all). Off: SKIPPED, saying by whom.
3. **Reachable?** Email needs an SMTP server and the user's address; push a push
   subscription; webhook the user's or the tenant's URL. Otherwise SKIPPED, saying
   what is missing.
4. **When?** In-app at once (or at ``send_at``). Email, push and webhook deliveries wait
   out the user's quiet hours (:func:`quiet_hours_end`); email and push of a category
   with a digest window wait for the window's digest instead.

Quiet hours are wall-clock times in the user's IANA zone: "22:00 to 07:00 in
Europe/Paris" ends at 07:00 Paris time on the right day whatever the UTC offset is that
day (daylight saving time included). An end that falls in a spring-forward gap ends at
the first instant after it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notification_service.models import (
    ALL_CHANNELS,
    DIGEST_CHANNELS,
    Channel,
    PlannedChannel,
    Preferences,
    QuietHours,
    TenantSettings,
    Timing,
)

_HH_MM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_CATEGORY = re.compile(r"^[a-z0-9_.-]{1,64}$")

#: Why a delivery is skipped when no SMTP server is configured.
NO_SMTP = "no SMTP server configured (KEEL_SMTP_URL)"


@dataclass(frozen=True, slots=True)
class Reachability:
    """What the process and the recipient make possible, besides preferences: an SMTP
    server, the user's push subscriptions (ids), the tenant's webhook URL, and whether
    this process can send push and webhooks at all."""

    smtp_configured: bool
    push_subscription_ids: tuple[str, ...] = ()
    tenant_webhook_url: str = ""
    push_available: bool = True
    webhook_available: bool = True


def is_category(text: str) -> bool:
    """A category: 1 to 64 of lowercase letters, digits, ``_``, ``-`` and ``.``."""
    return bool(_CATEGORY.fullmatch(text))


def parse_hh_mm(text: str) -> time | None:
    """``"07:30"`` as a time; None when it is not ``HH:MM`` (00:00 to 23:59)."""
    match = _HH_MM.fullmatch(text)
    return time(int(match[1]), int(match[2])) if match else None


def time_zone(name: str) -> ZoneInfo | None:
    """The IANA zone ``name`` (empty: UTC); None when there is no such zone."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a zone key at all
        return None


def quiet_hours_end(quiet: QuietHours | None, now: datetime) -> datetime | None:
    """When the quiet period ``now`` falls in ends (UTC), or None when ``now`` is outside
    quiet hours (or there are none, or they are malformed)."""
    if quiet is None:
        return None
    start, end, zone = parse_hh_mm(quiet.start), parse_hh_mm(quiet.end), time_zone(quiet.time_zone)
    if start is None or end is None or zone is None or start == end:
        return None
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    if start < end:
        if not start <= clock < end:
            return None
        end_day = local.date()
    elif clock >= start:  # the evening part of a period that crosses midnight
        end_day = local.date() + timedelta(days=1)
    elif clock < end:  # its morning part
        end_day = local.date()
    else:
        return None
    # fold=0: an end in a fall-back hour is its first occurrence; one in a spring-forward
    # gap is read with the offset before the gap, which lands just after it.
    ends = datetime.combine(end_day, end, tzinfo=zone)
    return ends.astimezone(UTC)


def channel_is_on(
    channel: Channel, category: str, preferences: Preferences, settings: TenantSettings
) -> str | None:
    """None when ``channel`` is on for ``category``; otherwise why it is off."""
    for rule in preferences.rules:
        if rule.category == category and rule.channel is channel:
            return None if rule.enabled else f"the user turned {channel} off for {category!r}"
    if channel not in preferences.enabled_channels:
        return f"the user turned {channel} off"
    default = settings.category_default(category)
    if default.enabled_channels and channel not in default.enabled_channels:
        return f"{channel} is turned off for category {category!r} by the tenant's defaults"
    return None


def missing_address(channel: Channel, preferences: Preferences, reach: Reachability) -> str | None:
    """None when ``channel`` can reach the user; otherwise what is missing."""
    if channel is Channel.EMAIL:
        if not reach.smtp_configured:
            return NO_SMTP
        if not preferences.email:
            return "the user has no email address in their preferences"
    elif channel is Channel.PUSH:
        if not reach.push_available:
            return "Web Push is not available in this process"
        if not reach.push_subscription_ids:
            return "the user has no push subscription"
    elif channel is Channel.WEBHOOK:
        if not reach.webhook_available:
            return "webhook notifications are not available in this process"
        if not (preferences.webhook_url or reach.tenant_webhook_url):
            return "no webhook URL (neither the user's nor the tenant's)"
    return None


def plan_recipient(
    requested: Collection[Channel],
    category: str,
    preferences: Preferences,
    settings: TenantSettings,
    reach: Reachability,
    *,
    now: datetime,
) -> tuple[PlannedChannel, ...]:
    """The plan of every requested channel (in the API's channel order) for one
    recipient at ``now`` (see the module docstring)."""
    plans = []
    for channel in ALL_CHANNELS:
        if channel not in requested:
            continue
        skipped = channel_is_on(channel, category, preferences, settings) or missing_address(
            channel, preferences, reach
        )
        if skipped is not None or channel is Channel.IN_APP:
            plans.append(PlannedChannel(channel, skipped))
            continue
        subscriptions = reach.push_subscription_ids if channel is Channel.PUSH else ()
        timing = timing_of(channel, category, preferences, settings, now=now)
        plans.append(PlannedChannel(channel, timing=timing, subscription_ids=subscriptions))
    return tuple(plans)


def timing_of(
    channel: Channel,
    category: str,
    preferences: Preferences,
    settings: TenantSettings,
    *,
    now: datetime,
) -> Timing:
    """When a used email, push or webhook delivery of ``category`` goes, from ``now``: in
    the category's digest (email and push), else after the quiet hours ``now`` is in."""
    quiet = preferences.quiet_hours
    window = settings.category_default(category).digest_window_seconds
    if window > 0 and channel in DIGEST_CHANNELS:
        return Timing(digest_seconds=window, quiet=quiet)
    return Timing(hold_until=quiet_hours_end(quiet, now), quiet=quiet)


def digest_due(window_end: datetime, quiet: QuietHours | None) -> datetime:
    """When the digest of a window ending at ``window_end`` goes: then, or at the end of
    the quiet hours it falls in."""
    return quiet_hours_end(quiet, window_end) or window_end
