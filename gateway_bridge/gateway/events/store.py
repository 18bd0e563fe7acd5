"""Webhooks, deliveries and reading the event log, in SQL.

The event log is read in the order transactions committed: on PostgreSQL every
row carries the id of the transaction that wrote it (``txid``), readers order
by ``(txid, id)`` and only read rows of transactions older than the oldest
still running (``pg_snapshot_xmin``), so a transaction that commits late can
never put a row behind a cursor that was already handed out. SQLite commits
one writer at a time, so there ``txid`` is 0 and ``id`` alone orders.

Every read and write is scoped by ``tenant_id``: another tenant's webhook or
delivery is ``WebhookNotFound`` / ``DeliveryNotFound``
(:mod:`gateway_bridge.gateway.events.errors`), like one that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway_bridge.gateway.events.errors import DeliveryNotFound, WebhookNotFound
from gateway_bridge.gateway.events.webhooks import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookState,
)
from gateway_bridge.gateway.outbox import ChatEvent, chat_event
from service_kit.clock import Clock, utcnow
from service_kit.db import as_utc, claim_rows, keyset_page, load_one, write_transaction
from service_kit.errors import OutOfRange
from service_kit.schema import deliveries, delivery_attempts, event_log_horizon, events, webhooks
from service_kit.validation import new_id

Cursor = tuple[int, int]  # (txid, id)


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery claimed for an attempt, with what the attempt needs."""

    delivery: Delivery
    tenant_id: str
    url: str
    secrets: tuple[str, ...]


