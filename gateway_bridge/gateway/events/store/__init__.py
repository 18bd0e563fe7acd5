"""Webhooks, deliveries and reading the event log, in SQL.

The event log is read in the order transactions committed: on PostgreSQL every
row carries the id of the transaction that wrote it (``txid``), readers order
by ``(txid, id)`` and only read rows of transactions older than the oldest
still running (``pg_snapshot_xmin``), so a transaction that commits late can
never put a row behind a cursor that was already handed out. SQLite commits
one writer at a time, so there ``txid`` is 0 and ``id`` alone orders.

Every read and write is scoped by ``tenant_id``: another tenant's webhook or
delivery is ``WebhookNotFound`` / ``DeliveryNotFound``
(:mod:`gateway_bridge.gateway.events.errors`), like one that does not exist.

Modules: :mod:`.sql` (``SqlEventStore``, composed of :mod:`.webhooks`,
:mod:`.deliveries` (with ``DueDelivery``) and :mod:`.log` (with ``Cursor``) over
:mod:`.base`), :mod:`.rows` (rows to domain values and back, and the loads the
parts share), :mod:`.delivery_jobs` (the job of the kit's queue that carries each
pending delivery, ``DELIVERY_JOB``).
"""

from __future__ import annotations

from gateway_bridge.gateway.events.store.deliveries import DueDelivery
from gateway_bridge.gateway.events.store.delivery_jobs import DELIVERY_JOB
from gateway_bridge.gateway.events.store.log import Cursor
from gateway_bridge.gateway.events.store.sql import SqlEventStore

__all__ = ["DELIVERY_JOB", "Cursor", "DueDelivery", "SqlEventStore"]
