"""Checks of request fields that need no database: each problem becomes a field violation.

The callers collect every problem of a request in one
:class:`~service_kit.validation.Violations` and raise them together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import parseaddr
from urllib.parse import urlsplit

from keel.webhooks import WebhookVerificationError, sign

from notification_service.models import (
    MAX_DIGEST_WINDOW_SECONDS,
    MAX_SCHEDULE_SECONDS,
    MAX_USERS,
    CategoryDefault,
    CategoryRule,
    QuietHours,
    SendRequest,
)
from notification_service.planning import is_category, parse_hh_mm, time_zone
from notification_service.senders.push import check_subscription
from service_kit.outbound import (
    ALLOW_PRIVATE_HINT,
    OutboundError,
    SystemResolver,
    destination,
    resolve_destination,
)
from service_kit.validation import Violations

MAX_USER_ID = 128
MAX_URL = 2048
_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_CATEGORY_RULE = "1 to 64 of lowercase letters, digits, '_', '-' and '.'"


def check_user_id(v: Violations, field: str, user_id: str) -> None:
    """User ids are the tenant's own: 1 to 128 printable characters, no surrounding spaces."""
    if not user_id:
        v.add(field, "is required")
    elif len(user_id) > MAX_USER_ID or not user_id.isprintable() or user_id != user_id.strip():
        v.add(field, f"must be 1 to {MAX_USER_ID} printable characters without surrounding spaces")


def check_category(v: Violations, field: str, category: str) -> None:
    v.check(is_category(category), field, f"{category[:70]!r} is not a category: {_CATEGORY_RULE}")


def check_send(v: Violations, request: SendRequest, *, now: datetime) -> None:
    """Every problem of a SendNotification's fields (recipients, texts, category, time)."""
    v.text("title", request.title, max_length=256)
    check_category(v, "category", request.category)
    if request.channel_id:
        v.check(not request.user_ids, "user_ids", "give user_ids or channel_id, not both")
        v.uuid("channel_id", request.channel_id)
        for index, user_id in enumerate(request.exclude_user_ids):
            check_user_id(v, f"exclude_user_ids[{index}]", user_id)
    else:
        v.check(
            0 < len(request.user_ids) <= MAX_USERS,
            "user_ids",
            f"give 1 to {MAX_USERS} user ids, or a channel_id",
        )
        v.check(not request.exclude_user_ids, "exclude_user_ids", "only goes with channel_id")
        seen: set[str] = set()
        for index, user_id in enumerate(request.user_ids):
            check_user_id(v, f"user_ids[{index}]", user_id)
            v.check(user_id not in seen, f"user_ids[{index}]", f"{user_id!r} is listed twice")
            seen.add(user_id)
    if request.send_at is not None:
        latest = now + timedelta(seconds=MAX_SCHEDULE_SECONDS)
        v.check(request.send_at > now, "send_at", "is in the past")
        v.check(request.send_at <= latest, "send_at", "is more than 30 days ahead")


def check_channel_numbers(
    v: Violations, field: str, numbers: Sequence[int], known: set[int]
) -> None:
    for index, number in enumerate(numbers):
        v.check(number in known, f"{field}[{index}]", f"{number} is not a notification channel")


def check_email(v: Violations, field: str, address: str) -> None:
    if address:
        v.check(
            len(address) <= 255 and bool(_EMAIL.fullmatch(address)),
            field,
            f"{address[:70]!r} is not an email address such as ann@example.com",
        )


def check_mailbox(v: Violations, field: str, mailbox: str) -> None:
    """A sender such as ``Team <team@example.com>`` (or a bare address)."""
    if not mailbox:
        return
    _, address = parseaddr(mailbox)
    ok = bool(_EMAIL.fullmatch(address)) and "\n" not in mailbox and "\r" not in mailbox
    v.check(ok, field, f"{mailbox[:70]!r} is not a sender such as 'Team <team@example.com>'")


def check_url_syntax(v: Violations, field: str, url: str) -> bool:
    """An absolute http(s) URL with a host and no credentials; True when it is one."""
    parts = urlsplit(url)
    problems = []
    if len(url) > MAX_URL:
        problems.append(f"is longer than {MAX_URL} characters")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        problems.append("must not carry credentials")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        problems.append("has an invalid port")
    for problem in problems:
        v.add(field, problem)
    return not problems


async def check_webhook_url(v: Violations, field: str, url: str, *, allow_private: bool) -> None:
    """A webhook URL Keel may post to: well formed, and every address its host resolves to
    allowed by the outbound guard (:func:`service_kit.outbound.refusal_reason`)."""
    if not url or not check_url_syntax(v, field, url):
        return
    try:
        host, port = destination(url)
        await resolve_destination(
            host, port, allow_private=allow_private, resolver=SystemResolver()
        )
    except (OutboundError, ValueError) as exc:
        hint = "" if allow_private else f" ({ALLOW_PRIVATE_HINT})"
        v.add(field, f"{exc}{hint}"[:300])


def check_webhook_secret(v: Violations, field: str, secret: str) -> None:
    if not secret:
        return
    try:
        usable = secret.startswith("whsec_") and bool(sign([secret], "check", 0, b""))
    except (WebhookVerificationError, ValueError):
        usable = False
    v.check(usable, field, "must be whsec_ followed by base64 (as keel.webhooks.new_secret makes)")


def check_quiet_hours(v: Violations, field: str, quiet: QuietHours) -> None:
    start, end = parse_hh_mm(quiet.start), parse_hh_mm(quiet.end)
    v.check(start is not None, f"{field}.start", f"{quiet.start[:20]!r} is not a time HH:MM")
    v.check(end is not None, f"{field}.end", f"{quiet.end[:20]!r} is not a time HH:MM")
    if start is not None and end is not None:
        v.check(start != end, f"{field}.end", "must differ from start")
    v.check(
        time_zone(quiet.time_zone) is not None,
        f"{field}.time_zone",
        f"{quiet.time_zone[:70]!r} is not an IANA time zone such as Europe/Paris",
    )


def check_rules(v: Violations, field: str, rules: Sequence[CategoryRule]) -> None:
    seen = set()
    for index, rule in enumerate(rules):
        check_category(v, f"{field}[{index}].category", rule.category)
        key = (rule.category, rule.channel)
        v.check(
            key not in seen, f"{field}[{index}]", "repeats an earlier rule's category and channel"
        )
        seen.add(key)


def check_category_defaults(v: Violations, field: str, defaults: Sequence[CategoryDefault]) -> None:
    seen = set()
    for index, default in enumerate(defaults):
        check_category(v, f"{field}[{index}].category", default.category)
        v.check(default.category not in seen, f"{field}[{index}].category", "is listed twice")
        seen.add(default.category)
        v.check(
            0 <= default.digest_window_seconds <= MAX_DIGEST_WINDOW_SECONDS,
            f"{field}[{index}].digest_window_seconds",
            f"must be from 0 to {MAX_DIGEST_WINDOW_SECONDS}",
        )


def check_push_subscription(
    v: Violations, field: str, endpoint: str, p256dh: str, auth: str, *, allow_private: bool
) -> None:
    """A browser's ``PushSubscription``: an https endpoint (http only where private
    destinations are allowed, for tests), the browser's P-256 key and 16-byte secret."""
    if not endpoint:
        v.add(f"{field}.endpoint", "is required")
    elif check_url_syntax(v, f"{field}.endpoint", endpoint):
        secure = urlsplit(endpoint).scheme == "https" or allow_private
        v.check(secure, f"{field}.endpoint", "must be an https:// URL")
    for problem in check_subscription(endpoint or "https://x", p256dh, auth):
        name, _, why = problem.partition(": ")
        if name != "endpoint":
            v.add(f"{field}.{name}", why)
