"""The rules of sending, without I/O: channel choice and its precedence, quiet hours in
IANA zones (across midnight and daylight saving time), digests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notification_service.models import (
    ALL_CHANNELS,
    CategoryDefault,
    CategoryRule,
    Channel,
    PlannedChannel,
    Preferences,
    QuietHours,
    TenantSettings,
    Timing,
    UserId,
)
from notification_service.planning import (
    NO_SMTP,
    Reachability,
    digest_due,
    is_category,
    parse_hh_mm,
    plan_recipient,
    quiet_hours_end,
    time_zone,
)

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
REACH_ALL = Reachability(
    smtp_configured=True, push_subscription_ids=("sub-1", "sub-2"), tenant_webhook_url=""
)
USER = UserId("ann")
NO_SETTINGS = TenantSettings()


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def prefs(**fields: object) -> Preferences:
    values: dict[str, object] = {
        "email": "ann@example.com",
        "webhook_url": "https://hooks.example.com/ann",
    }
    return Preferences(USER, **(values | fields))  # type: ignore[arg-type]


def plan(
    preferences: Preferences,
    settings: TenantSettings = NO_SETTINGS,
    *,
    requested: tuple[Channel, ...] = ALL_CHANNELS,
    category: str = "mention",
    reach: Reachability = REACH_ALL,
    now: datetime = NOW,
) -> dict[Channel, PlannedChannel]:
    planned = plan_recipient(requested, category, preferences, settings, reach, now=now)
    return {p.channel: p for p in planned}


def skipped(planned: dict[Channel, PlannedChannel]) -> dict[Channel, str | None]:
    return {channel: p.skipped for channel, p in planned.items()}


# -- which channels -------------------------------------------------------------------------


def test_every_requested_channel_is_used_by_default_push_to_each_subscription() -> None:
    planned = plan(prefs())
    assert skipped(planned) == dict.fromkeys(ALL_CHANNELS)
    assert planned[Channel.PUSH].subscription_ids == ("sub-1", "sub-2")
    assert planned[Channel.EMAIL].timing == Timing()
    assert list(planned) == list(ALL_CHANNELS)


def test_only_the_requested_channels_are_planned() -> None:
    planned = plan(prefs(), requested=(Channel.EMAIL, Channel.IN_APP))
    assert list(planned) == [Channel.IN_APP, Channel.EMAIL]


def test_a_users_rule_for_the_category_decides_before_anything_else() -> None:
    settings = TenantSettings(category_defaults=(CategoryDefault("mention", (Channel.IN_APP,)),))
    preferences = prefs(
        enabled_channels=(Channel.IN_APP,),
        rules=(
            CategoryRule("mention", Channel.EMAIL, True),  # on, though the defaults say off
            CategoryRule("mention", Channel.IN_APP, False),  # off, though enabled
            CategoryRule("billing", Channel.PUSH, True),  # another category: no say
        ),
    )
    why = skipped(plan(preferences, settings))
    assert why[Channel.EMAIL] is None
    assert why[Channel.IN_APP] == "the user turned in_app off for 'mention'"
    assert why[Channel.PUSH] == "the user turned push off"
    assert why[Channel.WEBHOOK] == "the user turned webhook off"


def test_without_a_rule_the_channel_must_be_on_for_the_user_and_in_the_tenants_defaults() -> None:
    settings = TenantSettings(
        category_defaults=(
            CategoryDefault("mention", (Channel.IN_APP, Channel.EMAIL, Channel.PUSH)),
            CategoryDefault("billing", ()),  # empty: every channel
        )
    )
    preferences = prefs(enabled_channels=(Channel.IN_APP, Channel.WEBHOOK, Channel.PUSH))
    why = skipped(plan(preferences, settings))
    assert why == {
        Channel.IN_APP: None,
        Channel.EMAIL: "the user turned email off",
        Channel.WEBHOOK: "webhook is turned off for category 'mention' by the tenant's defaults",
        Channel.PUSH: None,
    }
    assert skipped(plan(preferences, settings, category="billing"))[Channel.WEBHOOK] is None


def test_a_channel_without_an_address_is_skipped_saying_what_is_missing() -> None:
    reach = Reachability(smtp_configured=True)
    why = skipped(plan(prefs(email="", webhook_url=""), reach=reach))
    assert why == {
        Channel.IN_APP: None,
        Channel.EMAIL: "the user has no email address in their preferences",
        Channel.WEBHOOK: "no webhook URL (neither the user's nor the tenant's)",
        Channel.PUSH: "the user has no push subscription",
    }
    tenant_url = Reachability(smtp_configured=True, tenant_webhook_url="https://t.example.com/h")
    assert skipped(plan(prefs(webhook_url=""), reach=tenant_url))[Channel.WEBHOOK] is None


def test_email_without_an_smtp_server_is_skipped_saying_so() -> None:
    reach = Reachability(smtp_configured=False, push_subscription_ids=("s",))
    assert skipped(plan(prefs(), reach=reach))[Channel.EMAIL] == NO_SMTP


def test_a_channel_turned_off_is_reported_as_off_even_without_an_address() -> None:
    preferences = prefs(email="", rules=(CategoryRule("mention", Channel.EMAIL, False),))
    assert skipped(plan(preferences))[Channel.EMAIL] == "the user turned email off for 'mention'"


# -- quiet hours ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "ends"),
    [
        (utc(2025, 6, 2, 19, 59), None),  # 21:59 in Paris (UTC+2): before the start
        (utc(2025, 6, 2, 20, 0), utc(2025, 6, 3, 5, 0)),  # 22:00 Paris: the evening part
        (utc(2025, 6, 2, 22, 0), utc(2025, 6, 3, 5, 0)),  # 00:00 Paris: the morning part
        (utc(2025, 6, 3, 4, 59), utc(2025, 6, 3, 5, 0)),  # 06:59 Paris
        (utc(2025, 6, 3, 5, 0), None),  # 07:00 Paris: over
    ],
)
def test_quiet_hours_across_midnight_end_at_the_local_end_time(
    now: datetime, ends: datetime | None
) -> None:
    assert quiet_hours_end(QuietHours("22:00", "07:00", "Europe/Paris"), now) == ends


@pytest.mark.parametrize(
    ("now", "ends"),
    [
        (utc(2025, 6, 2, 12, 59), None),  # 08:59 in New York (UTC-4)
        (utc(2025, 6, 2, 13, 0), utc(2025, 6, 2, 21, 30)),  # 09:00
        (utc(2025, 6, 2, 21, 29), utc(2025, 6, 2, 21, 30)),  # 17:29
        (utc(2025, 6, 2, 21, 30), None),  # 17:30: over
    ],
)
def test_quiet_hours_within_one_day(now: datetime, ends: datetime | None) -> None:
    assert quiet_hours_end(QuietHours("09:00", "17:30", "America/New_York"), now) == ends


def test_quiet_hours_that_end_after_the_spring_forward_follow_the_new_offset() -> None:
    """Paris moves from UTC+1 to UTC+2 at 02:00 on 30 March 2025: 07:00 local is 05:00 UTC,
    not the 06:00 UTC the evening's offset would give."""
    quiet = QuietHours("22:00", "07:00", "Europe/Paris")
    assert quiet_hours_end(quiet, utc(2025, 3, 29, 22, 30)) == utc(2025, 3, 30, 5, 0)


