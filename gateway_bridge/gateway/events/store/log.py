"""The event log read by cursor, in commit order, and its retention.

A :data:`Cursor` is ``(txid, id)``: the id of the transaction that wrote the
event (0 on SQLite) and the event's id. Reads order by it and, on PostgreSQL,
only return rows of transactions older than the oldest still running, so no
event can later appear behind a cursor already handed out (see the package
docstring). :meth:`~SqlLogCursors.events_after` reads one tenant's events
after a client's cursor; :meth:`~SqlLogCursors.log_after` reads those of many
tenants at once, for the one reader that feeds every event stream of a
process; :meth:`~SqlLogCursors.start` says where a stream that starts now
begins (:class:`LogStart`). Retention removes old events that every webhook has seen and
remembers the newest id it removed (``event_log_horizon``): a cursor older
than that is ``OutOfRange``, never silently short of events.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, insert, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway_bridge.gateway.events.store.base import SqlEventStoreBase
from gateway_bridge.gateway.outbox import ChatEvent, chat_event
from service_kit.db import write_transaction
from service_kit.errors import OutOfRange
from service_kit.schema import event_log_horizon, events

Cursor = tuple[int, int]  # (txid, id)

_TXID = func.coalesce(events.c.txid, 0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Which transactions had finished at a moment, as PostgreSQL's
    ``pg_current_snapshot()`` says: those below ``xmin``, and those below ``xmax`` that
    are not in ``running``."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, running = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(t) for t in running.split(",") if t))

    def finished(self, txid: int) -> bool:
        return txid < self.xmin or (txid < self.xmax and txid not in self.running)


@dataclass(frozen=True, slots=True)
class LogStart:
    """Where a stream that starts now begins: after ``cursor``, the newest readable event,
    and without the events after it that had committed already (on PostgreSQL, those of
    the transactions ``snapshot`` saw finished; SQLite has none)."""

    cursor: Cursor
    snapshot: Snapshot | None = None

    def before(self, position: Cursor) -> bool:
        """Whether the event at ``position`` was committed before the start."""
        if position <= self.cursor:
            return True
        return self.snapshot is not None and self.snapshot.finished(position[0])


class SqlLogCursors(SqlEventStoreBase):
    """Cursor reads of the event log, its head, and pruning it, in SQL."""

    async def events_after(
        self, tenant_id: str, cursor: Cursor, *, limit: int
    ) -> list[tuple[Cursor, ChatEvent]]:
        """The tenant's events after ``cursor`` in commit order (see the module docstring);
        raises ``OutOfRange`` when events after the cursor were removed by retention."""
        async with self._engine.connect() as conn:
            await _check_cursor(conn, cursor)
            return await _read_after(conn, events.c.tenant_id == tenant_id, cursor, limit)

    async def check_cursor(self, cursor: Cursor) -> None:
        """Raise ``OutOfRange`` when events after ``cursor`` were removed by retention."""
        async with self._engine.connect() as conn:
            await _check_cursor(conn, cursor)

    async def log_after(
        self, tenant_ids: Collection[str], cursor: Cursor, *, limit: int
    ) -> list[tuple[Cursor, ChatEvent]]:
        """The events of any of ``tenant_ids`` after ``cursor``, in commit order: one read
        serves every stream of a process (:mod:`gateway_bridge.gateway.events.reader`). No
        retention check: that cursor is the reader's own, never a client's."""
        async with self._engine.connect() as conn:
            where = events.c.tenant_id.in_(list(tenant_ids))
            return await _read_after(conn, where, cursor, limit)

    async def head(self, *tenant_ids: str) -> Cursor:
        """The cursor of the newest readable event of ``tenant_ids`` ((0, 0) for none).

        Readable as in :meth:`events_after`: every event a transaction commits later
        lands after it, so a reader that starts there misses nothing committed after."""
        return (await self.start(*tenant_ids)).cursor

    async def start(self, *tenant_ids: str) -> LogStart:
        """Where a stream of the events of ``tenant_ids`` that starts now begins: it gets
        every event committed from now on, and none committed before."""
        async with self._engine.connect() as conn:
            snapshot = await _snapshot(conn)
            query = (
                select(_TXID, events.c.id)
                .where(events.c.tenant_id.in_(tenant_ids))
                .order_by(_TXID.desc(), events.c.id.desc())
                .limit(1)
            )
            if snapshot is not None:
                query = query.where(_TXID < snapshot.xmin)
            row = (await conn.execute(query)).first()
        return LogStart((int(row[0]), int(row[1])) if row else (0, 0), snapshot)

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


async def _check_cursor(conn: AsyncConnection, cursor: Cursor) -> None:
    horizon = (
        await conn.execute(select(event_log_horizon.c.removed_through))
    ).scalar_one_or_none() or 0
    if cursor != (0, 0) and cursor[1] < horizon:
        raise OutOfRange(
            "the cursor is older than the event log keeps (KEEL_EVENT_RETENTION_DAYS);"
            " start again without it"
        )


async def _read_after(
    conn: AsyncConnection, where: ColumnElement[bool], cursor: Cursor, limit: int
) -> list[tuple[Cursor, ChatEvent]]:
    """Up to ``limit`` readable events matching ``where`` after ``cursor``, in commit order."""
    query = (
        select(events, _TXID.label("order_txid"))
        .where(where, tuple_(_TXID, events.c.id) > tuple_(*cursor))
        .order_by(_TXID, events.c.id)
        .limit(limit)
    )
    snapshot = await _snapshot(conn)
    if snapshot is not None:
        # Only events no running transaction can still put behind them.
        query = query.where(_TXID < snapshot.xmin)
    rows = (await conn.execute(query)).all()
    return [((int(r.order_txid), int(r.id)), chat_event(r._mapping)) for r in rows]


async def _snapshot(conn: AsyncConnection) -> Snapshot | None:
    """PostgreSQL's current snapshot (None on SQLite, which commits one writer at a time)."""
    if conn.dialect.name != "postgresql":
        return None
    return Snapshot.parse(
        (await conn.execute(text("SELECT pg_current_snapshot()::text"))).scalar_one()
    )
