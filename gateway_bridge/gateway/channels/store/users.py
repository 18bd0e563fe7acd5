"""The chat store's users: created on first sight, changed by upsert, read by id or page.

A tenant's app names its users (the id is the app's own); a user is created the
first time any write mentions it, with its id as username.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from gateway_bridge.gateway.channels.models import User
from gateway_bridge.gateway.channels.store.base import SqlStoreBase
from gateway_bridge.gateway.channels.store.rows import to_user, user_query
from service_kit.db import keyset_page, write_transaction
from service_kit.schema import users


class SqlUsers(SqlStoreBase):
    """Users of the chat store, in SQL."""

    async def ensure_user(self, tenant_id: str, user_id: str) -> None:
        """Create ``user_id`` unless the tenant already has it."""
        async with write_transaction(self._engine) as conn:
            await self._ensure_users(conn, tenant_id, [user_id])

    async def upsert_user(self, user: User, fields: Collection[str] | None) -> User:
        """Create ``user`` or change the ``fields`` (all when None) of the existing one."""
        now = self._clock()
        async with write_transaction(self._engine) as conn:
            await self._ensure_users(conn, user.tenant_id, [user.id])
            values: dict[str, Any] = {
                "username": user.username or user.id,
                "email": user.email or None,
                "avatar": user.avatar or None,
                "metadata_": dict(user.metadata),
            }
            if fields is not None:
                values = {k: v for k, v in values.items() if k.rstrip("_") in fields}
            await conn.execute(
                update(users)
                .where(users.c.tenant_id == user.tenant_id, users.c.id == user.id)
                .values(**values, updated_at=now)
            )
            row = (await conn.execute(user_query(user.tenant_id, user.id))).one()
        return to_user(row._mapping)

    async def get_user(self, tenant_id: str, user_id: str) -> User | None:
        """The tenant's user; None when the tenant has never seen it."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(user_query(tenant_id, user_id))).first()
        return to_user(row._mapping) if row else None

    async def batch_get_users(self, tenant_id: str, user_ids: Collection[str]) -> list[User]:
        """Those of ``user_ids`` the tenant has, in no particular order."""
        query = select(users).where(users.c.tenant_id == tenant_id, users.c.id.in_(set(user_ids)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [to_user(r._mapping) for r in rows]

    async def list_users(
        self, tenant_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[User]:
        """Up to ``limit`` of the tenant's users in creation order, after the
        ``(created_at, id)`` position ``after``."""
        query = select(users).where(users.c.tenant_id == tenant_id)
        query = keyset_page(query, users.c.created_at, users.c.id, limit=limit, after=after)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [to_user(r._mapping) for r in rows]