def test_quiet_hours_that_end_after_the_fall_back_follow_the_new_offset() -> None:
    """New York moves from UTC-4 to UTC-5 at 02:00 on 2 November 2025."""
    quiet = QuietHours("23:00", "06:30", "America/New_York")
    assert quiet_hours_end(quiet, utc(2025, 11, 2, 3, 30)) == utc(2025, 11, 2, 11, 30)


def test_quiet_hours_ending_in_the_spring_forward_gap_end_just_after_it() -> None:
    """02:30 does not exist in Paris on 30 March 2025; the period ends at 03:30 CEST (01:30
    UTC), the first instant past the gap it asks for."""
    quiet = QuietHours("23:00", "02:30", "Europe/Paris")
    assert quiet_hours_end(quiet, utc(2025, 3, 29, 23, 0)) == utc(2025, 3, 30, 1, 30)


def test_quiet_hours_in_utc_by_default_and_none_without_a_period() -> None:
    assert quiet_hours_end(QuietHours("11:00", "13:00", ""), NOW) == utc(2025, 6, 2, 13, 0)
    assert quiet_hours_end(None, NOW) is None
    assert quiet_hours_end(QuietHours("11:00", "11:00", "UTC"), NOW) is None


def test_quiet_hours_hold_email_push_and_webhook_but_not_in_app() -> None:
    quiet = QuietHours("11:00", "13:00", "UTC")
    planned = plan(prefs(quiet_hours=quiet))
    assert planned[Channel.IN_APP].timing == Timing()
    for channel in (Channel.EMAIL, Channel.PUSH, Channel.WEBHOOK):
        assert planned[channel].timing.hold_until == utc(2025, 6, 2, 13, 0), channel


# -- digests ----------------------------------------------------------------------------------


def test_a_category_with_a_digest_window_collapses_email_and_push_only() -> None:
    settings = TenantSettings(
        category_defaults=(CategoryDefault("mention", digest_window_seconds=600),)
    )
    planned = plan(prefs(), settings)
    assert planned[Channel.EMAIL].timing.digest_seconds == 600
    assert planned[Channel.PUSH].timing.digest_seconds == 600
    assert planned[Channel.WEBHOOK].timing == Timing()
    assert planned[Channel.IN_APP].timing == Timing()
    assert plan(prefs(), settings, category="billing")[Channel.EMAIL].timing == Timing()


def test_a_digest_due_in_quiet_hours_waits_for_their_end() -> None:
    quiet = QuietHours("22:00", "07:00", "Europe/Paris")
    assert digest_due(utc(2025, 6, 2, 12, 0), quiet) == utc(2025, 6, 2, 12, 0)
    assert digest_due(utc(2025, 6, 2, 23, 0), quiet) == utc(2025, 6, 3, 5, 0)


# -- the words of the API -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("mention", True),
        ("team.billing-2_x", True),
        ("", False),
        ("Mention", False),
        ("a b", False),
        ("x" * 64, True),
        ("x" * 65, False),
    ],
)
def test_categories(text: str, ok: bool) -> None:
    assert is_category(text) is ok


def test_times_and_zones() -> None:
    assert parse_hh_mm("07:05") is not None and parse_hh_mm("23:59") is not None
    for bad in ("7:05", "24:00", "12:60", "12:00:00", " 12:00", ""):
        assert parse_hh_mm(bad) is None, bad
    assert time_zone("") is not None and time_zone("Europe/Paris") is not None
    for bad in ("Mars/Olympus", "../etc/passwd", "/etc/localtime", "Europe/"):
        assert time_zone(bad) is None, bad
