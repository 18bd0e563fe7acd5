"""The notification service's operations: checks and scopes, then the store, then the live
side.

:class:`NotificationService` is what the gRPC servicer calls. It checks what can be
checked without the database, decides what the caller's scope allows, finds the
recipients (through :class:`~notification_service.recipients.Recipients`), plans every
recipient's channels (:mod:`notification_service.planning`), and has the store keep the
send in one transaction; in-app notifications are announced on the bus only after that
transaction committed.

Scopes: ``send:basic`` reads inboxes, preferences and settings, marks read, registers
and deletes push subscriptions, and sends to at most 100 listed users, in-app and by
email, now. Sending to a channel's members, to more than 100 users, by push or webhook,
or later (``send_at``), needs ``send:*`` (as does changing the tenant's settings, which
the interceptor checks). For ``send:basic`` an empty channel list means in-app and email.

Retries: a send with a ``request_id`` the tenant used before returns that send's
notifications as they are now, and stores and enqueues nothing — when it asks the same
(:func:`request_fingerprint`; a retry is answered even once its ``send_at`` has passed).
The same ``request_id`` with other content is INVALID_ARGUMENT on ``request_id``.

``keel_notification_deliveries_total{channel,outcome}`` is defined here; this module
counts in-app deliveries as a send decides them (``sent``: in the inbox now; ``held``:
waiting for ``send_at``; ``skipped``: turned off), :mod:`notification_service.deliveries`
the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter as TallyCounter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial

from keel.webhooks import new_secret
from prometheus_client import Counter

from notification_service import checks
from notification_service.errors import (
    FULL_SCOPE,
    InvalidNotification,
    NeedsFullSendScope,
    NotificationNotFound,
    UsersNotFound,
)
from notification_service.live import LivePublisher, WireNotification
from notification_service.models import (
    ALL_CHANNELS,
    MAX_BASIC_USERS,
    CategoryRule,
    Channel,
    DeliveryAttempt,
    InboxPage,
    Notification,
    NotificationId,
    PlannedChannel,
    PlannedRecipient,
    Preferences,
    PushSubscription,
    SendRequest,
    TenantSettings,
    UserId,
)
from notification_service.planning import Reachability, plan_recipient
from notification_service.recipients import KnownUsers, Recipients
from notification_service.store import NewSend, NotificationStore, SendExists, SendInputs
from notification_service.store.rows import VAPID, WEBHOOK_SECRET
from service_kit.auth import TenantContext
from service_kit.clock import Clock, utcnow
from service_kit.validation import Violations, new_id

log = logging.getLogger(__name__)

NOTIFICATION_DELIVERIES = Counter(
    "keel_notification_deliveries_total",
    "Notification deliveries decided or attempted, by channel (in_app, email, push, webhook)"
    " and outcome (sent; failed: an attempt failed; skipped: not sendable; held: waits).",
    ["channel", "outcome"],
)

#: The channels a tenant with only ``send:basic`` may use, and gets by default.
BASIC_CHANNELS = (Channel.IN_APP, Channel.EMAIL)
#: Fields an update mask may name.
PREFERENCE_FIELDS = frozenset(
    {"enabled_channels", "email", "webhook_url", "webhook_secret", "quiet_hours", "rules"}
)
SETTINGS_FIELDS = frozenset({"email_from", "category_defaults", "webhook_url", "webhook_secret"})


@dataclass(frozen=True, slots=True)
class SendingOptions:
    """What this process can send and how (from its settings and senders)."""

    max_attempts: int = 10
    smtp_configured: bool = False
    push_available: bool = False
    webhook_available: bool = False
    #: KEEL_WEBHOOK_ALLOW_PRIVATE: webhook URLs and push endpoints may be private.
    allow_private: bool = False


@dataclass(frozen=True, slots=True)
class Sent:
    """The notifications a send stored (or a retry found), and the wire form the live
    side made of those it announced, by notification id: whoever answers with them
    reuses it rather than converting them a second time."""

    notifications: list[Notification]
    wire: Mapping[str, WireNotification] = field(default_factory=dict)


#: Makes a VAPID key pair: (private key PEM, public key as base64url of the point).
VapidMaker = Callable[[], tuple[str, str]]


class NotificationService:
    """Notifications, inboxes, preferences, settings and push subscriptions of every
    tenant (see the module docstring)."""

    def __init__(
        self,
        store: NotificationStore,
        recipients: Recipients,
        live: LivePublisher,
        *,
        options: SendingOptions,
        new_vapid_keys: VapidMaker,
        clock: Clock = utcnow,
        on_jobs_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_jobs_enqueued`` is called after a send committed delivery jobs due at once
        (to wake the process's job worker rather than leave them to its next poll)."""
        self._store = store
        self._recipients = recipients
        self._live = live
        self._options = options
        self._new_vapid_keys = new_vapid_keys
        self._clock = clock
        self._on_jobs_enqueued = on_jobs_enqueued
        self._known = KnownUsers()

    # -- sending ------------------------------------------------------------------------

    async def send(self, tenant: TenantContext, request: SendRequest) -> Sent:
        """Store one notification per recipient and start its deliveries; see the
        module docstring for scopes and retries."""
        now = self._clock()
        # Only a send that can be retried keeps what it asked (hashing up to 64 KB of data).
        fingerprint = request_fingerprint(request) if request.request_id else ""
        if request.request_id:  # a retry is answered before its send_at is checked again
            existing = await self._store.find_send(tenant.tenant_id, request.request_id)
            if existing is not None:
                return Sent(await self._retried(tenant.tenant_id, fingerprint, *existing))
        v = Violations()
        checks.check_send(v, request, now=now)
        v.raise_if_any(InvalidNotification)
        _check_scope(tenant, request)
        user_ids = await self._recipients_of(tenant.tenant_id, request)
        if not request.channels:
            channels = ALL_CHANNELS if tenant.allows(FULL_SCOPE) else BASIC_CHANNELS
            request = replace(request, channels=channels)
        send = NewSend(
            tenant.tenant_id,
            new_id(),
            request,
            user_ids,
            partial(self._plan, request, user_ids, now=now),
            now,
            self._options.max_attempts,
            fingerprint,
        )
        try:
            stored = await self._store.create_send(send)
        except SendExists as exc:  # a concurrent retry stored it first
            return Sent(
                await self._retried(tenant.tenant_id, fingerprint, exc.send_id, exc.fingerprint)
            )
        if stored.jobs_due:
            self._on_jobs_enqueued()
        if not (stored.settings.vapid_public_key and stored.settings.webhook_secret):
            await self.tenant_settings(tenant.tenant_id)  # the tenant's first send makes them
        _count_in_app(stored.notifications)
        landed = [n for n in stored.notifications if n.inbox_time]
        wire: dict[str, WireNotification] = {}
        if landed:
            # The counts were read in the send's transaction: no second round trip.
            published = await self._live.publish(
                tenant.tenant_id, [(n, stored.unread.get(n.user_id, 0)) for n in landed]
            )
            wire = {n.id: message for n, message in zip(landed, published, strict=True)}
        return Sent(stored.notifications, wire)

    async def _retried(
        self, tenant_id: str, fingerprint: str, send_id: str, first: str
    ) -> list[Notification]:
        """The notifications of the send a retry names, if it asks what the first did."""
        if first != fingerprint:
            v = Violations()
            v.add(
                "request_id",
                "was used for a send with other content (recipients, title, body, data,"
                " category, channels or send_at); a new send needs a new request_id",
            )
            v.raise_if_any(InvalidNotification)
        return await self._store.send_notifications(tenant_id, send_id)

    async def _recipients_of(self, tenant_id: str, request: SendRequest) -> list[UserId]:
        if not request.channel_id:
            # Users found by a send of the last seconds are not asked about again.
            unknown = self._known.unknown(tenant_id, request.user_ids)
            if unknown:
                try:
                    await self._recipients.check_users(tenant_id, unknown)
                except UsersNotFound as exc:
                    raise UsersNotFound(exc.user_ids, sending=True) from exc
                self._known.found(tenant_id, unknown)
            return [UserId(u) for u in request.user_ids]
        members = await self._recipients.channel_members(tenant_id, request.channel_id)
        excluded = set(request.exclude_user_ids)
        return [UserId(u) for u in dict.fromkeys(members) if u not in excluded]

    def _plan(
        self,
        request: SendRequest,
        user_ids: Sequence[UserId],
        inputs: SendInputs,
        *,
        now: datetime,
    ) -> list[PlannedRecipient]:
        """Every recipient's channels (called by the store inside the send's transaction,
        with what it read there). Recipients with neither preferences nor push
        subscriptions — most, in a large send — all get one plan, made once."""
        preferences, settings, subscriptions = (
            inputs.preferences,
            inputs.settings,
            inputs.subscriptions,
        )
        reach = Reachability(
            smtp_configured=self._options.smtp_configured,
            tenant_webhook_url=settings.webhook_url,
            push_available=self._options.push_available,
            webhook_available=self._options.webhook_available,
        )

        def plan(own: Preferences, reach: Reachability) -> tuple[PlannedChannel, ...]:
            return plan_recipient(request.channels, request.category, own, settings, reach, now=now)

        by_default: tuple[PlannedChannel, ...] | None = None
        planned = []
        for user_id in user_ids:
            own, pushes = preferences.get(user_id), subscriptions.get(user_id)
            if own is None and not pushes:
                if by_default is None:  # plan_recipient does not look at whose they are
                    by_default = plan(Preferences(user_id), reach)
                plans = by_default
            else:
                browsers = tuple(s.id for s in pushes) if pushes else ()
                own_reach = replace(reach, push_subscription_ids=browsers) if browsers else reach
                plans = plan(own or Preferences(user_id), own_reach)
            planned.append(PlannedRecipient(NotificationId(new_id()), user_id, plans))
        return planned

    async def announce(self, tenant_id: str, landed: Sequence[Notification]) -> None:
        """Publish ``landed`` (just put in inboxes) live, each with its user's unread count."""
        if not landed:
            return
        counts = await self._store.unread_counts(tenant_id, [n.user_id for n in landed])
        await self._live.publish(tenant_id, [(n, counts.get(n.user_id, 0)) for n in landed])

    # -- inboxes ------------------------------------------------------------------------

    async def get(self, tenant_id: str, notification_id: str) -> Notification:
        found = await self._store.get_notification(tenant_id, notification_id)
        if found is None:
            raise NotificationNotFound(notification_id)
        return found

    async def inbox(
        self,
        tenant_id: str,
        user_id: str,
        *,
        unread_only: bool,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> InboxPage:
        _check_user(user_id)
        page, unread = await self._store.list_inbox(
            tenant_id, user_id, unread_only=unread_only, limit=limit, after=after
        )
        return InboxPage(page, unread)

    async def mark_read(
        self, tenant_id: str, user_id: str, notification_ids: Collection[str] | None
    ) -> tuple[int, int]:
        """Mark the ids (every notification when None) read; (marked, unread after)."""
        v = Violations()
        checks.check_user_id(v, "user_id", user_id)
        if notification_ids is not None:
            for index, notification_id in enumerate(notification_ids):
                v.uuid(f"notification_ids[{index}]", notification_id)
        v.raise_if_any(InvalidNotification)
        return await self._store.mark_read(tenant_id, user_id, notification_ids, now=self._clock())

    async def attempts(
        self,
        tenant_id: str,
        notification_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[DeliveryAttempt]:
        await self.get(tenant_id, notification_id)  # NOT_FOUND for another tenant's
        return await self._store.list_attempts(tenant_id, notification_id, limit=limit, after=after)

    # -- preferences --------------------------------------------------------------------

    async def preferences(self, tenant_id: str, user_id: str) -> Preferences:
        _check_user(user_id)
        await self._recipients.check_users(tenant_id, [user_id])
        found = await self._store.preferences_of(tenant_id, [user_id])
        return found.get(user_id) or Preferences(UserId(user_id))

    async def update_preferences(
        self, tenant_id: str, given: Preferences, mask: Collection[str]
    ) -> Preferences:
        """Change the fields of the user's preferences named in ``mask`` to ``given``'s."""
        v = Violations()
        checks.check_user_id(v, "preferences.user_id", given.user_id)
        _check_mask(v, mask, PREFERENCE_FIELDS)
        if "email" in mask:
            checks.check_email(v, "preferences.email", given.email)
        if "webhook_url" in mask:
            await checks.check_webhook_url(
                v,
                "preferences.webhook_url",
                given.webhook_url,
                allow_private=self._options.allow_private,
            )
        if "webhook_secret" in mask:
            checks.check_webhook_secret(v, "preferences.webhook_secret", given.webhook_secret)
        if "quiet_hours" in mask and given.quiet_hours is not None:
            checks.check_quiet_hours(v, "preferences.quiet_hours", given.quiet_hours)
        if "rules" in mask:
            checks.check_rules(v, "preferences.rules", given.rules)
        v.raise_if_any(InvalidNotification)
        await self._recipients.check_users(tenant_id, [given.user_id])
        changes = {name: getattr(given, name) for name in mask}
        return await self._store.update_preferences(
            tenant_id,
            given.user_id,
            lambda current: replace(current, **changes),
            now=self._clock(),
        )

    async def unsubscribe(self, tenant_id: str, user_id: str, category: str) -> None:
        """Turn the user's email of ``category`` off (a one-click unsubscribe). A link of
        a user the tenant no longer has (its tenant deleted too) is NOT_FOUND and stores
        nothing: no preferences outlive a purge."""
        await self._recipients.check_users(tenant_id, [user_id])
        rule = CategoryRule(category, Channel.EMAIL, False)

        def turn_off(current: Preferences) -> Preferences:
            kept = [
                r for r in current.rules if (r.category, r.channel) != (category, Channel.EMAIL)
            ]
            return replace(current, rules=(*kept, rule))

        await self._store.update_preferences(tenant_id, user_id, turn_off, now=self._clock())

    # -- tenant settings ----------------------------------------------------------------

    async def tenant_settings(self, tenant_id: str) -> TenantSettings:
        """The tenant's settings; its VAPID key pair and webhook signing secret are made
        the first time they are asked for."""
        settings = await self._store.tenant_settings(tenant_id)
        missing = []
        if not settings.vapid_public_key:
            private_pem, public_key = self._new_vapid_keys()
            settings = replace(settings, vapid_private_pem=private_pem, vapid_public_key=public_key)
            missing.append(VAPID)
        if not settings.webhook_secret:
            settings = replace(settings, webhook_secret=new_secret())
            missing.append(WEBHOOK_SECRET)
        if not missing:
            return settings
        return await self._store.add_tenant_settings(
            tenant_id, settings, missing, now=self._clock()
        )

    async def update_tenant_settings(
        self, tenant_id: str, given: TenantSettings, mask: Collection[str]
    ) -> TenantSettings:
        v = Violations()
        _check_mask(v, mask, SETTINGS_FIELDS)
        if "email_from" in mask:
            checks.check_mailbox(v, "settings.email_from", given.email_from)
        if "category_defaults" in mask:
            checks.check_category_defaults(v, "settings.category_defaults", given.category_defaults)
        if "webhook_url" in mask:
            await checks.check_webhook_url(
                v,
                "settings.webhook_url",
                given.webhook_url,
                allow_private=self._options.allow_private,
            )
        if "webhook_secret" in mask:
            checks.check_webhook_secret(v, "settings.webhook_secret", given.webhook_secret)
        v.raise_if_any(InvalidNotification)
        await self.tenant_settings(tenant_id)  # the keys exist before the first change
        changes = {name: getattr(given, name) for name in mask}
        if changes.get("webhook_secret") == "":
            del changes["webhook_secret"]  # cleared: keep the one Keel made
        return await self._store.update_tenant_settings(
            tenant_id, lambda current: replace(current, **changes), changes, now=self._clock()
        )

    # -- push subscriptions -------------------------------------------------------------

    async def register_push(
        self, tenant_id: str, user_id: str, endpoint: str, p256dh: str, auth: str
    ) -> PushSubscription:
        v = Violations()
        checks.check_user_id(v, "subscription.user_id", user_id)
        checks.check_push_subscription(
            v, "subscription", endpoint, p256dh, auth, allow_private=self._options.allow_private
        )
        v.raise_if_any(InvalidNotification)
        await self._recipients.check_users(tenant_id, [user_id])
        subscription = PushSubscription(
            new_id(), UserId(user_id), endpoint, p256dh, auth, self._clock()
        )
        return await self._store.register_push_subscription(tenant_id, subscription)

    async def delete_push(self, tenant_id: str, user_id: str, endpoint: str) -> None:
        v = Violations()
        checks.check_user_id(v, "user_id", user_id)
        v.text("endpoint", endpoint, max_length=checks.MAX_URL)
        v.raise_if_any(InvalidNotification)
        await self._store.delete_push_subscription(tenant_id, user_id=user_id, endpoint=endpoint)

    async def push_subscriptions(self, tenant_id: str, user_id: str) -> list[PushSubscription]:
        _check_user(user_id)
        found = await self._store.push_subscriptions_of(tenant_id, [user_id])
        return found.get(user_id, [])


def _count_in_app(notifications: Sequence[Notification]) -> None:
    """Count the in-app deliveries a send just stored by their state: sent (in the inbox),
    held (waiting for ``send_at``) or skipped (the user turned in-app off)."""
    states: TallyCounter[str] = TallyCounter(
        delivery.state.value
        for notification in notifications
        for delivery in notification.deliveries
        if delivery.channel is Channel.IN_APP
    )
    for state, count in states.items():
        NOTIFICATION_DELIVERIES.labels(Channel.IN_APP.value, state).inc(count)


def _check_user(user_id: str, field: str = "user_id") -> None:
    v = Violations()
    checks.check_user_id(v, field, user_id)
    v.raise_if_any(InvalidNotification)


def _check_mask(v: Violations, mask: Collection[str], allowed: frozenset[str]) -> None:
    if not mask:
        v.add("update_mask", f"name the fields to change: {', '.join(sorted(allowed))}")
    unknown = set(mask) - allowed
    if unknown:
        v.add("update_mask", f"unknown fields: {', '.join(sorted(unknown))}")


def _check_scope(tenant: TenantContext, request: SendRequest) -> None:
    """PERMISSION_DENIED when a tenant without ``send:*`` asks for what needs it."""
    if tenant.allows(FULL_SCOPE):
        return
    if request.channel_id:
        raise NeedsFullSendScope(tenant.name, "sending to the members of a channel (channel_id)")
    if len(request.user_ids) > MAX_BASIC_USERS:
        raise NeedsFullSendScope(
            tenant.name, f"sending to more than {MAX_BASIC_USERS} users at once"
        )
    wider = [c for c in request.channels if c not in BASIC_CHANNELS]
    if wider:
        raise NeedsFullSendScope(tenant.name, f"sending by {' and '.join(wider)}")
    if request.send_at is not None:
        raise NeedsFullSendScope(tenant.name, "scheduling a notification (send_at)")


def request_fingerprint(request: SendRequest) -> str:
    """SHA-256 (hex) of everything a send asks, as given (its ``request_id`` aside): two
    requests with the same fingerprint ask for the same send."""
    asked = {
        "title": request.title,
        "body": request.body,
        "data": request.data,
        "category": request.category,
        "user_ids": list(request.user_ids),
        "channel_id": request.channel_id,
        "exclude_user_ids": list(request.exclude_user_ids),
        "channels": [str(c) for c in request.channels],
        "send_at": request.send_at.isoformat() if request.send_at else None,
    }
    text = json.dumps(asked, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
