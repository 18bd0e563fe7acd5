"""Storing a send: its notifications, their deliveries and the jobs that deliver them, in
one transaction; concurrent small sends share transactions (group commit); and releasing
a send scheduled for later.

Invariants:

- **One transaction per send's writes.** A send's request id, notifications, deliveries,
  digest windows and jobs commit together or not at all: a job exists if and only if its
  delivery does. The same transaction reads what planning needs (preferences, tenant
  settings, push subscriptions) and, after its writes, the unread counts of the inboxes
  the send landed in (:mod:`.send_writes` says how; a batch of plain sends on
  PostgreSQL writes and counts in one statement, after reading without a transaction
  what it plans with, :mod:`.send_plain_pg`).
- **Group commit.** Sends to at most :data:`BATCHED_RECIPIENTS` users are submitted to a
  :class:`~service_kit.batching.Batcher`: those that arrive while a batch is being stored
  go together in the next one, in one transaction (on PostgreSQL a batch of only plain
  sends — in-app, at once, no request id — on asyncpg directly, :mod:`.send_plain_pg`),
  each answered on its own (its
  notifications, its counts, or its own error). A batch that fails as a whole — a unique
  key hit, a deadlock, a serialization failure, any error but an unreachable database —
  is rolled back and its sends are stored one at a time, each in its own transaction, so
  one bad send fails alone and a deadlock fails none. A send that repeats the request id
  of an earlier send of its batch runs alone once the batch has ended (it then finds the
  first and returns its notifications). ``keel_notification_sends_alone_total{reason}``
  counts the sends stored one at a time for it.
- **Counts in commit order.** Within a process, the transactions that store sends (a
  batch, and the large sends stored alone meanwhile) read their unread counts and commit
  one at a time, in turn (an ``asyncio.Lock`` taken after the writes and held through
  the commit): a transaction counts everything committed before its turn and nothing
  committed after it, so the counts a user's live frames carry rise one by one, as if the
  transactions had run one after another, while their writes overlap. The holder of the
  turn only reads and commits (a batch of plain sends on PostgreSQL also inserts its
  new rows, :mod:`.send_plain_pg`), so it never waits on another's row locks (no
  deadlock with them).
- **Once per request id.** The request row is written before the send's other rows; a
  second send with the same (tenant, request id) finds it (on PostgreSQL it waits for the
  first to commit) and stores nothing (:class:`SendExists`).
- **Release once.** Only deliveries still HELD for their ``send_at`` are released, so a
  release job that runs twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notification_service.models import (
    Channel,
    Delivery,
    DeliveryState,
    Hold,
    Notification,
    NotificationId,
    Timing,
    UserId,
)
from notification_service.store.base import SqlStoreBase, chunks, with_deliveries
from notification_service.store.queued import QueuedDeliveries
from notification_service.store.rows import to_delivery
from notification_service.store.send_models import (
    NewSend,
    SendExists,
    SendInputs,
    SendPlanner,
    StoredSend,
)
from notification_service.store.send_plain_pg import is_plain, write_plain_sends
from notification_service.store.send_writes import Outcome, request_query, write_sends
from service_kit.batching import Batcher
from service_kit.db import database_unavailable, driver_statements, write_transaction
from service_kit.schema import (
    notification_deliveries,
    notifications,
)

__all__ = ["NewSend", "SendExists", "SendInputs", "SendPlanner", "SqlSends", "StoredSend"]

log = logging.getLogger(__name__)

#: Most sends stored in one transaction (group commit).
SEND_BATCH = 64
#: Sends to at most this many users are stored with others; larger ones alone.
BATCHED_RECIPIENTS = 32
#: Batches stored at once on PostgreSQL (SQLite: always one). Two overlapped their round
#: trips in-process (small sends 2-3x on a loaded machine), but in the benchmark's
#: cluster they made smaller batches that cost more CPU and database work per send, and
#: one-user sends were slower in 3 runs of 4 (10-user sends faster in 3 of 4); one it is.
SEND_BATCHES_IN_FLIGHT = 1
#: Attempts of a send stored alone that meets a deadlock or a serialization failure.
ALONE_ATTEMPTS = 3
#: SQLSTATEs of a transaction that lost to another and may simply run again.
_RETRYABLE_SQLSTATES = ("40P01", "40001")

SENDS_ALONE = Counter(
    "keel_notification_sends_alone_total",
    "Sends of a group commit stored one at a time after their batch failed, by reason"
    " (conflict: a unique key or a deadlock; error: any other error of the batch).",
    ["reason"],
)


class SqlSends(SqlStoreBase):
    """Sends in SQL (see the module docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        # One batch at a time on SQLite (one writer at a time); on PostgreSQL
        # SEND_BATCHES_IN_FLIGHT. Every transaction storing sends counts and commits in
        # turn (_counting).
        self._counting = asyncio.Lock()
        # The commonest batch runs on asyncpg directly (send_plain_pg).
        self._plain_on_driver = engine.dialect.name == "postgresql"
        self._batches: Batcher[NewSend, StoredSend] = Batcher(
            self._create_batch,
            max_batch=SEND_BATCH,
            max_in_flight=1 if engine.dialect.name == "sqlite" else SEND_BATCHES_IN_FLIGHT,
        )

    async def find_send(self, tenant_id: str, request_id: str) -> tuple[str, str] | None:
        """The send the tenant made with ``request_id`` and its request's fingerprint, if
        any."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(request_query(tenant_id, request_id))).first()
        return (row.send_id, row.fingerprint) if row else None

    async def send_notifications(self, tenant_id: str, send_id: str) -> list[Notification]:
        """The notifications of a send, in its order, as they are now."""
        query = (
            select(notifications)
            .where(notifications.c.send_id == send_id, notifications.c.tenant_id == tenant_id)
            .order_by(notifications.c.position)
        )
        async with self._engine.connect() as conn:
            rows = [r._mapping for r in (await conn.execute(query)).all()]
            return await with_deliveries(conn, rows)

    async def create_send(self, send: NewSend) -> StoredSend:
        """Plan ``send`` with ``send.plan`` on what its transaction reads, and store it
        (see the module docstring). Raises :class:`SendExists` when its request id was
        used, storing nothing."""
        if len(send.user_ids) > BATCHED_RECIPIENTS:
            return await self._create_alone(send)
        return await self._batches.submit(send)

    async def _create_alone(self, send: NewSend) -> StoredSend:
        """Store ``send`` in a transaction of its own; run again when it lost a deadlock
        or a serialization failure (up to ``ALONE_ATTEMPTS`` times)."""
        for attempt in range(1, ALONE_ATTEMPTS + 1):
            try:
                async with self._transaction() as (conn, before_counting):
                    (outcome,) = await write_sends(conn, [send], before_counting=before_counting)
                    if isinstance(outcome, Exception):
                        raise outcome  # rolls back: nothing of this send is kept
                return outcome
            except DBAPIError as exc:
                if attempt == ALONE_ATTEMPTS or not _lost_to_another(exc):
                    raise
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def _create_batch(self, batch: list[NewSend]) -> list[StoredSend | BaseException]:
        """Group commit: store ``batch`` in one transaction, each send answered on its own;
        one at a time when that fails (see the module docstring)."""
        first: list[NewSend] = []
        repeats: list[int] = []
        seen: set[tuple[str, str]] = set()
        for index, send in enumerate(batch):
            key = (send.tenant_id, send.request.request_id)
            if send.request.request_id and key in seen:
                repeats.append(index)
            else:
                seen.add(key)
                first.append(send)
        outcomes: list[Outcome]
        try:
            if self._plain_on_driver and all(is_plain(send) for send in first):
                async with self._turn() as take_turn, driver_statements(self._engine) as driver:
                    outcomes = await write_plain_sends(driver, first, before_counting=take_turn)
            else:
                async with self._transaction() as (conn, before_counting):
                    outcomes = await write_sends(conn, first, before_counting=before_counting)
        except Exception as exc:
            if database_unavailable(exc) is not None:
                raise  # every send of the batch hears of it; alone they would fail too
            reason = "conflict" if _conflict(exc) else "error"
            log.info(
                "a batch of %d sends failed (%s: %s); storing them one at a time",
                len(first),
                reason,
                type(exc).__name__,
            )
            SENDS_ALONE.labels(reason).inc(len(first))
            outcomes = [await self._outcome_alone(send) for send in first]
        answers: list[StoredSend | BaseException] = list(outcomes)
        for index in repeats:  # after the first of their request id has committed
            answers.insert(index, await self._outcome_alone(batch[index]))
        return answers

    @asynccontextmanager
    async def _transaction(
        self,
    ) -> AsyncIterator[tuple[AsyncConnection, Callable[[], Awaitable[None]]]]:
        """A write transaction, and what to await before its counts are read: this
        process's turn to count and commit, held until the transaction has ended (see
        the module docstring)."""
        async with self._turn() as take_turn, write_transaction(self._engine) as conn:
            yield conn, take_turn

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """What takes this process's turn to count and commit; the turn, once taken, is
        held until the block has ended (enter it before the transaction, so that the
        transaction has ended when the turn passes on)."""
        held = False

        async def take_turn() -> None:
            nonlocal held
            await self._counting.acquire()
            held = True

        try:
            yield take_turn
        finally:
            if held:
                self._counting.release()

    async def _outcome_alone(self, send: NewSend) -> Outcome:
        try:
            return await self._create_alone(send)
        except Exception as exc:
            return exc

    async def scheduled_deliveries(
        self, tenant_id: str, send_id: str
    ) -> list[tuple[Delivery, UserId, str]]:
        """The deliveries of a send still waiting for its ``send_at``, each with its
        notification's user and category."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_held_for_release(tenant_id, send_id))).all()
        return [(to_delivery(r._mapping), UserId(r.user_id), r.category) for r in rows]

    async def release(
        self,
        tenant_id: str,
        send_id: str,
        timings: Mapping[str, Timing],
        *,
        now: datetime,
        max_attempts: int,
    ) -> list[NotificationId]:
        """Release a send's deliveries still held for its ``send_at``: in-app ones land in
        the inbox now, the others are scheduled with ``timings`` (by delivery id; at once
        when missing). Returns the notifications that landed in an inbox."""
        async with write_transaction(self._engine) as conn:
            query = _held_for_release(tenant_id, send_id).with_for_update(
                of=notification_deliveries
            )
            held = [
                (to_delivery(r._mapping), r.user_id, r.category)
                for r in (await conn.execute(query)).all()
            ]
            queued = QueuedDeliveries()
            landed: list[NotificationId] = []
            changes: list[dict[str, Any]] = []
            for delivery, user_id, category in held:
                row: dict[str, Any] = {"id": delivery.id, "channel": str(delivery.channel)}
                if delivery.channel is Channel.IN_APP:
                    row.update(state=DeliveryState.SENT, hold=Hold.NONE, error="", digest_id=None)
                    landed.append(delivery.notification_id)
                else:
                    queued.add(
                        row,
                        tenant_id=tenant_id,
                        user_id=user_id,
                        category=category,
                        timing=timings.get(delivery.id, Timing()),
                        now=now,
                        max_attempts=max_attempts,
                    )
                changes.append(row)
            await queued.write(conn)
            if changes:
                await conn.execute(_RELEASE_DELIVERY, [_release_params(r, now) for r in changes])
            for part in chunks(landed):
                await conn.execute(
                    update(notifications).where(notifications.c.id.in_(part)).values(inbox_time=now)
                )
        return landed


