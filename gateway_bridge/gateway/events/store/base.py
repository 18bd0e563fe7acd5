"""What every part of the SQL event store shares: the engine and the clock.

Each part (:mod:`.webhooks`, :mod:`.deliveries`, :mod:`.log`) extends
:class:`SqlEventStoreBase`, and :class:`~.sql.SqlEventStore` combines them. The
store is handed its engine and never connects by itself; every method opens its
own connection (a ``write_transaction`` when it writes), so each call is one
transaction. Times come from the clock, so tests can set them.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.clock import Clock, utcnow


class SqlEventStoreBase:
    """The engine and clock of a SQL event store."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock
