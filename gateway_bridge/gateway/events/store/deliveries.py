"""The event store's deliveries: from the event log to deliveries, and their attempts.

A logged event becomes one pending delivery per active webhook of its tenant that
selects it (:meth:`gateway_bridge.gateway.events.webhooks.Webhook.wants`), exactly
once: the events are claimed with row locks that concurrent dispatchers skip
(PostgreSQL) and marked ``webhooks_done`` in the same transaction that inserts
their deliveries. The events of a tenant with no active webhook are recorded with
``webhooks_done`` already set (see
:func:`gateway_bridge.gateway.channels.store.base.without_webhooks`), so the fan-out
never reads, locks or rewrites them.

Each delivery is carried by a job of the kit's queue, enqueued in the transaction that
creates it (:mod:`.delivery_jobs`); :meth:`SqlDeliveries.take` gives an attempt what it
needs, or parks the delivery while its webhook is paused or disabled.

Each attempt is stored with the delivery's new state and the webhook's failure count in
one transaction, and only if the delivery is still as the attempt found it (pending,
same attempt count), so no attempt is recorded twice. A webhook is disabled when told to
or after too many failures in a row. ``keel_webhook_attempts_total{outcome}`` counts the
attempts stored: ``delivered``, ``failed`` (retried later) or ``given_up`` (the delivery
failed for good).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Select, insert, select, update

from gateway_bridge.gateway.events.store.base import SqlEventStoreBase
from gateway_bridge.gateway.events.store.delivery_jobs import queue_deliveries
from gateway_bridge.gateway.events.store.rows import (
    PARKED,
    delivery_row,
    event_payload,
    load_delivery,
    load_webhook,
    to_delivery,
    to_webhook,
    with_attempts,
)
from gateway_bridge.gateway.events.webhooks import (
    Attempt,
    Delivery,
    DeliveryStatus,
    WebhookState,
)
from service_kit.db import as_utc, claim_rows, keyset_page, write_transaction
from service_kit.schema import deliveries, delivery_attempts, events, webhooks

_PENDING = DeliveryStatus.PENDING.value

WEBHOOK_ATTEMPTS = Counter(
    "keel_webhook_attempts_total",
    "Webhook delivery attempts recorded, by outcome (delivered; failed: retried later;"
    " given_up: the delivery failed for good).",
    ["outcome"],
)
#: The outcome label of an attempt that left its delivery in this status.
_ATTEMPT_OUTCOMES = {
    DeliveryStatus.SUCCEEDED: "delivered",
    DeliveryStatus.PENDING: "failed",
    DeliveryStatus.FAILED: "given_up",
}


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery to attempt, with what the attempt needs."""

    delivery: Delivery
    tenant_id: str
    url: str
    secrets: tuple[str, ...]


class SqlDeliveries(SqlEventStoreBase):
    """Deliveries of the event store and their attempts, in SQL."""

    # -- from the event log to deliveries -----------------------------------------------

    async def fan_out(self, *, limit: int = 500) -> int:
        """Create the deliveries (and their jobs) of events no dispatcher has handled yet;
        return how many events were handled. Concurrent dispatchers skip each other's
        rows."""
        query = (
            select(events)
            .where(events.c.webhooks_done.is_(False))
            .order_by(events.c.id)
            .limit(limit)
        )
        async with write_transaction(self._engine) as conn:
            rows = await claim_rows(conn, query)
            if not rows:
                return 0
            tenants = {r.tenant_id for r in rows}
            hooks = [
                to_webhook(r._mapping)
                for r in (
                    await conn.execute(
                        select(webhooks).where(
                            webhooks.c.tenant_id.in_(tenants),
                            webhooks.c.state == WebhookState.ACTIVE.value,
                        )
                    )
                ).all()
            ]
            now = self._clock()
            await queue_deliveries(
                conn,
                now,
                [
                    delivery_row(hook, event_payload(row._mapping), now)
                    for row in rows
                    for hook in hooks
                    if hook.tenant_id == row.tenant_id and hook.wants(row.name, row.channel_id)
                ],
            )
            await conn.execute(
                update(events)
                .where(events.c.id.in_([r.id for r in rows]))
                .values(webhooks_done=True)
            )
            return len(rows)

    async def add_delivery(
        self, tenant_id: str, webhook_id: str, payload: dict[str, Any]
    ) -> Delivery:
        """Queue one delivery of ``payload`` to the webhook now (tests, redeliveries)."""
        async with write_transaction(self._engine) as conn:
            hook = await load_webhook(conn, tenant_id, webhook_id)
            now = self._clock()
            row = delivery_row(hook, payload, now)
            await queue_deliveries(conn, now, [row])
            return await load_delivery(conn, tenant_id, row["id"])

    async def replay(self, tenant_id: str, webhook_id: str, since: datetime, *, limit: int) -> int:
        """Queue deliveries of every logged event since ``since`` the webhook selects."""
        async with write_transaction(self._engine) as conn:
            hook = await load_webhook(conn, tenant_id, webhook_id)
            rows = (
                await conn.execute(
                    select(events)
                    .where(events.c.tenant_id == tenant_id, events.c.created_at >= since)
                    .order_by(events.c.id)
                    .limit(limit)
                )
            ).all()
            now = self._clock()
            new_rows = [
                delivery_row(hook, event_payload(r._mapping), now)
                for r in rows
                if hook.wants(r.name, r.channel_id)
            ]
            await queue_deliveries(conn, now, new_rows)
            return len(new_rows)

    # -- attempts -----------------------------------------------------------------------

    async def take(self, delivery_id: str) -> DueDelivery | None:
        """The delivery ``delivery_id`` with what an attempt needs, when it is pending and
        its webhook active. None when there is nothing to attempt: the delivery is settled
        or gone (its webhook deleted, its tenant purged), or its webhook is paused or
        disabled, and then the delivery is parked (see the module docstring)."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(_attempt_query(delivery_id))).first()
        if row is None or row.status != _PENDING:
            return None
        if row.state == WebhookState.ACTIVE.value:
            return self._due(row)
        async with write_transaction(self._engine) as conn:
            query = _attempt_query(delivery_id)
            if conn.dialect.name == "postgresql":
                # Waits for a transaction setting the webhook active; see resume_parked.
                query = query.with_for_update(of=webhooks, read=True)
            row = (await conn.execute(query)).first()
            if row is None or row.status != _PENDING:
                return None
            if row.state == WebhookState.ACTIVE.value:
                return self._due(row)
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.status == _PENDING)
                .values(status=PARKED, updated_at=self._clock())
            )
        return None

    def _due(self, row: Any) -> DueDelivery:
        secrets = [row.secret]
        expires = row.previous_secret_expires_at
        if row.previous_secret and expires is not None and as_utc(expires) > self._clock():
            secrets.append(row.previous_secret)
        return DueDelivery(to_delivery(row._mapping), row.tenant_id, row.url, tuple(secrets))

    async def record_attempt(
        self,
        due: DueDelivery,
        attempt: Attempt,
        *,
        succeeded: bool,
        next_attempt_at: datetime | None,
        disable_reason: str = "",
        disable_after_failures: int,
    ) -> bool:
        """Store an attempt; settle the delivery (succeeded, failed, or retry at
        ``next_attempt_at``) and the webhook's failure count, disabling it when asked to
        or when it failed ``disable_after_failures`` times in a row.

        Only while the delivery is as ``due`` found it (pending, same attempt count);
        False, and nothing stored, when it is not (or is gone: its tenant was purged)."""
        delivery = due.delivery
        if succeeded:
            status = DeliveryStatus.SUCCEEDED
        elif next_attempt_at is None or disable_reason:
            status = DeliveryStatus.FAILED
        else:
            status = DeliveryStatus.PENDING
        async with write_transaction(self._engine) as conn:
            settled = await conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery.id,
                    deliveries.c.status == _PENDING,
                    deliveries.c.attempt_count == delivery.attempt_count,
                )
                .values(
                    status=status.value,
                    attempt_count=deliveries.c.attempt_count + 1,
                    next_attempt_at=next_attempt_at if status is DeliveryStatus.PENDING else None,
                    updated_at=self._clock(),
                )
            )
            if settled.rowcount != 1:
                return False
            await conn.execute(
                insert(delivery_attempts).values(
                    tenant_id=due.tenant_id,
                    delivery_id=delivery.id,
                    attempt_time=attempt.attempt_time,
                    status_code=attempt.status_code,
                    latency_ms=attempt.latency_ms,
                    error=attempt.error[:1000],
                )
            )
            failures = 0 if succeeded else webhooks.c.consecutive_failures + 1
            await conn.execute(
                update(webhooks)
                .where(webhooks.c.id == delivery.webhook_id)
                .values(consecutive_failures=failures)
            )
            if not succeeded:
                count = (
                    await conn.execute(
                        select(webhooks.c.consecutive_failures).where(
                            webhooks.c.id == delivery.webhook_id
                        )
                    )
                ).scalar_one_or_none()
                if not disable_reason and count is not None and count >= disable_after_failures:
                    disable_reason = f"{count} attempts in a row failed"
                if disable_reason:
                    await conn.execute(
                        update(webhooks)
                        .where(webhooks.c.id == delivery.webhook_id)
                        .values(
                            state=WebhookState.DISABLED.value,
                            disabled_reason=disable_reason[:500],
                            updated_at=self._clock(),
                        )
                    )
        WEBHOOK_ATTEMPTS.labels(_ATTEMPT_OUTCOMES[status]).inc()
        return True

    async def list_deliveries(
        self,
        tenant_id: str,
        webhook_id: str,
        *,
        status: DeliveryStatus | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Delivery]:
        query = keyset_page(
            select(deliveries).where(
                deliveries.c.tenant_id == tenant_id, deliveries.c.webhook_id == webhook_id
            ),
            deliveries.c.created_at,
            deliveries.c.id,
            limit=limit,
            after=after,
            newest_first=True,
        )
        if status is DeliveryStatus.PENDING:
            query = query.where(deliveries.c.status.in_((_PENDING, PARKED)))
        elif status is not None:
            query = query.where(deliveries.c.status == status.value)
        async with self._engine.connect() as conn:
            await load_webhook(conn, tenant_id, webhook_id)
            found = [to_delivery(r._mapping) for r in (await conn.execute(query)).all()]
            return await with_attempts(conn, found)

    async def get_delivery(self, tenant_id: str, delivery_id: str) -> Delivery:
        async with self._engine.connect() as conn:
            return await load_delivery(conn, tenant_id, delivery_id)


def _attempt_query(delivery_id: str) -> Select[Any]:
    """The delivery with its webhook's state, URL and secrets."""
    return (
        select(
            deliveries,
            webhooks.c.state,
            webhooks.c.url,
            webhooks.c.secret,
            webhooks.c.previous_secret,
            webhooks.c.previous_secret_expires_at,
        )
        .join(webhooks, webhooks.c.id == deliveries.c.webhook_id)
        .where(deliveries.c.id == delivery_id)
    )