class SqlEventStore:
    """Webhook endpoints, deliveries, attempts, and cursor reads of the event log."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    # -- webhooks -----------------------------------------------------------------------

    async def create_webhook(
        self,
        tenant_id: str,
        *,
        url: str,
        events_filter: Sequence[str],
        channel_ids: Sequence[str],
        description: str,
        secret: str,
    ) -> Webhook:
        now = self._clock()
        webhook_id = new_id()
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                insert(webhooks).values(
                    id=webhook_id,
                    tenant_id=tenant_id,
                    url=url,
                    events=list(events_filter),
                    channel_ids=list(channel_ids),
                    description=description,
                    state=WebhookState.ACTIVE.value,
                    disabled_reason="",
                    secret=secret,
                    consecutive_failures=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            return await _load_webhook(conn, tenant_id, webhook_id)

    async def get_webhook(self, tenant_id: str, webhook_id: str) -> Webhook:
        async with self._engine.connect() as conn:
            return await _load_webhook(conn, tenant_id, webhook_id)

    async def list_webhooks(
        self, tenant_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[Webhook]:
        query = select(webhooks).where(webhooks.c.tenant_id == tenant_id)
        query = keyset_page(query, webhooks.c.created_at, webhooks.c.id, limit=limit, after=after)
        async with self._engine.connect() as conn:
            return [_webhook(r._mapping) for r in (await conn.execute(query)).all()]

    async def update_webhook(
        self, tenant_id: str, webhook_id: str, values: dict[str, Any]
    ) -> Webhook:
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                update(webhooks)
                .where(webhooks.c.tenant_id == tenant_id, webhooks.c.id == webhook_id)
                .values(**values, updated_at=self._clock())
            )
            if result.rowcount != 1:
                raise WebhookNotFound(webhook_id)
            return await _load_webhook(conn, tenant_id, webhook_id)

    async def delete_webhook(self, tenant_id: str, webhook_id: str) -> None:
        async with write_transaction(self._engine) as conn:
            await _load_webhook(conn, tenant_id, webhook_id)
            ids = select(deliveries.c.id).where(deliveries.c.webhook_id == webhook_id)
            await conn.execute(
                delete(delivery_attempts).where(delivery_attempts.c.delivery_id.in_(ids))
            )
            await conn.execute(delete(deliveries).where(deliveries.c.webhook_id == webhook_id))
            await conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id))

    async def rotate_secret(
        self, tenant_id: str, webhook_id: str, secret: str, previous_until: datetime
    ) -> Webhook:
        async with write_transaction(self._engine) as conn:
            current = await load_one(
                conn,
                select(webhooks.c.secret).where(
                    webhooks.c.tenant_id == tenant_id, webhooks.c.id == webhook_id
                ),
                lambda: WebhookNotFound(webhook_id),
            )
            await conn.execute(
                update(webhooks)
                .where(webhooks.c.id == webhook_id)
                .values(
                    secret=secret,
                    previous_secret=current["secret"],
                    previous_secret_expires_at=previous_until,
                    updated_at=self._clock(),
                )
            )
            return await _load_webhook(conn, tenant_id, webhook_id)

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
                _webhook(r._mapping)
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
                _delivery_row(hook, _payload(row._mapping), now)
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
            hook = await _load_webhook(conn, tenant_id, webhook_id)
            row = _delivery_row(hook, payload, self._clock())
            await conn.execute(insert(deliveries).values(row))
            return await _load_delivery(conn, tenant_id, row["id"])

    async def replay(self, tenant_id: str, webhook_id: str, since: datetime, *, limit: int) -> int:
        """Queue deliveries of every logged event since ``since`` the webhook selects."""
        async with write_transaction(self._engine) as conn:
            hook = await _load_webhook(conn, tenant_id, webhook_id)
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
                _delivery_row(hook, _payload(r._mapping), now)
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
            due.append(DueDelivery(_delivery(row._mapping), row.tenant_id, row.url, tuple(secrets)))
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
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery.id)
                .values(
                    status=status.value,
                    attempt_count=deliveries.c.attempt_count + 1,
                    next_attempt_at=next_attempt_at if status is DeliveryStatus.PENDING else None,
                    updated_at=self._clock(),
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
            await _load_webhook(conn, tenant_id, webhook_id)
            found = [_delivery(r._mapping) for r in (await conn.execute(query)).all()]
            return await _with_attempts(conn, found)

    async def get_delivery(self, tenant_id: str, delivery_id: str) -> Delivery:
        async with self._engine.connect() as conn:
            return await _load_delivery(conn, tenant_id, delivery_id)

    # -- reading the log ----------------------------------------------------------------

    async def events_after(
        self, tenant_id: str, cursor: Cursor, *, limit: int
    ) -> list[tuple[Cursor, ChatEvent]]:
        """The tenant's events after ``cursor`` in commit order (see the module docstring);
        raises ``OutOfRange`` when events after the cursor were removed by retention."""
        async with self._engine.connect() as conn:
            horizon = (
                await conn.execute(select(event_log_horizon.c.removed_through))
            ).scalar_one_or_none() or 0
            if cursor != (0, 0) and cursor[1] < horizon:
                raise OutOfRange(
                    "the cursor is older than the event log keeps (KEEL_EVENT_RETENTION_DAYS);"
                    " start again without it"
                )
            txid = func.coalesce(events.c.txid, 0)
            query = (
                select(events, txid.label("order_txid"))
                .where(events.c.tenant_id == tenant_id, tuple_(txid, events.c.id) > tuple_(*cursor))
                .order_by(txid, events.c.id)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                xmin = (
                    await conn.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
                ).scalar_one()
                query = query.where(txid < int(xmin))
            rows = (await conn.execute(query)).all()
        return [((int(r.order_txid), int(r.id)), chat_event(r._mapping)) for r in rows]

    async def head(self, tenant_id: str) -> Cursor:
        """The cursor of the tenant's newest readable event ((0, 0) for none)."""
        async with self._engine.connect() as conn:
            txid = func.coalesce(events.c.txid, 0)
            row = (
                await conn.execute(
                    select(txid, events.c.id)
                    .where(events.c.tenant_id == tenant_id)
                    .order_by(txid.desc(), events.c.id.desc())
                    .limit(1)
                )
            ).first()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def prune(self, older_than: datetime) -> int:
        """Remove events older than ``older_than`` (retention); return how many."""
        async with write_transaction(self._engine) as conn:
            newest = (
                await conn.execute(
                    select(func.max(events.c.id)).where(
                        events.c.created_at < older_than, events.c.webhooks_done.is_(True)
                    )
                )
            ).scalar_one_or_none()
            if newest is None:
                return 0
            result = await conn.execute(delete(events).where(events.c.id <= newest))
            updated = await conn.execute(update(event_log_horizon).values(removed_through=newest))
            if updated.rowcount == 0:
                await conn.execute(insert(event_log_horizon).values(id=1, removed_through=newest))
            return int(result.rowcount)


