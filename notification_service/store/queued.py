"""The queued deliveries of one transaction (email, push, webhook): their jobs, and the
digest windows they join, written together.

A transaction first :meth:`~QueuedDeliveries.add`\\ s every queued delivery (the row it
will insert or update), then :meth:`~QueuedDeliveries.write`\\ s them all: the digest
windows are locked — or opened, with their digest job — in one global order (by their
``open_key``), whatever the order of the sends or recipients that need them, so that
transactions storing many sends at once never deadlock each other on windows; then the
delivery jobs are inserted, one statement per (kind, tenant, due time).

**One open digest window** per (tenant, user, category, channel), by the unique
``open_key``. A delivery that joins a window locks its row (PostgreSQL), so the digest
job, which closes the window before reading what it holds, waits for the joining
transaction to commit and then sees its deliveries; a delivery that comes after the
close opens a new window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from notification_service.models import (
    DELIVERY_JOBS,
    DIGEST_JOB,
    Channel,
    DeliveryState,
    Hold,
    Timing,
)
from notification_service.planning import digest_due
from notification_service.store.base import chunks
from service_kit import jobs
from service_kit.clock import rfc3339
from service_kit.db import as_utc, insert_ignoring_conflicts
from service_kit.schema import notification_digests
from service_kit.validation import new_id

#: (job kind, tenant id, due time or None for at once, max attempts)
_JobGroup = tuple[str, str, datetime | None, int]


@dataclass(slots=True)
class _Window:
    """A digest window some deliveries join: who opens it if none is open, and the
    delivery rows waiting for its id."""

    tenant_id: str
    user_id: str
    category: str
    channel: Channel
    due: datetime  # of a window opened now
    now: datetime
    max_attempts: int
    rows: list[dict[str, Any]] = field(default_factory=list)


class QueuedDeliveries:
    """Collects the queued deliveries of one transaction, then writes their jobs and
    digest windows (see the module docstring)."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._jobs: dict[_JobGroup, list[dict[str, Any]]] = defaultdict(list)
        self._now: datetime | None = None

    def add(
        self,
        row: dict[str, Any],
        *,
        tenant_id: str,
        user_id: str,
        category: str,
        timing: Timing,
        now: datetime,
        max_attempts: int,
    ) -> None:
        """Schedule the delivery ``row`` (its ``id`` and ``channel`` set): its ``state``,
        ``hold``, ``error`` and ``digest_id`` are set now, a digest's once
        :meth:`write` ran."""
        self._now = now if self._now is None else max(self._now, now)
        channel = Channel(row["channel"])
        if timing.digest_seconds > 0:
            key = f"{tenant_id}:{channel}:{category}:{user_id}"
            window = self._windows.get(key)
            if window is None:
                due = digest_due(now + timedelta(seconds=timing.digest_seconds), timing.quiet)
                window = _Window(tenant_id, user_id, category, channel, due, now, max_attempts)
                self._windows[key] = window
            window.rows.append(row)
            row.update(state=DeliveryState.HELD, hold=Hold.DIGEST)
            return
        hold_until = timing.hold_until
        self._jobs[(DELIVERY_JOBS[channel], tenant_id, hold_until, max_attempts)].append(
            {"delivery_id": row["id"]}
        )
        if hold_until is not None:
            row.update(
                state=DeliveryState.HELD,
                hold=Hold.QUIET_HOURS,
                error=f"quiet hours until {rfc3339(hold_until)}",
                digest_id=None,
            )
        else:
            row.update(state=DeliveryState.PENDING, hold=Hold.NONE, error="", digest_id=None)

    async def write(self, conn: AsyncConnection) -> None:
        """Lock or open the windows (in ``open_key`` order), fill in the rows that join
        them, and enqueue every job; in ``conn``'s transaction."""
        if self._windows:
            await self._open_windows(conn)
        for (kind, tenant_id, run_after, max_attempts), payloads in self._jobs.items():
            assert self._now is not None  # set by every add
            await jobs.enqueue_many(
                conn,
                kind,
                payloads,
                now=self._now,
                tenant_id=tenant_id,
                run_after=run_after,
                max_attempts=max_attempts,
            )

    async def _open_windows(self, conn: AsyncConnection) -> None:
        keys = sorted(self._windows)
        found: dict[str, tuple[str, datetime]] = {}
        for part in chunks(keys):
            found |= await _lock_windows(conn, part)
        missing = [key for key in keys if key not in found]
        opened: dict[str, tuple[str, datetime]] = {}
        for part in chunks(missing, 500):
            rows = [self._window_row(key) for key in part]
            inserted = await conn.execute(
                insert_ignoring_conflicts(conn, notification_digests)
                .values(rows)
                .returning(notification_digests.c.open_key)
            )
            ids = {row["open_key"]: row["id"] for row in rows}
            opened |= {key: (ids[key], self._windows[key].due) for key in inserted.scalars().all()}
        for key, (digest_id, due) in opened.items():
            window = self._windows[key]
            self._jobs[(DIGEST_JOB, window.tenant_id, due, window.max_attempts)].append(
                {"digest_id": digest_id}
            )
        found |= opened
        raced = [key for key in missing if key not in opened]  # opened by another just now
        for part in chunks(raced):
            found |= await _lock_windows(conn, part)
        for key, window in self._windows.items():
            digest_id, due = found[key]
            for row in window.rows:
                row.update(error=f"digest until {rfc3339(due)}", digest_id=digest_id)

    def _window_row(self, key: str) -> dict[str, Any]:
        window = self._windows[key]
        return {
            "id": new_id(),
            "tenant_id": window.tenant_id,
            "user_id": window.user_id,
            "category": window.category,
            "channel": str(window.channel),
            "open_key": key,
            "start_time": window.now,
            "end_time": window.due,
        }


async def _lock_windows(
    conn: AsyncConnection, keys: Sequence[str]
) -> dict[str, tuple[str, datetime]]:
    """The open windows of ``keys`` (id, end time), locked in ``open_key`` order."""
    query = (
        select(
            notification_digests.c.open_key,
            notification_digests.c.id,
            notification_digests.c.end_time,
        )
        .where(notification_digests.c.open_key.in_(keys))
        .order_by(notification_digests.c.open_key)
        .with_for_update()
    )
    rows = (await conn.execute(query)).all()
    return {row.open_key: (row.id, as_utc(row.end_time)) for row in rows}  # SQLite: naive UTC
