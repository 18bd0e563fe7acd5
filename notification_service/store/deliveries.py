"""What the delivery jobs read and write: a delivery with its notification, the closing of
a digest window, and the outcome of each attempt.

Invariants:

- **Every attempt is recorded**, in the transaction that records its outcome.
- **A delivery settles once.** Its state leaves PENDING or HELD only through
  :meth:`SqlDeliveries.settle`, which changes only deliveries still PENDING or HELD, so a
  job that runs twice cannot turn a SENT delivery into FAILED (its attempt is recorded
  all the same: it happened).
- **Batches.** :meth:`SqlDeliveries.delivery_inputs` reads what many delivery jobs need
  (their deliveries, notifications, the users' preferences, the tenants' settings, the
  push subscriptions) in a fixed number of queries on one connection, and
  :meth:`SqlDeliveries.settle_many` records many attempts' outcomes in one transaction
  of two statements: the delivery worker's concurrent jobs share them.
- **A digest closes before it is read.** :meth:`SqlDeliveries.close_digest` clears the
  window's ``open_key`` (new notifications then open a new window) and, in the same
  transaction, reads what it holds (see :mod:`notification_service.store.sends`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notification_service.models import (
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Digest,
    Hold,
    Notification,
    Preferences,
    PushSubscription,
    TenantSettings,
    UserId,
)
from notification_service.store.base import SqlStoreBase, chunks, load_notifications
from notification_service.store.rows import to_attempt, to_delivery, to_subscription
from notification_service.store.settings import read_preferences, read_tenant_settings
from service_kit.db import as_utc, keyset_page, write_transaction
from service_kit.schema import (
    notification_attempts,
    notification_deliveries,
    notification_digests,
    push_subscriptions,
)

_OPEN = (DeliveryState.PENDING, DeliveryState.HELD)


@dataclass(frozen=True, slots=True)
class DeliveryInputs:
    """What a delivery job reads before its attempt: the delivery, its notification, the
    user's preferences, the tenant's settings, and (push) the subscription, None when it
    was removed."""

    delivery: Delivery
    notification: Notification
    preferences: Preferences
    settings: TenantSettings
    subscription: PushSubscription | None


@dataclass(frozen=True, slots=True)
class Settle:
    """One attempt's outcome to record (:meth:`SqlDeliveries.settle_many`): its attempt
    rows, and the new ``state`` and ``error`` of the deliveries still PENDING or HELD."""

    tenant_id: str
    delivery_ids: Sequence[str]
    attempts: Sequence[DeliveryAttempt]
    state: DeliveryState
    error: str
    now: datetime


class SqlDeliveries(SqlStoreBase):
    """Deliveries, digests and attempts in SQL (see the module docstring)."""

    async def delivery(self, delivery_id: str) -> tuple[Delivery, Notification] | None:
        """A delivery and its notification; None when either is gone (a purged tenant)."""
        query = select(notification_deliveries).where(notification_deliveries.c.id == delivery_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            delivery = to_delivery(row._mapping)
            found = await load_notifications(conn, delivery.tenant_id, [delivery.notification_id])
        return (delivery, found[0]) if found else None

    async def delivery_inputs(self, delivery_ids: Sequence[str]) -> dict[str, DeliveryInputs]:
        """What the delivery jobs of ``delivery_ids`` need, by delivery id (those gone with
        their tenant: absent), read on one connection in a few queries for them all."""
        async with self._engine.connect() as conn:
            found = []
            for part in chunks(sorted(set(delivery_ids))):
                query = select(notification_deliveries).where(
                    notification_deliveries.c.id.in_(part)
                )
                found += [to_delivery(r._mapping) for r in (await conn.execute(query)).all()]
            by_tenant: dict[str, list[Delivery]] = defaultdict(list)
            for delivery in found:
                by_tenant[delivery.tenant_id].append(delivery)
            inputs: dict[str, DeliveryInputs] = {}
            for tenant_id, deliveries in by_tenant.items():
                loaded = await load_notifications(
                    conn, tenant_id, sorted({d.notification_id for d in deliveries})
                )
                notes = {n.id: n for n in loaded}
                users = sorted({n.user_id for n in loaded})
                preferences = await read_preferences(conn, tenant_id, users)
                settings = await read_tenant_settings(conn, tenant_id)
                subscriptions = await _subscriptions(
                    conn,
                    tenant_id,
                    sorted({d.subscription_id for d in deliveries if d.subscription_id}),
                )
                for delivery in deliveries:
                    notification = notes.get(delivery.notification_id)
                    if notification is None:
                        continue
                    inputs[delivery.id] = DeliveryInputs(
                        delivery,
                        notification,
                        preferences.get(notification.user_id) or Preferences(notification.user_id),
                        settings,
                        subscriptions.get(delivery.subscription_id or ""),
                    )
        return inputs

    async def settle(
        self,
        tenant_id: str,
        delivery_ids: Sequence[str],
        attempts: Sequence[DeliveryAttempt],
        *,
        state: DeliveryState,
        error: str,
        now: datetime,
    ) -> int:
        """Record ``attempts`` and move those of the deliveries still PENDING or HELD to
        ``state`` (PENDING: to be tried again) with ``error``; returns how many moved."""
        moved = 0
        async with write_transaction(self._engine) as conn:
            await _insert_attempts(conn, [(tenant_id, a) for a in attempts])
            for part in chunks(delivery_ids):
                result = await conn.execute(
                    update(notification_deliveries)
                    .where(
                        notification_deliveries.c.id.in_(part),
                        notification_deliveries.c.state.in_(_OPEN),
                    )
                    .values(state=state, hold=Hold.NONE, error=error[:1000], update_time=now)
                )
                moved += result.rowcount
        return moved

    async def settle_many(self, settles: Sequence[Settle]) -> None:
        """:meth:`settle` for many attempts at once: one transaction, one statement for
        every attempt row and one (executemany) for every delivery."""
        changes = [
            {
                "b_id": delivery_id,
                "b_state": s.state,
                "b_error": s.error[:1000],
                "b_now": s.now,
            }
            for s in settles
            for delivery_id in s.delivery_ids
        ]
        async with write_transaction(self._engine) as conn:
            await _insert_attempts(conn, [(s.tenant_id, a) for s in settles for a in s.attempts])
            if changes:
                await conn.execute(_SETTLE_DELIVERY, changes)

    async def close_digest(
        self, digest_id: str
    ) -> tuple[Digest, list[tuple[Delivery, Notification]]] | None:
        """Close the digest window (if still open) and return it with the deliveries it
        still holds (HELD, or PENDING after a failed attempt), oldest notification first;
        None when there is no such window."""
        async with write_transaction(self._engine) as conn:
            row = (
                await conn.execute(
                    select(notification_digests)
                    .where(notification_digests.c.id == digest_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                return None
            if row.open_key is not None:
                await conn.execute(
                    update(notification_digests)
                    .where(notification_digests.c.id == digest_id)
                    .values(open_key=None)
                )
            digest = Digest(
                row.id,
                row.tenant_id,
                UserId(row.user_id),
                row.category,
                Channel(row.channel),
                as_utc(row.end_time),
            )
            held = [
                to_delivery(r._mapping)
                for r in (
                    await conn.execute(
                        select(notification_deliveries).where(
                            notification_deliveries.c.digest_id == digest_id,
                            notification_deliveries.c.state.in_(_OPEN),
                        )
                    )
                ).all()
            ]
            found = await load_notifications(
                conn, digest.tenant_id, sorted({d.notification_id for d in held})
            )
        by_id = {n.id: n for n in found}
        pairs = [(d, by_id[d.notification_id]) for d in held if d.notification_id in by_id]
        pairs.sort(key=lambda pair: (pair[1].create_time, pair[1].id))
        return digest, pairs

    async def list_attempts(
        self,
        tenant_id: str,
        notification_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[DeliveryAttempt]:
        """Up to ``limit`` attempts of the notification, oldest first, after ``after``."""
        query = select(notification_attempts).where(
            notification_attempts.c.tenant_id == tenant_id,
            notification_attempts.c.notification_id == notification_id,
        )
        query = keyset_page(
            query,
            notification_attempts.c.attempt_time,
            notification_attempts.c.id,
            limit=limit,
            after=after,
        )
        async with self._engine.connect() as conn:
            return [to_attempt(r._mapping) for r in (await conn.execute(query)).all()]


async def _subscriptions(
    conn: AsyncConnection, tenant_id: str, ids: Sequence[str]
) -> dict[str, PushSubscription]:
    found: dict[str, PushSubscription] = {}
    for part in chunks(ids):
        query = select(push_subscriptions).where(
            push_subscriptions.c.tenant_id == tenant_id, push_subscriptions.c.id.in_(part)
        )
        found |= {r.id: to_subscription(r._mapping) for r in (await conn.execute(query)).all()}
    return found


async def _insert_attempts(
    conn: AsyncConnection, attempts: Sequence[tuple[str, DeliveryAttempt]]
) -> None:
    if attempts:
        await conn.execute(
            insert(notification_attempts),
            [
                {
                    "id": a.id,
                    "tenant_id": tenant_id,
                    "notification_id": a.notification_id,
                    "delivery_id": a.delivery_id,
                    "channel": str(a.channel),
                    "target": a.target[:2048],
                    "attempt_time": a.attempt_time,
                    "state": a.state,
                    "status_code": a.status_code,
                    "error": a.error[:1000],
                }
                for tenant_id, a in attempts
            ],
        )


# executemany: a delivery moves only while PENDING or HELD (it settles once).
_SETTLE_DELIVERY = (
    update(notification_deliveries)
    .where(
        notification_deliveries.c.id == bindparam("b_id"),
        # not IN (…): an expanding parameter cannot go in an executemany
        (notification_deliveries.c.state == DeliveryState.PENDING)
        | (notification_deliveries.c.state == DeliveryState.HELD),
    )
    .values(
        state=bindparam("b_state"),
        hold=Hold.NONE,
        error=bindparam("b_error"),
        update_time=bindparam("b_now"),
    )
)
