"""The jobs that carry deliveries: every pending delivery is attempted through the kit's
durable job queue (:mod:`service_kit.jobs`), one job per delivery.

The transaction that creates a delivery also enqueues its job (kind :data:`DELIVERY_JOB`,
payload ``{"delivery_id": ...}``, for the delivery's tenant, never given up by the
queue: the webhook's retry schedule says when to stop). The queue claims, leases and
reschedules it; :mod:`gateway_bridge.gateway.events.dispatcher` makes one attempt per
claim. The delivery's row stays what the API shows: status, attempt count, next attempt
time and the attempts themselves.

Invariant: a pending delivery has exactly one job queued or running, unless it is
*parked*: when its attempt comes due while its webhook is paused or disabled,
:meth:`~.deliveries.SqlDeliveries.take` stores it as ``parked`` (the API shows it as
pending) and its job ends. Setting the webhook active again (:func:`resume_parked`)
gives each parked delivery a new job, due at once, in the same transaction. Parking
holds the webhook's row (``FOR SHARE`` on PostgreSQL; SQLite has one writer at a time)
and setting it active updates that row, so the two never interleave: no parked delivery
is left without a job, and none gets two.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway_bridge.gateway.events.store.rows import PARKED
from gateway_bridge.gateway.events.webhooks import DeliveryStatus
from service_kit import jobs
from service_kit.schema import deliveries

#: The job kind of a delivery's attempts; its payload is ``{"delivery_id": ...}``.
DELIVERY_JOB: Final = "webhook.delivery"


async def queue_deliveries(
    conn: AsyncConnection, now: datetime, rows: Sequence[dict[str, Any]]
) -> None:
    """Insert new pending deliveries, due ``now`` (rows of :func:`~.rows.delivery_row`),
    and enqueue each one's job, in ``conn``'s transaction."""
    if not rows:
        return
    await conn.execute(insert(deliveries), list(rows))
    await _enqueue(conn, [(row["tenant_id"], row["id"]) for row in rows], now)


async def resume_parked(conn: AsyncConnection, webhook_id: str, now: datetime) -> int:
    """Give every parked delivery of the webhook a job due ``now`` (the webhook was just set
    active, in ``conn``'s transaction, after its row was updated); returns how many."""
    parked = (
        await conn.execute(
            select(deliveries.c.id, deliveries.c.tenant_id).where(
                deliveries.c.webhook_id == webhook_id, deliveries.c.status == PARKED
            )
        )
    ).all()
    if not parked:
        return 0
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.webhook_id == webhook_id, deliveries.c.status == PARKED)
        .values(status=DeliveryStatus.PENDING.value, updated_at=now)
    )
    await _enqueue(conn, [(row.tenant_id, row.id) for row in parked], now)
    return len(parked)


async def _enqueue(conn: AsyncConnection, owned: Sequence[tuple[str, str]], now: datetime) -> None:
    """One job per ``(tenant_id, delivery_id)``, due ``now``; one statement per tenant."""
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for tenant_id, delivery_id in owned:
        by_tenant.setdefault(tenant_id, []).append({"delivery_id": delivery_id})
    for tenant_id, payloads in by_tenant.items():
        await jobs.enqueue_many(
            conn, DELIVERY_JOB, payloads, now=now, tenant_id=tenant_id, max_attempts=None
        )
