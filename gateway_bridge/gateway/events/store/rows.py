"""Rows and domain values of the event store: conversions both ways, and the loads every
part shares.

A ``to_*`` function turns a selected row (a mapping of its columns) into a domain
value; a ``*_row`` function builds the row to insert. The ``load_*`` functions read
one webhook or delivery inside the caller's connection (and so its transaction),
scoped by ``tenant_id``: another tenant's webhook or delivery raises
``WebhookNotFound`` / ``DeliveryNotFound`` like one that does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway_bridge.gateway.events.errors import DeliveryNotFound, WebhookNotFound
from gateway_bridge.gateway.events.webhooks import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookState,
)
from service_kit.clock import rfc3339
from service_kit.db import as_utc, load_one
from service_kit.schema import deliveries, delivery_attempts, webhooks
from service_kit.validation import new_id

Row = Mapping[Any, Any]

#: The stored status of a pending delivery that waits, without a job, for its webhook to be
#: active again (see :mod:`.deliveries`); the API shows it as pending.
PARKED: Final = "parked"

# -- webhooks -------------------------------------------------------------------------


async def load_webhook(conn: AsyncConnection, tenant_id: str, webhook_id: str) -> Webhook:
    """The tenant's webhook; raises ``WebhookNotFound``."""
    query = select(webhooks).where(webhooks.c.tenant_id == tenant_id, webhooks.c.id == webhook_id)
    return to_webhook(await load_one(conn, query, lambda: WebhookNotFound(webhook_id)))


def to_webhook(row: Row) -> Webhook:
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


# -- deliveries -----------------------------------------------------------------------


def event_payload(row: Row) -> dict[str, Any]:
    """The body a webhook receives for the logged event of ``row`` (an ``events`` row)."""
    return {
        "event": row["name"],
        "event_id": row["event_id"],
        "channel_id": row["channel_id"],
        "seq": int(row["seq"]),
        "data": row["data"],
        # The event's own time: the body is the same bytes on every attempt and redelivery.
        "timestamp": rfc3339(as_utc(row["created_at"])),
    }


def delivery_row(hook: Webhook, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The row of a new delivery of ``payload`` to ``hook``, pending and due at ``now``."""
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


async def load_delivery(conn: AsyncConnection, tenant_id: str, delivery_id: str) -> Delivery:
    """The tenant's delivery with its attempts; raises ``DeliveryNotFound``."""
    query = select(deliveries).where(
        deliveries.c.tenant_id == tenant_id, deliveries.c.id == delivery_id
    )
    row = await load_one(conn, query, lambda: DeliveryNotFound(delivery_id))
    return (await with_attempts(conn, [to_delivery(row)]))[0]


def to_delivery(row: Row) -> Delivery:
    """The delivery of a ``deliveries`` row, without its attempts."""
    next_at = row["next_attempt_at"]
    return Delivery(
        id=row["id"],
        webhook_id=row["webhook_id"],
        event_id=row["event_id"],
        event=row["event"],
        status=DeliveryStatus.PENDING if row["status"] == PARKED else DeliveryStatus(row["status"]),
        attempt_count=int(row["attempt_count"]),
        next_attempt_at=as_utc(next_at) if next_at is not None else None,
        created_at=as_utc(row["created_at"]),
        payload=row["payload"],
    )


async def with_attempts(conn: AsyncConnection, found: list[Delivery]) -> list[Delivery]:
    """``found`` with their attempts (oldest first), in one query."""
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
