"""Users' preferences, tenants' settings and browsers' push subscriptions, in SQL.

Changes are read-modify-write in one transaction with the row locked (PostgreSQL; SQLite
has one writer at a time), so concurrent changes of different fields both stay. A push
endpoint belongs to one user of a tenant: registering it again (for the same or another
user) replaces the row's user and keys, keeping its id.
"""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, delete, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notification_service.models import (
    MAX_PUSH_SUBSCRIPTIONS_PER_USER,
    Preferences,
    PushSubscription,
    TenantSettings,
    UserId,
)
from notification_service.store.base import SqlStoreBase, chunks, listed, one_of
from notification_service.store.rows import (
    preferences_row,
    tenant_settings_values,
    to_preferences,
    to_subscription,
    to_tenant_settings,
)
from service_kit.db import insert_ignoring_conflicts, write_transaction
from service_kit.schema import (
    notification_preferences,
    notification_tenant_settings,
    push_subscriptions,
)


def endpoint_hash(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()


class SqlSettings(SqlStoreBase):
    """Preferences, tenant settings and push subscriptions (see the module docstring)."""

    # -- preferences -------------------------------------------------------------------

    async def preferences_of(
        self, tenant_id: str, user_ids: Sequence[str]
    ) -> dict[str, Preferences]:
        """The stored preferences of those of ``user_ids`` that have any."""
        async with self._engine.connect() as conn:
            return await read_preferences(conn, tenant_id, user_ids)

    async def update_preferences(
        self,
        tenant_id: str,
        user_id: str,
        change: Callable[[Preferences], Preferences],
        *,
        now: datetime,
    ) -> Preferences:
        """Store ``change(current)`` (the defaults when none are stored) as the user's
        preferences; returns them. ``change`` may raise to change nothing."""
        key = (
            notification_preferences.c.tenant_id == tenant_id,
            notification_preferences.c.user_id == user_id,
        )
        async with write_transaction(self._engine) as conn:
            row = (
                await conn.execute(select(notification_preferences).where(*key).with_for_update())
            ).first()
            current = to_preferences(row._mapping) if row else Preferences(UserId(user_id))
            changed = change(current)
            values = preferences_row(changed) | {"update_time": now}
            if row is None:
                inserted = await conn.execute(
                    insert_ignoring_conflicts(conn, notification_preferences).values(
                        tenant_id=tenant_id, **values
                    )
                )
                if inserted.rowcount == 1:
                    return to_preferences(values)
                # Another change stored the first row meanwhile: apply this one to it.
                row = (
                    await conn.execute(
                        select(notification_preferences).where(*key).with_for_update()
                    )
                ).one()
                values = preferences_row(change(to_preferences(row._mapping))) | {
                    "update_time": now
                }
            await conn.execute(update(notification_preferences).where(*key).values(**values))
        return to_preferences(values)

    # -- tenant settings ---------------------------------------------------------------

    async def tenant_settings(self, tenant_id: str) -> TenantSettings:
        """The tenant's settings (defaults for what it never set)."""
        async with self._engine.connect() as conn:
            return await read_tenant_settings(conn, tenant_id)

    async def add_tenant_settings(
        self, tenant_id: str, settings: TenantSettings, names: Collection[str], *, now: datetime
    ) -> TenantSettings:
        """Store the ``names`` settings of ``settings`` where the tenant has none yet
        (made by Keel: no ``update_time``); returns the settings as stored."""
        async with write_transaction(self._engine) as conn:
            for name, value in tenant_settings_values(settings, names).items():
                await conn.execute(
                    insert_ignoring_conflicts(conn, notification_tenant_settings).values(
                        tenant_id=tenant_id, name=name, value=value, create_time=now
                    )
                )
            return await read_tenant_settings(conn, tenant_id)

    async def update_tenant_settings(
        self,
        tenant_id: str,
        change: Callable[[TenantSettings], TenantSettings],
        names: Collection[str],
        *,
        now: datetime,
    ) -> TenantSettings:
        """Store the ``names`` settings of ``change(current)``; returns the settings."""
        async with write_transaction(self._engine) as conn:
            rows = (
                await conn.execute(
                    select(notification_tenant_settings)
                    .where(notification_tenant_settings.c.tenant_id == tenant_id)
                    .with_for_update()
                )
            ).all()
            changed = change(to_tenant_settings(r._mapping for r in rows))
            stored = {r.name for r in rows}
            for name, value in tenant_settings_values(changed, names).items():
                if name in stored:
                    await conn.execute(
                        update(notification_tenant_settings)
                        .where(
                            notification_tenant_settings.c.tenant_id == tenant_id,
                            notification_tenant_settings.c.name == name,
                        )
                        .values(value=value, update_time=now)
                    )
                else:
                    await conn.execute(
                        insert(notification_tenant_settings).values(
                            tenant_id=tenant_id,
                            name=name,
                            value=value,
                            create_time=now,
                            update_time=now,
                        )
                    )
            return await read_tenant_settings(conn, tenant_id)

    # -- push subscriptions ------------------------------------------------------------

    async def register_push_subscription(
        self, tenant_id: str, subscription: PushSubscription
    ) -> PushSubscription:
        """Store ``subscription`` (its id and time are used for a new endpoint only); the
        user keeps it and their :data:`MAX_PUSH_SUBSCRIPTIONS_PER_USER` - 1 newest others,
        so one browser user cannot make every send fan out to endless endpoints."""
        digest = endpoint_hash(subscription.endpoint)
        key = (
            push_subscriptions.c.tenant_id == tenant_id,
            push_subscriptions.c.endpoint_hash == digest,
        )
        async with write_transaction(self._engine) as conn:
            added = await conn.execute(
                insert_ignoring_conflicts(conn, push_subscriptions).values(
                    id=subscription.id,
                    tenant_id=tenant_id,
                    user_id=subscription.user_id,
                    endpoint=subscription.endpoint,
                    endpoint_hash=digest,
                    p256dh=subscription.p256dh,
                    auth=subscription.auth,
                    create_time=subscription.create_time,
                )
            )
            if added.rowcount != 1:
                await conn.execute(
                    update(push_subscriptions)
                    .where(*key)
                    .values(
                        user_id=subscription.user_id,
                        p256dh=subscription.p256dh,
                        auth=subscription.auth,
                    )
                )
            row = (await conn.execute(select(push_subscriptions).where(*key))).one()
            oldest = (
                select(push_subscriptions.c.id)
                .where(
                    push_subscriptions.c.tenant_id == tenant_id,
                    push_subscriptions.c.user_id == subscription.user_id,
                    push_subscriptions.c.id != row.id,
                )
                .order_by(push_subscriptions.c.create_time.desc(), push_subscriptions.c.id.desc())
                .offset(MAX_PUSH_SUBSCRIPTIONS_PER_USER - 1)
            )
            dropped = [r.id for r in (await conn.execute(oldest)).all()]
            if dropped:
                await conn.execute(
                    delete(push_subscriptions).where(push_subscriptions.c.id.in_(dropped))
                )
        return to_subscription(row._mapping)

    async def delete_push_subscription(
        self, tenant_id: str, *, subscription_id: str = "", user_id: str = "", endpoint: str = ""
    ) -> bool:
        """Remove a subscription by id, or the user's by endpoint; False when absent."""
        where = [push_subscriptions.c.tenant_id == tenant_id]
        if subscription_id:
            where.append(push_subscriptions.c.id == subscription_id)
        else:
            where += [
                push_subscriptions.c.user_id == user_id,
                push_subscriptions.c.endpoint_hash == endpoint_hash(endpoint),
            ]
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(delete(push_subscriptions).where(*where))
        return bool(result.rowcount)

    async def push_subscriptions_of(
        self, tenant_id: str, user_ids: Sequence[str]
    ) -> dict[str, list[PushSubscription]]:
        """Each user's push subscriptions, oldest first (users without any: absent)."""
        async with self._engine.connect() as conn:
            return await read_push_subscriptions(conn, tenant_id, user_ids)

    async def push_subscription(
        self, tenant_id: str, subscription_id: str
    ) -> PushSubscription | None:
        query = select(push_subscriptions).where(
            push_subscriptions.c.tenant_id == tenant_id, push_subscriptions.c.id == subscription_id
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return to_subscription(row._mapping) if row else None


# Built once (per dialect): every send reads both (only the parameters change), on
# asyncpg itself too (send_plain_pg).
TENANT_SETTINGS_QUERY = select(notification_tenant_settings).where(
    notification_tenant_settings.c.tenant_id == bindparam("tenant_id")
)


@functools.cache
def preferences_query(dialect: str) -> Select[Any]:
    """The stored preferences of the tenant ``tenant_id``'s users ``user_ids``."""
    tenant = notification_preferences.c.tenant_id == bindparam("tenant_id")
    if dialect == "postgresql":
        # One primary-key lookup per user (see base.listed); LIMIT 1 (there is at most
        # one row) keeps PostgreSQL from turning the LATERAL into a join it may plan as
        # a scan of the tenant's preferences.
        users = listed("user_ids", "user_id")
        found = (
            select(notification_preferences)
            .where(tenant, notification_preferences.c.user_id == users.c.user_id)
            .limit(1)
            .lateral("found")
        )
        return select(found).select_from(users).join(found, true())
    return select(notification_preferences).where(
        tenant, one_of(notification_preferences.c.user_id, "user_ids", dialect)
    )


async def read_tenant_settings(conn: AsyncConnection, tenant_id: str) -> TenantSettings:
    """The tenant's settings as ``conn`` sees them (defaults for what it never set)."""
    rows = (await conn.execute(TENANT_SETTINGS_QUERY, {"tenant_id": tenant_id})).all()
    return to_tenant_settings(r._mapping for r in rows)


async def read_preferences(
    conn: AsyncConnection, tenant_id: str, user_ids: Sequence[str]
) -> dict[str, Preferences]:
    """The stored preferences of those of ``user_ids`` that have any, as ``conn`` sees them."""
    found: dict[str, Preferences] = {}
    for part in chunks(sorted(set(user_ids))):
        params = {"tenant_id": tenant_id, "user_ids": list(part)}
        query = preferences_query(conn.dialect.name)
        for row in (await conn.execute(query, params)).all():
            found[row.user_id] = to_preferences(row._mapping)
    return found


async def read_push_subscriptions(
    conn: AsyncConnection, tenant_id: str, user_ids: Sequence[str]
) -> dict[str, list[PushSubscription]]:
    """Each user's push subscriptions, oldest first (users without any: absent), as
    ``conn`` sees them."""
    found: dict[str, list[PushSubscription]] = defaultdict(list)
    for part in chunks(sorted(set(user_ids))):
        query = (
            select(push_subscriptions)
            .where(
                push_subscriptions.c.tenant_id == tenant_id,
                push_subscriptions.c.user_id.in_(part),
            )
            .order_by(push_subscriptions.c.create_time, push_subscriptions.c.id)
        )
        for row in (await conn.execute(query)).all():
            found[row.user_id].append(to_subscription(row._mapping))
    return dict(found)
