"""The event log read by cursor, in commit order, and its retention.

A :data:`Cursor` is ``(txid, id)``: the id of the transaction that wrote the
event (0 on SQLite) and the event's id. Reads order by it and, on PostgreSQL,
only return rows of transactions older than the oldest still running, so no
event can later appear behind a cursor already handed out (see the package
docstring). Retention removes old events that every webhook has seen and
remembers the newest id it removed (``event_log_horizon``): a cursor older
than that is ``OutOfRange``, never silently short of events.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, select, text, tuple_, update

from gateway_bridge.gateway.events.store.base import SqlEventStoreBase
from gateway_bridge.gateway.outbox import ChatEvent, chat_event
from service_kit.db import write_transaction
from service_kit.errors import OutOfRange
from service_kit.schema import event_log_horizon, events

Cursor = tuple[int, int]  # (txid, id)


class SqlLogCursors(SqlEventStoreBase):
    """Cursor reads of the event log, its head, and pruning it, in SQL."""

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
