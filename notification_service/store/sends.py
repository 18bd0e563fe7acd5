"""Storing a send: its notifications, their deliveries and the jobs that deliver them, in
one transaction; and releasing a send scheduled for later.

Invariants:

- **One transaction.** A send's request id, notifications, deliveries, digest windows and
  jobs commit together or not at all: a job exists if and only if its delivery does. The
  same transaction (one connection checkout) reads what planning needs (preferences,
  tenant settings, push subscriptions) and, after its writes, the unread counts of the
  inboxes the send landed in, which are those counts as of its commit.
- **Once per request id.** The request row is written first; a second send with the same
  (tenant, request id) finds it (on PostgreSQL it waits for the first to commit) and
  stores nothing (:class:`SendExists`).
- **One open digest window** per (tenant, user, category, channel), by the unique
  ``open_key``. A send that joins a window locks its row (PostgreSQL), so the digest job,
  which closes the window before reading what it holds, waits for the send to commit and
  then sees its deliveries; a send that comes after the close opens a new window.
- **Release once.** Only deliveries still HELD for their ``send_at`` are released, so a
  release job that runs twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notification_service.models import (
    DELIVERY_JOBS,
    DIGEST_JOB,
    RELEASE_JOB,
    Channel,
    Delivery,
    DeliveryState,
    Hold,
    Notification,
    NotificationId,
    PlannedChannel,
    PlannedRecipient,
    Preferences,
    PushSubscription,
    SendRequest,
    TenantSettings,
    Timing,
    UserId,
)
from notification_service.planning import digest_due
from notification_service.store.base import SqlStoreBase, chunks, with_deliveries
from notification_service.store.inbox import read_unread_counts
from notification_service.store.rows import to_delivery, to_notification
from notification_service.store.settings import (
    read_preferences,
    read_push_subscriptions,
    read_tenant_settings,
)
from service_kit import jobs
from service_kit.clock import rfc3339
from service_kit.db import as_utc, insert_ignoring_conflicts, write_transaction
from service_kit.schema import (
    notification_deliveries,
    notification_digests,
    notification_requests,
    notifications,
)
from service_kit.validation import new_id


class SendExists(Exception):
    """The tenant already made a send with this request id: ``send_id``, of a request
    with ``fingerprint``."""

    def __init__(self, send_id: str, fingerprint: str) -> None:
        super().__init__(f"request already sent as {send_id}")
        self.send_id = send_id
        self.fingerprint = fingerprint


@dataclass(frozen=True, slots=True)
class SendInputs:
    """What planning a send needs from storage, read in the send's transaction."""

    preferences: Mapping[str, Preferences]
    settings: TenantSettings
    #: Each recipient's push subscriptions, oldest first; empty unless the send may push.
    subscriptions: Mapping[str, list[PushSubscription]]


#: Plans every recipient of a send from what was read (pure: no I/O).
SendPlanner = Callable[[SendInputs], Sequence[PlannedRecipient]]


@dataclass(frozen=True, slots=True)
class NewSend:
    """A checked SendNotification to ``user_ids``, ready to plan and store."""

    tenant_id: str
    send_id: str
    request: SendRequest
    user_ids: Sequence[UserId]
    plan: SendPlanner
    now: datetime
    max_attempts: int
    fingerprint: str = ""  # of the request, kept with its request_id


@dataclass(frozen=True, slots=True)
class StoredSend:
    """A committed send: its notifications in order, the unread count of every inbox it
    landed in (as of its commit), the tenant settings it was planned with, and whether
    it enqueued a job due at once."""

    notifications: list[Notification]
    unread: dict[str, int]
    settings: TenantSettings
    jobs_due: bool


