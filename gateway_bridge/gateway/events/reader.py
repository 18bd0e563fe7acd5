"""The one reader of the event log that feeds every ``SubscribeEvents`` stream of a process.

Instead of a polling query per stream, one loop reads the log once per wake-up (a chat
event of a tenant with streams, from the bus; or every ``poll_interval``): the events
of every tenant that has streams, after the reader's position, in commit order
(:meth:`~gateway_bridge.gateway.events.store.log.SqlLogCursors.log_after`), and offers
each to the streams of its tenant (:meth:`.streams.EventStream.offer`, which never
waits, so a slow stream holds up nobody).

A stream starts by *catching up*: :meth:`SharedLogReader.follow` reads the log itself
from the stream's cursor, a page at a time, until a read comes back short, while the
reader already queues what it reads for the stream. Then the stream is *live* and
takes the rest from its queue, skipping what it already handed out.

Why nothing is lost or repeated at that seam: the reader's position only grows, and
like every read of the log it returns only events no running transaction can still
put behind them (``pg_snapshot_xmin``, see :mod:`.store`). An event the stream's last
catch-up read did not see became readable after the stream was registered, so the
reader reads it afterwards and queues it; an event both saw is handed out once, by
cursor. Whenever a queue may lack something (it overflowed while catching up, or the
reader started afresh from the log's head after a time without streams) the stream
reads the log again before it takes from the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Collection
from typing import Final, Protocol

from prometheus_client import Counter

from gateway_bridge.gateway.events.store import Cursor
from gateway_bridge.gateway.events.streams import EventStream, EventStreams
from gateway_bridge.gateway.outbox import ChatEvent

log = logging.getLogger(__name__)

#: Events per read of the log.
PAGE: Final = 500

LOG_READS = Counter(
    "keel_event_log_reads_total",
    "Reads of the event log by the one reader that feeds every SubscribeEvents stream.",
)


class LogReads(Protocol):
    """The reads of the event log the streams need (``SqlEventStore`` has them)."""

    async def events_after(
        self, tenant_id: str, cursor: Cursor, *, limit: int
    ) -> list[tuple[Cursor, ChatEvent]]: ...

    async def log_after(
        self, tenant_ids: Collection[str], cursor: Cursor, *, limit: int
    ) -> list[tuple[Cursor, ChatEvent]]: ...

    async def head(self, *tenant_ids: str) -> Cursor: ...


class SharedLogReader:
    """Reads the event log for all of ``streams`` and hands each its events."""

    def __init__(
        self,
        store: LogReads,
        streams: EventStreams,
        *,
        poll_interval: float,
        page: int = PAGE,
    ) -> None:
        self._store = store
        self._streams = streams
        self._poll = poll_interval
        self._page = page
        # Every event of the streams' tenants up to here has been offered to them; None
        # while there are no streams (the next one starts it from the log's head).
        self._position: Cursor | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-log-reader")

    async def close(self) -> None:
        # It only reads: cancelling it mid-read leaves nothing locked.
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self, tenant_id: str) -> None:
        """``tenant_id`` has a new event (or a new stream): read the log now if it matters."""
        if self._streams.of(tenant_id):
            self._wake.set()

    async def _run(self) -> None:
        failing = False
        while True:
            self._wake.clear()
            try:
                more = await self._read()
                failing = False
            except Exception:
                # The database is down, most likely: live streams wait, and get every
                # event once the reader reads again (its position did not move).
                if not failing:
                    log.warning("reading the event log failed; retrying", exc_info=True)
                failing, more = True, False
            if not more:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                except TimeoutError:
                    pass

    async def _read(self) -> bool:
        """One read for every stream; True when there may be more to read at once."""
        tenants = self._streams.tenants()
        if not tenants:
            self._position = None
            return False
        if self._position is None:
            self._position = await self._store.head(*tenants)
            # Streams that opened before this may have missed what came before the head.
            for stream in self._streams.all():
                stream.fall_behind()
            return True
        LOG_READS.inc()
        page = await self._store.log_after(tenants, self._position, limit=self._page)
        for position, event in page:
            self._position = position
            for stream in self._streams.of(event.tenant_id):
                stream.offer(position, event)
        return len(page) == self._page

    async def follow(self, stream: EventStream) -> AsyncGenerator[tuple[Cursor, ChatEvent], None]:
        """Every event ``stream`` wants after its cursor, in log order, without end: read
        from the log while it catches up, then from its queue. Raises what the stream was
        ended with, and ``OutOfRange`` for a cursor older than the log keeps."""
        while True:
            if not stream.behind:
                item = await stream.next_live()
                if item is not None:
                    yield item
                continue
            stream.begin_catch_up()
            while True:
                page = await self._store.events_after(
                    stream.tenant_id, stream.cursor, limit=self._page
                )
                for position, event in page:
                    stream.check()
                    stream.cursor = position  # past the unwanted ones too
                    if stream.wants(position, event):
                        yield position, event
                if len(page) < self._page:
                    break
            stream.end_catch_up()
