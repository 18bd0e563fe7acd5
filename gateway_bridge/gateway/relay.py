"""From the event log to the bus: publish after commit, and drain what was left behind.

:meth:`EventRelay.publish` is called right after a transaction commits; it puts
the events on the bus at once and notes their cursors, and the background loop
marks the noted cursors published in batches (one UPDATE for many events, off
the send path). The events of the transactions that commit while a publish is
under way go together in the next one, as one bus message
(:func:`~gateway_bridge.gateway.outbox.encode_events`), in the order they were
handed over. Events older than ``grace`` seconds that are still unmarked — a
process died between commit and publish, or the bus was down — are published
by whichever gateway drains them first, and marked only once the bus took
them (row locks keep two gateways from taking the same rows on PostgreSQL).
Consumers may therefore see an event twice, never zero times; ``seq`` and
``event_id`` let them drop the repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from gateway_bridge.gateway.outbox import ChatEvent, encode_events
from gateway_bridge.vocabulary import CHAT_EVENTS_TOPIC
from service_kit import tracing
from service_kit.batching import Batcher
from service_kit.bus import EventBus

log = logging.getLogger(__name__)

#: At most the events of this many ``publish`` calls go in one bus message.
PUBLISH_BATCH: Final = 128


class EventLog(Protocol):
    """The part of the chat store the relay needs."""

    def unpublished_events(
        self, *, older_than: datetime, limit: int
    ) -> AbstractAsyncContextManager[list[ChatEvent]]: ...

    async def mark_published(self, cursors: Sequence[int]) -> None: ...


class EventRelay:
    """Publishes committed chat events to the bus; never loses one."""

    def __init__(
        self,
        log_store: EventLog,
        bus: EventBus,
        *,
        interval: float = 0.2,
        grace: float = 5.0,
        batch: int = 500,
    ) -> None:
        self._store = log_store
        self._bus = bus
        self._interval = interval
        self._grace = grace
        self._batch = batch
        self._published: list[int] = []
        self._task: asyncio.Task[None] | None = None
        # One publish at a time, so the bus gets the events in the order they came.
        self._publishes: Batcher[Sequence[ChatEvent], None] = Batcher(
            self._publish_together, max_batch=PUBLISH_BATCH, max_in_flight=1
        )

    async def publish(self, events: Sequence[ChatEvent]) -> None:
        """Put ``events`` (just committed) on the bus; a failure leaves them to the drain.

        When tracing is on, in a ``keel.bus.publish`` span whose ``traceparent`` each
        payload carries (so the delivering bridge's span joins the trace)."""
        tracer = tracing.tracer()
        if tracer is None or not events:
            await self._publish(events, "")
            return
        with tracer.start_as_current_span(
            "keel.bus.publish",
            kind=tracing.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "keel",
                "messaging.destination.name": CHAT_EVENTS_TOPIC,
                "messaging.batch.message_count": len(events),
            },
        ):
            await self._publish(events, tracing.traceparent())

    async def _publish(self, events: Sequence[ChatEvent], traceparent: str) -> None:
        if traceparent:
            events = [replace(event, traceparent=traceparent) for event in events]
        if events:
            await self._publishes.submit(events)

    async def _publish_together(self, handed: list[Sequence[ChatEvent]]) -> list[None]:
        """One bus message for the events of every ``publish`` waiting (the Batcher's run)."""
        events = [event for events in handed for event in events]
        try:
            await self._bus.publish(CHAT_EVENTS_TOPIC, encode_events(events))
        except Exception:
            log.warning("bus publish failed; the event log will resend", exc_info=True)
        else:
            self._published.extend(event.cursor for event in events)
        return [None] * len(handed)

    async def flush(self) -> None:
        """Mark what was published; then publish what nobody did within ``grace``."""
        done, self._published = self._published, []
        if done:
            await self._store.mark_published(done)
        older_than = datetime.now(UTC) - timedelta(seconds=self._grace)
        while True:
            async with self._store.unpublished_events(
                older_than=older_than, limit=self._batch
            ) as stale:
                if stale:
                    log.info("publishing events left unpublished", extra={"count": len(stale)})
                    await self._bus.publish(CHAT_EVENTS_TOPIC, encode_events(stale))
            if len(stale) < self._batch:
                break

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-relay")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.warning("event relay pass failed; retrying", exc_info=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await self.flush()
        except Exception:
            log.warning("could not mark published events at shutdown", exc_info=True)
