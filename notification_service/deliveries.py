"""The job handlers that deliver notifications: email, push, webhook, digests, releases.

Each job's payload holds ids only (``delivery_id``, ``digest_id`` or ``send_id``); the
handler loads what they name, builds the values of :mod:`notification_service.senders.base`
and calls the sender for the channel. Kinds:

- ``notification.email`` / ``notification.push`` / ``notification.webhook``: one delivery
  (for push: to one subscription).
- ``notification.digest``: closes a digest window and sends what it holds as one email,
  or one push per subscription.
- ``notification.release``: a send's ``send_at`` came: its in-app notifications land in
  the inboxes (and are announced live), its other deliveries are scheduled.

Invariants:

- **Every attempt is recorded** (``ListDeliveryAttempts``) with its target, time,
  outcome, HTTP status and error, in the transaction that records the delivery's state.
- **Outcomes.** Success: SENT. A failure is retried through the job queue's backoff with
  jitter (the job fails, the worker retries it) and the delivery stays PENDING with the
  error; it is FAILED when the sender says retrying cannot help
  (``DeliveryFailed.permanent``) or when it was the job's last attempt. A push service
  answering 404/410 (``SubscriptionGone``) removes that subscription and fails the
  delivery to it.
- **Once-per-attempt.** A handler sends only deliveries still PENDING (or HELD for
  quiet hours, or in its digest): running a job again after its delivery settled sends
  nothing. A run that dies between the send and the record of it (``kill -9``) sends
  again on the retry: delivery is at least once, with ids that stay the same across
  attempts (email ``Message-ID <notification-id.email@keel>`` or ``<digest-id.digest@keel>``,
  webhook ``webhook-id`` = the notification or digest id, the push payload's notification
  ids) so a receiver can drop the duplicate.
- **Batched.** The jobs the worker runs at once read their inputs (delivery,
  notification, preferences, settings, push subscription) together, a few queries for
  all, and record their attempts together, one transaction for all
  (:class:`~service_kit.batching.Batcher`); each is still decided and sent on its own,
  its outcome committed before its job is settled.
- **Counted**: ``keel_notification_deliveries_total{channel,outcome}`` counts each
  delivery an attempt served (``sent`` or ``failed``, retried or not), each one skipped,
  and each in-app notification a release puts in an inbox (``sent``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from notification_service.models import (
    DIGEST_JOB,
    EMAIL_JOB,
    PUSH_JOB,
    QUEUED_CHANNELS,
    RELEASE_JOB,
    WEBHOOK_JOB,
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Hold,
    Notification,
    Preferences,
    PushSubscription,
    TenantSettings,
    Timing,
)
from notification_service.planning import NO_SMTP, channel_is_on, timing_of
from notification_service.senders.base import (
    DeliveryFailed,
    Mailer,
    NotificationContent,
    OutgoingEmail,
    PushSender,
    PushTarget,
    SubscriptionGone,
    VapidKeys,
    WebhookSender,
)
from notification_service.service import NOTIFICATION_DELIVERIES, NotificationService
from notification_service.store import DeliveryInputs, NotificationStore, Settle
from service_kit.batching import Batcher
from service_kit.clock import Clock, utcnow
from service_kit.jobs import Job, JobHandler, error_text
from service_kit.validation import new_id

log = logging.getLogger(__name__)

#: How a push message waits at the push service for an offline browser.
PUSH_TTL_SECONDS: Final = 86_400
#: Most delivery jobs whose reads (or whose outcomes) share one batch of queries.
DELIVERY_BATCH: Final = 128

#: Makes the one-click unsubscribe link of an email: (tenant, user, category) -> URL.
UnsubscribeLinks = Callable[[str, str, str], str]


class RetryLater(Exception):
    """An attempt failed and more are allowed: the job fails, and the queue retries it."""


@dataclass(frozen=True, slots=True)
class Senders:
    """The senders of this process; None: the channel cannot be used here."""

    mailer: Mailer | None = None
    push: PushSender | None = None
    webhook: WebhookSender | None = None


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """How deliveries go: the default sender address, a bound on each attempt, the VAPID
    contact, the unsubscribe links of emails, and attempts per delivery (for releases)."""

    default_from: str
    timeout_seconds: float
    vapid_subject: str
    max_attempts: int
    unsubscribe_links: UnsubscribeLinks | None = None


def content_of(notification: Notification) -> NotificationContent:
    return NotificationContent(
        id=notification.id,
        user_id=notification.user_id,
        category=notification.category,
        title=notification.title,
        body=notification.body,
        data=notification.data,
        create_time=notification.create_time,
        channel_id=notification.channel_id,
    )


@dataclass(frozen=True, slots=True)
class _Read:
    """What an attempt's checks read: the user's preferences, the tenant's settings, and
    (push) the subscription."""

    preferences: Preferences
    settings: TenantSettings
    subscription: PushSubscription | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one attempt came to."""

    state: DeliveryState
    status_code: int = 0
    error: str = ""
    final: bool = True


