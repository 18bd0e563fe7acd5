"""``SqlEventStore``: webhooks, deliveries and cursor reads of the event log, in SQL.

One class per part, each over :class:`~.base.SqlEventStoreBase` and each in its
own module; this class only puts them together. Construct it with the engine
(and, in tests, a clock): ``SqlEventStore(engine, clock=...)``.
"""

from __future__ import annotations

from gateway_bridge.gateway.events.store.deliveries import SqlDeliveries
from gateway_bridge.gateway.events.store.log import SqlLogCursors
from gateway_bridge.gateway.events.store.webhooks import SqlWebhooks


class SqlEventStore(SqlWebhooks, SqlDeliveries, SqlLogCursors):
    """Webhook endpoints, deliveries, attempts, and cursor reads of the event log."""