def _payload(row: Any) -> dict[str, Any]:
    return {
        "event": row["name"],
        "event_id": row["event_id"],
        "channel_id": row["channel_id"],
        "seq": int(row["seq"]),
        "data": row["data"],
    }


def _delivery_row(hook: Webhook, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "id": new_id(),
        "tenant_id": hook.tenant_id,
        "webhook_id": hook.id,
        "event_id": payload["event_id"],
        "event": payload["event"],
        "payload": payload,
        "status": DeliveryStatus.PENDING.value,
        "attempt_count": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


async def _load_webhook(conn: AsyncConnection, tenant_id: str, webhook_id: str) -> Webhook:
    """The tenant's webhook; raises ``WebhookNotFound``."""
    query = select(webhooks).where(webhooks.c.tenant_id == tenant_id, webhooks.c.id == webhook_id)
    return _webhook(await load_one(conn, query, lambda: WebhookNotFound(webhook_id)))


def _webhook(row: Any) -> Webhook:
    return Webhook(
        id=row["id"],
        tenant_id=row["tenant_id"],
        url=row["url"],
        events=tuple(row["events"]),
        channel_ids=tuple(row["channel_ids"]),
        description=row["description"],
        state=WebhookState(row["state"]),
        disabled_reason=row["disabled_reason"],
        consecutive_failures=int(row["consecutive_failures"]),
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
    )


async def _load_delivery(conn: AsyncConnection, tenant_id: str, delivery_id: str) -> Delivery:
    """The tenant's delivery with its attempts; raises ``DeliveryNotFound``."""
    query = select(deliveries).where(
        deliveries.c.tenant_id == tenant_id, deliveries.c.id == delivery_id
    )
    row = await load_one(conn, query, lambda: DeliveryNotFound(delivery_id))
    return (await _with_attempts(conn, [_delivery(row)]))[0]


def _delivery(row: Any) -> Delivery:
    next_at = row["next_attempt_at"]
    return Delivery(
        id=row["id"],
        webhook_id=row["webhook_id"],
        event_id=row["event_id"],
        event=row["event"],
        status=DeliveryStatus(row["status"]),
        attempt_count=int(row["attempt_count"]),
        next_attempt_at=as_utc(next_at) if next_at is not None else None,
        created_at=as_utc(row["created_at"]),
        payload=row["payload"],
    )


async def _with_attempts(conn: AsyncConnection, found: list[Delivery]) -> list[Delivery]:
    if not found:
        return found
    rows = (
        await conn.execute(
            select(delivery_attempts)
            .where(delivery_attempts.c.delivery_id.in_([d.id for d in found]))
            .order_by(delivery_attempts.c.attempt_time, delivery_attempts.c.id)
        )
    ).all()
    by_delivery: dict[str, list[Attempt]] = {}
    for r in rows:
        by_delivery.setdefault(r.delivery_id, []).append(
            Attempt(as_utc(r.attempt_time), int(r.status_code), int(r.latency_ms), r.error)
        )
    return [replace(d, attempts=tuple(by_delivery.get(d.id, ()))) for d in found]
