"""The event store's webhook endpoints: create, read, page, change, delete, rotate secret.

A webhook belongs to one tenant and is only found under that tenant's id. A new
webhook is active, with no failures; setting one active again queues its parked
deliveries again. Deleting one deletes its deliveries and their attempts in the
same transaction (their jobs then find nothing to do). Rotating the secret keeps
the previous one valid until ``previous_until``, so receivers can switch over.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update

from gateway_bridge.gateway.events.errors import WebhookNotFound
from gateway_bridge.gateway.events.store.base import SqlEventStoreBase
from gateway_bridge.gateway.events.store.delivery_jobs import resume_parked
from gateway_bridge.gateway.events.store.rows import load_webhook, to_webhook
from gateway_bridge.gateway.events.webhooks import Webhook, WebhookState
from service_kit.db import keyset_page, load_one, write_transaction
from service_kit.schema import deliveries, delivery_attempts, webhooks
from service_kit.validation import new_id


class SqlWebhooks(SqlEventStoreBase):
    """Webhook endpoints of the event store, in SQL."""

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
            return await load_webhook(conn, tenant_id, webhook_id)

    async def get_webhook(self, tenant_id: str, webhook_id: str) -> Webhook:
        async with self._engine.connect() as conn:
            return await load_webhook(conn, tenant_id, webhook_id)

    async def list_webhooks(
        self, tenant_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[Webhook]:
        query = select(webhooks).where(webhooks.c.tenant_id == tenant_id)
        query = keyset_page(query, webhooks.c.created_at, webhooks.c.id, limit=limit, after=after)
        async with self._engine.connect() as conn:
            return [to_webhook(r._mapping) for r in (await conn.execute(query)).all()]

    async def update_webhook(
        self, tenant_id: str, webhook_id: str, values: dict[str, Any]
    ) -> Webhook:
        """Change the webhook's columns to ``values``; setting it active also queues its
        parked deliveries again (:func:`~.delivery_jobs.resume_parked`)."""
        now = self._clock()
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                update(webhooks)
                .where(webhooks.c.tenant_id == tenant_id, webhooks.c.id == webhook_id)
                .values(**values, updated_at=now)
            )
            if result.rowcount != 1:
                raise WebhookNotFound(webhook_id)
            if values.get("state") == WebhookState.ACTIVE.value:
                # After the update: its row lock orders this after any parking under way.
                await resume_parked(conn, webhook_id, now)
            return await load_webhook(conn, tenant_id, webhook_id)

    async def delete_webhook(self, tenant_id: str, webhook_id: str) -> None:
        async with write_transaction(self._engine) as conn:
            await load_webhook(conn, tenant_id, webhook_id)
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
            return await load_webhook(conn, tenant_id, webhook_id)