@dataclass(slots=True)
class _Scheduler:
    """Schedules the queued deliveries of one transaction (digest windows it opened or
    joined are remembered, so a send joins each at most once)."""

    conn: AsyncConnection
    tenant_id: str
    now: datetime
    max_attempts: int
    windows: dict[str, tuple[str, datetime]] = field(default_factory=dict)

    async def schedule(
        self, delivery_id: str, user_id: str, category: str, channel: Channel, timing: Timing
    ) -> dict[str, Any]:
        """Enqueue what delivers ``delivery_id``; its new state, hold, error, digest."""
        if timing.digest_seconds > 0:
            digest_id, due = await self._window(user_id, category, channel, timing)
            return {
                "state": DeliveryState.HELD,
                "hold": Hold.DIGEST,
                "error": f"digest until {rfc3339(due)}",
                "digest_id": digest_id,
            }
        run_after = timing.hold_until
        await jobs.enqueue(
            self.conn,
            DELIVERY_JOBS[channel],
            {"delivery_id": delivery_id},
            now=self.now,
            tenant_id=self.tenant_id,
            run_after=run_after or self.now,
            max_attempts=self.max_attempts,
        )
        if run_after is not None:
            return {
                "state": DeliveryState.HELD,
                "hold": Hold.QUIET_HOURS,
                "error": f"quiet hours until {rfc3339(run_after)}",
                "digest_id": None,
            }
        return {"state": DeliveryState.PENDING, "hold": Hold.NONE, "error": "", "digest_id": None}

    async def _window(
        self, user_id: str, category: str, channel: Channel, timing: Timing
    ) -> tuple[str, datetime]:
        """The open digest window of (user, category, channel): its id and when its digest
        goes; one is opened (with its job) when none is."""
        key = f"{self.tenant_id}:{channel}:{category}:{user_id}"
        if key in self.windows:
            return self.windows[key]
        query = (
            select(notification_digests.c.id, notification_digests.c.end_time)
            .where(notification_digests.c.open_key == key)
            .with_for_update()
        )
        row = (await self.conn.execute(query)).first()
        if row is None:
            due = digest_due(self.now + timedelta(seconds=timing.digest_seconds), timing.quiet)
            digest_id = new_id()
            opened = await self.conn.execute(
                insert_ignoring_conflicts(self.conn, notification_digests).values(
                    id=digest_id,
                    tenant_id=self.tenant_id,
                    user_id=user_id,
                    category=category,
                    channel=str(channel),
                    open_key=key,
                    start_time=self.now,
                    end_time=due,
                )
            )
            if opened.rowcount == 1:
                await jobs.enqueue(
                    self.conn,
                    DIGEST_JOB,
                    {"digest_id": digest_id},
                    now=self.now,
                    tenant_id=self.tenant_id,
                    run_after=due,
                    max_attempts=self.max_attempts,
                )
                self.windows[key] = (digest_id, due)
                return self.windows[key]
            row = (await self.conn.execute(query)).one()  # another send opened it just now
        self.windows[key] = (row.id, as_utc(row.end_time))  # SQLite reads naive UTC
        return self.windows[key]


