"""The chat store's side of the outbox: events nobody published, and marking them published.

Every event is written by the transaction that made its change (see
:mod:`.base`); the relay (:mod:`gateway_bridge.gateway.relay`, through its
``EventLog`` role) publishes it after commit and marks it here. Events a
process left behind are claimed with row locks that other gateways skip
(PostgreSQL), and marked only when the claiming block succeeds, so an event is
published at least once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import BigInteger, select, update

from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels.store.base import SqlStoreBase
from service_kit.db import claim_rows, one_of, write_transaction
from service_kit.schema import events


class SqlOutbox(SqlStoreBase):
    """The publishing state of the chat store's events, in SQL."""

    @asynccontextmanager
    async def unpublished_events(
        self, *, older_than: datetime, limit: int
    ) -> AsyncIterator[list[ev.ChatEvent]]:
        """Claim up to ``limit`` events committed before ``older_than`` that nobody has
        published; they are marked published when the block exits without error (and
        stay unpublished if it fails). Other gateways skip the claimed rows."""
        query = (
            select(events)
            .where(events.c.published_at.is_(None), events.c.created_at < older_than)
            .order_by(events.c.id)
            .limit(limit)
        )
        async with write_transaction(self._engine) as conn:
            rows = await claim_rows(conn, query)
            yield [ev.chat_event(r._mapping) for r in rows]
            if rows:
                await conn.execute(
                    update(events)
                    .where(one_of(events.c.id, "cursors", self._engine.dialect.name, BigInteger()))
                    .values(published_at=self._clock()),
                    {"cursors": [r.id for r in rows]},
                )

    async def mark_published(self, cursors: Collection[int]) -> None:
        """Record that the events at ``cursors`` reached the bus (on PostgreSQL one
        statement whose text never changes: the cursors travel as one array)."""
        if cursors:
            async with write_transaction(self._engine) as conn:
                await conn.execute(
                    update(events)
                    .where(
                        one_of(events.c.id, "cursors", self._engine.dialect.name, BigInteger()),
                        events.c.published_at.is_(None),
                    )
                    .values(published_at=self._clock()),
                    {"cursors": list(cursors)},
                )