#: One attempt: the deliveries it serves (with their notifications), its target, and the
#: call that makes it (returning the HTTP status, or 0).
_Batch = Sequence[tuple[Delivery, Notification]]
_Send = Callable[[], Awaitable[int]]


class DeliveryJobs:
    """The handlers of the notification jobs (see the module docstring)."""

    def __init__(
        self,
        store: NotificationStore,
        service: NotificationService,
        senders: Senders,
        options: DeliveryOptions,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self._service = service
        self._senders = senders
        self._options = options
        self._clock = clock
        # Concurrent jobs read their inputs, and record their outcomes, together.
        self._inputs: Batcher[str, DeliveryInputs | None] = Batcher(
            self._read_inputs, max_batch=DELIVERY_BATCH
        )
        self._settles: Batcher[Settle, None] = Batcher(self._settle_batch, max_batch=DELIVERY_BATCH)

    async def _read_inputs(self, delivery_ids: list[str]) -> list[DeliveryInputs | None]:
        found = await self._store.delivery_inputs(delivery_ids)
        return [found.get(delivery_id) for delivery_id in delivery_ids]

    async def _settle_batch(self, settles: list[Settle]) -> list[None]:
        await self._store.settle_many(settles)
        return [None] * len(settles)

    def handlers(self) -> dict[str, JobHandler]:
        return {
            EMAIL_JOB: self.deliver,
            PUSH_JOB: self.deliver,
            WEBHOOK_JOB: self.deliver,
            DIGEST_JOB: self.digest,
            RELEASE_JOB: self.release,
        }

    # -- one delivery -------------------------------------------------------------------

    async def deliver(self, job: Job) -> None:
        """Deliver the one email, push or webhook delivery ``job`` names."""
        inputs = await self._inputs.submit(str(job.payload.get("delivery_id", "")))
        if inputs is None:
            return  # gone with its tenant
        delivery, notification = inputs.delivery, inputs.notification
        due = delivery.state is DeliveryState.PENDING or (
            delivery.state is DeliveryState.HELD and delivery.hold is Hold.QUIET_HOURS
        )
        if not due or delivery.channel not in QUEUED_CHANNELS:
            return  # settled by an earlier run
        settings = inputs.settings
        if not (settings.vapid_public_key and settings.webhook_secret):
            settings = await self._service.tenant_settings(notification.tenant_id)  # makes them
        read = _Read(inputs.preferences, settings, inputs.subscription)
        batch = [(delivery, notification)]
        if delivery.channel is Channel.EMAIL:
            await self._email(job, batch, f"<{notification.id}.email@keel>", read)
        elif delivery.channel is Channel.PUSH:
            await self._push(job, batch, delivery.subscription_id, read)
        else:
            await self._webhook(job, batch, notification.id, read)

    async def _read(self, notification: Notification) -> _Read:
        """What a digest's attempt reads (one job's, alone)."""
        return _Read(
            await self._preferences(notification),
            await self._service.tenant_settings(notification.tenant_id),
        )

    async def _email(
        self, job: Job, batch: _Batch, message_id: str, read: _Read | None = None
    ) -> None:
        notification = batch[0][1]
        read = read or await self._read(notification)
        preferences, settings = read.preferences, read.settings
        mailer = self._senders.mailer
        if mailer is None:
            return await self._skip(batch, NO_SMTP)
        if not preferences.email:
            return await self._skip(batch, "the user has no email address in their preferences")
        if off := channel_is_on(Channel.EMAIL, notification.category, preferences, settings):
            return await self._skip(batch, off)  # turned off (unsubscribed) since it was queued
        links = self._options.unsubscribe_links
        email = OutgoingEmail(
            to=preferences.email,
            sender=settings.email_from or self._options.default_from,
            items=[content_of(n) for _, n in batch],
            message_id=message_id,
            unsubscribe_url=(
                links(notification.tenant_id, notification.user_id, notification.category)
                if links
                else ""
            ),
        )

        async def send() -> int:
            await mailer.send(email)
            return 0

        await self._attempt(job, batch, Channel.EMAIL, email.to, send)

    async def _push(
        self, job: Job, batch: _Batch, subscription_id: str | None, read: _Read | None = None
    ) -> None:
        notification = batch[0][1]
        sender = self._senders.push
        if read is not None:
            subscription = read.subscription
        elif subscription_id:
            subscription = await self._store.push_subscription(
                notification.tenant_id, subscription_id
            )
        else:
            subscription = None
        if sender is None:
            return await self._skip(batch, "Web Push is not available in this process")
        if subscription is None:
            return await self._skip(batch, "the push subscription was removed")
        if subscription.user_id != notification.user_id:
            # The browser was registered again by another user (the row and its id moved
            # with it): what was queued for the previous user must not reach it.
            return await self._skip(batch, "the browser's push subscription is another user's now")
        read = read or await self._read(notification)
        preferences, settings = read.preferences, read.settings
        if off := channel_is_on(Channel.PUSH, notification.category, preferences, settings):
            return await self._skip(batch, off)  # turned off since it was queued
        vapid = VapidKeys(
            settings.vapid_private_pem, settings.vapid_public_key, self._options.vapid_subject
        )
        target = PushTarget(subscription.endpoint, subscription.p256dh, subscription.auth)
        items = [content_of(n) for _, n in batch]

        async def send() -> int:
            return await sender.send(target, items, vapid, ttl_seconds=PUSH_TTL_SECONDS)

        gone = await self._attempt(job, batch, Channel.PUSH, target.endpoint, send)
        if gone:
            await self._store.delete_push_subscription(
                notification.tenant_id, subscription_id=subscription.id
            )

    async def _webhook(
        self, job: Job, batch: _Batch, message_id: str, read: _Read | None = None
    ) -> None:
        notification = batch[0][1]
        sender = self._senders.webhook
        read = read or await self._read(notification)
        preferences, settings = read.preferences, read.settings
        if off := channel_is_on(Channel.WEBHOOK, notification.category, preferences, settings):
            return await self._skip(batch, off)  # turned off since it was queued
        url, secret = _webhook_target(preferences, settings)
        if sender is None:
            return await self._skip(batch, "webhook notifications are not available here")
        if not url:
            return await self._skip(batch, "no webhook URL (neither the user's nor the tenant's)")
        items = [content_of(n) for _, n in batch]

        async def send() -> int:
            return await sender.post(url, secret, message_id, items)

        await self._attempt(job, batch, Channel.WEBHOOK, url, send)

    # -- digests and releases -----------------------------------------------------------

    async def digest(self, job: Job) -> None:
        """Close the digest window ``job`` names and send what it holds at once."""
        closed = await self._store.close_digest(str(job.payload.get("digest_id", "")))
        if closed is None or not closed[1]:
            return
        digest, batch = closed
        if digest.channel is Channel.EMAIL:
            await self._email(job, batch, f"<{digest.id}.digest@keel>")
            return
        by_subscription: dict[str | None, list[tuple[Delivery, Notification]]] = defaultdict(list)
        for delivery, notification in batch:
            by_subscription[delivery.subscription_id].append((delivery, notification))
        retry: RetryLater | None = None
        for subscription_id, group in by_subscription.items():
            try:
                await self._push(job, group, subscription_id)
            except RetryLater as exc:  # the other subscriptions still get theirs
                retry = exc
        if retry is not None:
            raise retry

    async def release(self, job: Job) -> None:
        """Release the send ``job`` names (its ``send_at`` came)."""
        tenant_id, send_id = job.tenant_id or "", str(job.payload.get("send_id", ""))
        held = await self._store.scheduled_deliveries(tenant_id, send_id)
        if not held:
            return
        now = self._clock()
        users = sorted({user_id for _, user_id, _ in held})
        preferences = await self._store.preferences_of(tenant_id, users)
        settings = await self._service.tenant_settings(tenant_id)
        timings: dict[str, Timing] = {}
        for delivery, user_id, category in held:
            if delivery.channel in QUEUED_CHANNELS:
                timings[delivery.id] = timing_of(
                    delivery.channel,
                    category,
                    preferences.get(user_id) or Preferences(user_id),
                    settings,
                    now=now,
                )
        landed = await self._store.release(
            tenant_id, send_id, timings, now=now, max_attempts=self._options.max_attempts
        )
        NOTIFICATION_DELIVERIES.labels(Channel.IN_APP.value, "sent").inc(len(landed))
        await self._service.announce(
            tenant_id, await self._store.get_notifications(tenant_id, landed)
        )

    # -- attempts -----------------------------------------------------------------------

    async def _attempt(
        self, job: Job, batch: _Batch, channel: Channel, target: str, send: _Send
    ) -> bool:
        """Make one attempt for ``batch``, record it and settle the deliveries; True when
        the push subscription is gone. Raises :class:`RetryLater` when another attempt is
        due."""
        started = self._clock()
        outcome, gone = await self._try(job, send)
        attempts = [
            DeliveryAttempt(
                id=new_id(),
                notification_id=notification.id,
                channel=channel,
                target=target,
                attempt_time=started,
                state=outcome.state,
                status_code=outcome.status_code,
                error=outcome.error,
                delivery_id=delivery.id,
            )
            for delivery, notification in batch
        ]
        state = outcome.state if outcome.final else DeliveryState.PENDING
        error = outcome.error
        if not outcome.final:
            error = f"attempt {job.attempt} failed: {outcome.error}; it will be retried"
        await self._settles.submit(
            Settle(
                batch[0][0].tenant_id,
                [delivery.id for delivery, _ in batch],
                attempts,
                state,
                error,
                self._clock(),
            )
        )
        NOTIFICATION_DELIVERIES.labels(channel.value, outcome.state.value).inc(len(batch))
        if not outcome.final:
            raise RetryLater(outcome.error)
        return gone

    async def _try(self, job: Job, send: _Send) -> tuple[_Outcome, bool]:
        last = job.max_attempts is not None and job.attempt >= job.max_attempts
        try:
            async with asyncio.timeout(self._options.timeout_seconds):
                status = await send()
        except SubscriptionGone as exc:
            error = f"subscription gone: {exc}"
            return _Outcome(DeliveryState.FAILED, exc.status_code, error), True
        except DeliveryFailed as exc:
            final = exc.permanent or last
            return _Outcome(DeliveryState.FAILED, exc.status_code, str(exc), final), False
        except TimeoutError:
            error = f"no answer within {self._options.timeout_seconds:g} s"
            return _Outcome(DeliveryState.FAILED, 0, error, last), False
        except Exception as exc:  # a sender's bug must not lose the attempt's record
            log.exception("a sender failed unexpectedly", extra={"job_id": job.id})
            return _Outcome(DeliveryState.FAILED, 0, error_text(exc), last), False
        return _Outcome(DeliveryState.SENT, status), False

    async def _skip(self, batch: _Batch, why: str) -> None:
        await self._settles.submit(
            Settle(
                batch[0][0].tenant_id,
                [delivery.id for delivery, _ in batch],
                [],
                DeliveryState.SKIPPED,
                why,
                self._clock(),
            )
        )
        for delivery, _ in batch:
            NOTIFICATION_DELIVERIES.labels(delivery.channel.value, "skipped").inc()

    async def _preferences(self, notification: Notification) -> Preferences:
        found = await self._store.preferences_of(notification.tenant_id, [notification.user_id])
        return found.get(notification.user_id) or Preferences(notification.user_id)


def _webhook_target(preferences: Preferences, settings: TenantSettings) -> tuple[str, str]:
    """The URL and signing secret of a user's webhook notifications: the user's URL
    (signed with the user's secret, or the tenant's), else the tenant's."""
    if preferences.webhook_url:
        return preferences.webhook_url, preferences.webhook_secret or settings.webhook_secret
    return settings.webhook_url, settings.webhook_secret
