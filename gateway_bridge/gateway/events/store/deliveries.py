"""The event store's deliveries: from the event log to deliveries, and their attempts.

A logged event becomes one pending delivery per active webhook of its tenant that
selects it (:meth:`gateway_bridge.gateway.events.webhooks.Webhook.wants`), exactly
once: the events are claimed with row locks that concurrent dispatchers skip
(PostgreSQL) and marked ``webhooks_done`` in the same transaction that inserts
their deliveries. A due delivery is leased to the claiming process (its
``next_attempt_at`` moves to the lease's end), so another process retries it only
if that one died. Each attempt is stored with the delivery's new state and the
webhook's failure count in one transaction; a webhook is disabled when told to or
after too many failures in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from gateway_bridge.gateway.events.store.base import SqlEventStoreBase
from gateway_bridge.gateway.events.store.rows import (
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


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery claimed for an attempt, with what the attempt needs."""

    delivery: Delivery
    tenant_id: str
    url: str
    secrets: tuple[str, ...]


class SqlDeliveries(SqlEventStoreBase):
    """Deliveries of the event store and their attempts, in SQL."""

    # -- from the event log to deliveries -----------------------------------------------

    async def fan_out(self, *, limit: int = 500) -> int:
        """Create the deliveries of events no dispatcher has handled yet; return how many
        events were handled. Concurrent dispatchers skip each other's rows."""
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
            new_rows = [
                delivery_row(hook, event_payload(row._mapping), now)
                for row in rows
                for hook in hooks
                if hook.tenant_id == row.tenant_id and hook.wants(row.name, row.channel_id)
            ]
            if new_rows:
                await conn.execute(insert(deliveries), new_rows)
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
            row = delivery_row(hook, payload, self._clock())
            await conn.execute(insert(deliveries).values(row))
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
            if new_rows:
                await conn.execute(insert(deliveries), new_rows)
            return len(new_rows)

    # -- attempts -----------------------------------------------------------------------

    async def claim_due(self, *, limit: int, lease_until: datetime) -> list[DueDelivery]:
        """Take up to ``limit`` deliveries due now, of active webhooks, oldest first; they
        are leased until ``lease_until`` (another process takes them after that if this
        one died)."""
        now = self._clock()
        query = (
            select(
                deliveries,
                webhooks.c.url,
                webhooks.c.secret,
                webhooks.c.previous_secret,
                webhooks.c.previous_secret_expires_at,
            )
            .join(webhooks, webhooks.c.id == deliveries.c.webhook_id)
            .where(
                deliveries.c.status == DeliveryStatus.PENDING.value,
                deliveries.c.next_attempt_at <= now,
                webhooks.c.state == WebhookState.ACTIVE.value,
            )
            .order_by(deliveries.c.next_attempt_at, deliveries.c.created_at)
            .limit(limit)
        )
        async with write_transaction(self._engine) as conn:
            rows = await claim_rows(conn, query, of=deliveries)
            if rows:
                await conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_([r.id for r in rows]))
                    .values(next_attempt_at=lease_until)
                )
        due = []
        for row in rows:
            secrets = [row.secret]
            expires = row.previous_secret_expires_at
            if row.previous_secret and expires is not None and as_utc(expires) > now:
                secrets.append(row.previous_secret)
            due.append(
                DueDelivery(to_delivery(row._mapping), row.tenant_id, row.url, tuple(secrets))
            )
        return due

    async def record_attempt(
        self,
        due: DueDelivery,
        attempt: Attempt,
        *,
        succeeded: bool,
        next_attempt_at: datetime | None,
        disable_reason: str = "",
        disable_after_failures: int,
    ) -> None:
        """Store an attempt; settle the delivery (succeeded, failed, or retry at
        ``next_attempt_at``) and the webhook's failure count, disabling it when asked to
        or when it failed ``disable_after_failures`` times in a row."""
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
                .where(deliveries.c.id == delivery.id)
                .values(
                    status=status.value,
                    attempt_count=deliveries.c.attempt_count + 1,
                    next_attempt_at=next_attempt_at if status is DeliveryStatus.PENDING else None,
                    updated_at=self._clock(),
                )
            )
            if settled.rowcount != 1:
                return  # purged meanwhile (its tenant was deleted): nothing left to record
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
        if status is not None:
            query = query.where(deliveries.c.status == status.value)
        async with self._engine.connect() as conn:
            await load_webhook(conn, tenant_id, webhook_id)
            found = [to_delivery(r._mapping) for r in (await conn.execute(query)).all()]
            return await with_attempts(conn, found)

    async def get_delivery(self, tenant_id: str, delivery_id: str) -> Delivery:
        async with self._engine.connect() as conn:
            return await load_delivery(conn, tenant_id, delivery_id)
