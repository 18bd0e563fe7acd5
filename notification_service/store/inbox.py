"""Reading notifications and users' inboxes, and marking them read.

A notification is in its user's inbox once its ``inbox_time`` is set: when it was sent
in-app (at once, or at its ``send_at``). The inbox is ordered newest first by that time
(then by id), and its unread count is over every notification in it not yet read.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Select, String, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from notification_service.models import Notification
from notification_service.store.base import (
    SqlStoreBase,
    chunks,
    listed,
    load_notifications,
    one_of,
    with_deliveries,
)
from service_kit.db import keyset_page, write_transaction
from service_kit.schema import notifications


def _inbox(
    tenant_id: str | ColumnElement[str], user_id: str | ColumnElement[str] | None
) -> ColumnElement[bool]:
    """In the user's inbox (with ``user_id`` None: in an inbox of the tenant's)."""
    landed = (notifications.c.tenant_id == tenant_id) & notifications.c.inbox_time.is_not(None)
    return landed if user_id is None else landed & (notifications.c.user_id == user_id)


def _unread(
    tenant_id: str | ColumnElement[str], user_id: str | ColumnElement[str] | None
) -> ColumnElement[bool]:
    """In the inbox (as :func:`_inbox`) and not read yet: what an unread count counts."""
    return _inbox(tenant_id, user_id) & notifications.c.read_time.is_(None)


def unread_count(tenant_id: ColumnElement[str], user_id: ColumnElement[str]) -> ScalarSelect[int]:
    """The unread count of one inbox, as a column (one index lookup); the one
    definition every count reads, :mod:`.send_plain_pg`'s too."""
    return select(func.count()).where(_unread(tenant_id, user_id)).scalar_subquery()


class SqlInbox(SqlStoreBase):
    """Notifications and inboxes in SQL (see the module docstring)."""

    async def get_notification(self, tenant_id: str, notification_id: str) -> Notification | None:
        async with self._engine.connect() as conn:
            found = await load_notifications(conn, tenant_id, [notification_id])
        return found[0] if found else None

    async def get_notifications(
        self, tenant_id: str, notification_ids: Sequence[str]
    ) -> list[Notification]:
        """The tenant's notifications with these ids, in that order (unknown ids left out)."""
        async with self._engine.connect() as conn:
            return await load_notifications(conn, tenant_id, notification_ids)

    async def list_inbox(
        self,
        tenant_id: str,
        user_id: str,
        *,
        unread_only: bool,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> tuple[list[Notification], int]:
        """Up to ``limit`` of the user's inbox after the ``(inbox_time, id)`` position
        ``after``, newest first; and the inbox's unread count."""
        query = select(notifications).where(_inbox(tenant_id, user_id))
        if unread_only:
            query = query.where(notifications.c.read_time.is_(None))
        query = keyset_page(
            query,
            notifications.c.inbox_time,
            notifications.c.id,
            limit=limit,
            after=after,
            newest_first=True,
        )
        async with self._engine.connect() as conn:
            rows = [r._mapping for r in (await conn.execute(query)).all()]
            page = await with_deliveries(conn, rows)
            unread = await read_unread_counts(conn, tenant_id, [user_id])
        return page, unread.get(user_id, 0)

    async def mark_read(
        self,
        tenant_id: str,
        user_id: str,
        notification_ids: Collection[str] | None,
        *,
        now: datetime,
    ) -> tuple[int, int]:
        """Mark the user's unread notifications ``notification_ids`` (all when None) read;
        returns how many changed and the unread count after."""
        marked = 0
        async with write_transaction(self._engine) as conn:
            unread = _unread(tenant_id, user_id)
            if notification_ids is None:
                result = await conn.execute(
                    update(notifications).where(unread).values(read_time=now)
                )
                marked = result.rowcount
            else:
                for part in chunks(sorted(set(notification_ids))):
                    result = await conn.execute(
                        update(notifications)
                        .where(unread, notifications.c.id.in_(part))
                        .values(read_time=now)
                    )
                    marked += result.rowcount
            left = await read_unread_counts(conn, tenant_id, [user_id])
        return marked, left.get(user_id, 0)

    async def unread_counts(self, tenant_id: str, user_ids: Sequence[str]) -> dict[str, int]:
        """The unread count of each of the users' inboxes (users without one: absent)."""
        async with self._engine.connect() as conn:
            return await read_unread_counts(conn, tenant_id, user_ids)


async def read_unread_counts(
    conn: AsyncConnection, tenant_id: str, user_ids: Sequence[str]
) -> dict[str, int]:
    """The unread count of each of the users' inboxes as ``conn`` sees them (users
    without one: absent)."""
    counts: dict[str, int] = {}
    for part in chunks(sorted(set(user_ids))):
        params = {"tenant_id": tenant_id, "user_ids": list(part)}
        rows = (await conn.execute(_unread_counts_query(conn.dialect.name), params)).all()
        counts |= {row[0]: int(row[1]) for row in rows if row[1]}
    return counts


# Built once per dialect: a send reads it every time (only the parameters change).
@functools.cache
def _unread_counts_query(dialect: str) -> Select[Any]:
    tenant = bindparam("tenant_id", type_=String)
    if dialect == "postgresql":
        # One index lookup per user (see base.listed): the cost follows the users'
        # inboxes, not the tenant's.
        users = listed("user_ids", "user_id")
        return select(users.c.user_id, unread_count(tenant, users.c.user_id))
    return (
        select(notifications.c.user_id, func.count())
        .where(_unread(tenant, None), one_of(notifications.c.user_id, "user_ids", dialect))
        .group_by(notifications.c.user_id)
    )