def _held_for_release(tenant_id: str, send_id: str) -> Select[Any]:
    return (
        select(notification_deliveries, notifications.c.user_id, notifications.c.category)
        .join(notifications, notifications.c.id == notification_deliveries.c.notification_id)
        .where(
            notifications.c.send_id == send_id,
            notifications.c.tenant_id == tenant_id,
            notification_deliveries.c.state == DeliveryState.HELD,
            notification_deliveries.c.hold == Hold.SCHEDULED,
        )
        .order_by(notifications.c.user_id, notification_deliveries.c.channel)
    )


def _lost_to_another(exc: DBAPIError) -> bool:
    """Whether ``exc`` is a deadlock or serialization failure (the transaction may run
    again as it was)."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return sqlstate in _RETRYABLE_SQLSTATES


def _conflict(exc: Exception) -> bool:
    return isinstance(exc, IntegrityError) or (
        isinstance(exc, DBAPIError) and _lost_to_another(exc)
    )


# One statement for all of a release's deliveries (executemany).
_RELEASE_DELIVERY = (
    update(notification_deliveries)
    .where(notification_deliveries.c.id == bindparam("delivery_id"))
    .values(
        state=bindparam("new_state"),
        hold=bindparam("new_hold"),
        error=bindparam("new_error"),
        digest_id=bindparam("new_digest_id"),
        update_time=bindparam("new_update_time"),
    )
)


def _release_params(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "delivery_id": row["id"],
        "new_state": row["state"],
        "new_hold": row["hold"],
        "new_error": row["error"],
        "new_digest_id": row["digest_id"],
        "new_update_time": now,
    }