class SqlSends(SqlStoreBase):
    """Sends in SQL (see the module docstring)."""

    async def find_send(self, tenant_id: str, request_id: str) -> tuple[str, str] | None:
        """The send the tenant made with ``request_id`` and its request's fingerprint, if
        any."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(_request(tenant_id, request_id))).first()
        return (row.send_id, row.fingerprint) if row else None

    async def send_notifications(self, tenant_id: str, send_id: str) -> list[Notification]:
        """The notifications of a send, in its order, as they are now."""
        query = (
            select(notifications)
            .where(notifications.c.send_id == send_id, notifications.c.tenant_id == tenant_id)
            .order_by(notifications.c.position)
        )
        async with self._engine.connect() as conn:
            rows = [r._mapping for r in (await conn.execute(query)).all()]
            return await with_deliveries(conn, rows)

    async def create_send(self, send: NewSend) -> StoredSend:
        """Plan ``send`` with ``send.plan`` on what its transaction reads, and store it
        (see the module docstring). Raises :class:`SendExists` when its request id was
        used, storing nothing."""
        async with write_transaction(self._engine) as conn:
            if send.request.request_id:
                await _claim_request_id(conn, send)
            inputs = SendInputs(
                await read_preferences(conn, send.tenant_id, send.user_ids),
                await read_tenant_settings(conn, send.tenant_id),
                await read_push_subscriptions(conn, send.tenant_id, send.user_ids)
                if Channel.PUSH in send.request.channels
                else {},
            )
            recipients = send.plan(inputs)
            rows = [_notification_row(send, r, position) for position, r in enumerate(recipients)]
            for part in chunks(rows):
                await conn.execute(insert(notifications), list(part))
            scheduler = _Scheduler(conn, send.tenant_id, send.now, send.max_attempts)
            deliveries: list[dict[str, Any]] = []
            # Digest windows are locked in one order, (user, channel), in every transaction
            # (see _held_for_release too), so concurrent sends never deadlock on them.
            for recipient in sorted(recipients, key=lambda r: r.user_id):
                for planned in sorted(recipient.channels, key=lambda c: str(c.channel)):
                    deliveries += await _deliveries_of(scheduler, send, recipient, planned)
            for part in chunks(deliveries):
                await conn.execute(insert(notification_deliveries), list(part))
            landed = [row["user_id"] for row in rows if row["inbox_time"] is not None]
            unread = await read_unread_counts(conn, send.tenant_id, landed) if landed else {}
            if send.request.send_at is not None:
                await jobs.enqueue(
                    conn,
                    RELEASE_JOB,
                    {"send_id": send.send_id},
                    now=send.now,
                    tenant_id=send.tenant_id,
                    run_after=send.request.send_at,
                    max_attempts=send.max_attempts,
                )
        grouped: dict[str, list[Delivery]] = {row["id"]: [] for row in rows}
        for delivery in deliveries:
            grouped[delivery["notification_id"]].append(to_delivery(delivery))
        return StoredSend(
            [to_notification(row, grouped[row["id"]]) for row in rows],
            unread,
            inputs.settings,
            jobs_due=any(d["state"] == DeliveryState.PENDING for d in deliveries),
        )

    async def scheduled_deliveries(
        self, tenant_id: str, send_id: str
    ) -> list[tuple[Delivery, UserId, str]]:
        """The deliveries of a send still waiting for its ``send_at``, each with its
        notification's user and category."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_held_for_release(tenant_id, send_id))).all()
        return [(to_delivery(r._mapping), UserId(r.user_id), r.category) for r in rows]

    async def release(
        self,
        tenant_id: str,
        send_id: str,
        timings: Mapping[str, Timing],
        *,
        now: datetime,
        max_attempts: int,
    ) -> list[NotificationId]:
        """Release a send's deliveries still held for its ``send_at``: in-app ones land in
        the inbox now, the others are scheduled with ``timings`` (by delivery id; at once
        when missing). Returns the notifications that landed in an inbox."""
        async with write_transaction(self._engine) as conn:
            query = _held_for_release(tenant_id, send_id).with_for_update(
                of=notification_deliveries
            )
            held = [
                (to_delivery(r._mapping), r.user_id, r.category)
                for r in (await conn.execute(query)).all()
            ]
            scheduler = _Scheduler(conn, tenant_id, now, max_attempts)
            landed: list[NotificationId] = []
            for delivery, user_id, category in held:
                if delivery.channel is Channel.IN_APP:
                    values: dict[str, Any] = {
                        "state": DeliveryState.SENT,
                        "hold": Hold.NONE,
                        "error": "",
                    }
                    landed.append(delivery.notification_id)
                else:
                    values = await scheduler.schedule(
                        delivery.id,
                        user_id,
                        category,
                        delivery.channel,
                        timings.get(delivery.id, Timing()),
                    )
                await conn.execute(
                    update(notification_deliveries)
                    .where(notification_deliveries.c.id == delivery.id)
                    .values(**values, update_time=now)
                )
            for part in chunks(landed):
                await conn.execute(
                    update(notifications).where(notifications.c.id.in_(part)).values(inbox_time=now)
                )
        return landed


def _held_for_release(tenant_id: str, send_id: str) -> Select[Any]:
    return (
        select(notification_deliveries, notifications.c.user_id, notifications.c.category)
        .join(notifications, notifications.c.id == notification_deliveries.c.notification_id)
        .where(
            notifications.c.send_id == send_id,
            notifications.c.tenant_id == tenant_id,
            notification_deliveries.c.state == DeliveryState.HELD,
            notification_deliveries.c.hold == Hold.SCHEDULED,
        )
        .order_by(notifications.c.user_id, notification_deliveries.c.channel)
    )


async def _claim_request_id(conn: AsyncConnection, send: NewSend) -> None:
    """Write the request row first; raise :class:`SendExists` when the id was used."""
    claimed = await conn.execute(
        insert_ignoring_conflicts(conn, notification_requests).values(
            tenant_id=send.tenant_id,
            request_id=send.request.request_id,
            send_id=send.send_id,
            fingerprint=send.fingerprint,
            create_time=send.now,
        )
    )
    if claimed.rowcount != 1:
        row = (await conn.execute(_request(send.tenant_id, send.request.request_id))).one()
        raise SendExists(row.send_id, row.fingerprint)


def _request(tenant_id: str, request_id: str) -> Select[Any]:
    return select(notification_requests.c.send_id, notification_requests.c.fingerprint).where(
        notification_requests.c.tenant_id == tenant_id,
        notification_requests.c.request_id == request_id,
    )


def _notification_row(send: NewSend, recipient: PlannedRecipient, position: int) -> dict[str, Any]:
    request = send.request
    in_app = any(p.channel is Channel.IN_APP and p.skipped is None for p in recipient.channels)
    return {
        "id": recipient.notification_id,
        "tenant_id": send.tenant_id,
        "user_id": recipient.user_id,
        "send_id": send.send_id,
        "position": position,
        "category": request.category,
        "title": request.title,
        "body": request.body,
        "data": dict(request.data),
        "channels": [str(c) for c in request.channels],
        "channel_id": request.channel_id or None,
        "create_time": send.now,
        "send_time": request.send_at,
        "inbox_time": send.now if in_app and request.send_at is None else None,
        "read_time": None,
    }


async def _deliveries_of(
    scheduler: _Scheduler, send: NewSend, recipient: PlannedRecipient, planned: PlannedChannel
) -> list[dict[str, Any]]:
    """The delivery rows of one recipient's channel (one per push subscription), with
    their jobs enqueued."""
    base = {
        "tenant_id": send.tenant_id,
        "notification_id": recipient.notification_id,
        "channel": str(planned.channel),
        "subscription_id": None,
        "digest_id": None,
        "update_time": send.now,
    }
    if planned.skipped is not None:
        return [
            base
            | {
                "id": new_id(),
                "state": DeliveryState.SKIPPED,
                "hold": Hold.NONE,
                "error": planned.skipped,
            }
        ]
    send_at = send.request.send_at
    targets: Sequence[str | None] = (
        planned.subscription_ids if planned.channel is Channel.PUSH else [None]
    )
    rows = []
    for subscription_id in targets:
        delivery_id = new_id()
        row = base | {"id": delivery_id, "subscription_id": subscription_id}
        if send_at is not None:
            row |= {
                "state": DeliveryState.HELD,
                "hold": Hold.SCHEDULED,
                "error": f"scheduled for {rfc3339(send_at)}",
            }
        elif planned.channel is Channel.IN_APP:
            row |= {"state": DeliveryState.SENT, "hold": Hold.NONE, "error": ""}
        else:
            row |= await scheduler.schedule(
                delivery_id,
                recipient.user_id,
                send.request.category,
                planned.channel,
                planned.timing,
            )
        rows.append(row)
    return rows
