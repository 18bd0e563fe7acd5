"""The ``SubscribeEvents`` streams of one gateway process: what each wants, its queue, the cap.

No I/O here: :mod:`.reader` feeds the streams from the event log, :mod:`.service`
opens them and ends those whose tenant changed (:mod:`.access`). Invariants:

- At most ``max_per_tenant`` streams of one tenant are open in the process; one
  more is refused with RESOURCE_EXHAUSTED (and RetryInfo) until one of them closes.
- A stream hands out events in log order, each after its cursor and never twice:
  whatever reaches it at or behind its cursor is dropped.
- Its queue holds at most ``queue_size`` events. A *live* stream whose queue is
  full is ended with RESOURCE_EXHAUSTED ("resume from the last cursor"), so a client
  that reads slowly never holds up the reader or the other streams, and loses
  nothing: it resumes from its cursor. A stream still *catching up* from the log
  drops its queue instead and reads the log again, since what it dropped is there.
- An ended stream takes nothing more; the error it was ended with is what its
  client gets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter, Gauge

from gateway_bridge.gateway.events.access import StreamAccess
from gateway_bridge.gateway.events.store import Cursor
from gateway_bridge.gateway.events.store.log import LogStart
from gateway_bridge.gateway.events.webhooks import matches
from gateway_bridge.gateway.outbox import ChatEvent
from service_kit.errors import KeelError, ResourceExhausted

#: Events a stream may have waiting before it is cut as too slow.
DEFAULT_QUEUE_SIZE: Final = 1000
#: What a client refused at the cap is told to wait before trying again.
RETRY_WHEN_FULL: Final = 5.0

OPEN_STREAMS = Gauge("keel_event_streams", "Open SubscribeEvents streams (gateway).")
STREAMS_CUT = Counter(
    "keel_event_streams_cut_total",
    "SubscribeEvents streams the gateway ended, by the status it ended them with.",
    ["grpc_code"],
)


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """The events a stream wants: names or patterns (empty: every event) and channels
    (empty: every channel)."""

    events: tuple[str, ...] = ()
    channel_ids: frozenset[str] = frozenset()

    def wants(self, event: ChatEvent) -> bool:
        if self.channel_ids and event.channel_id not in self.channel_ids:
            return False
        return not self.events or matches(self.events, event.name)


class EventStream:
    """One open stream: its tenant, filter and access, its cursor and its queue.

    ``access`` is how its caller authenticated, kept to check it again. ``cursor`` is
    the position of the last event handed out or passed over. The reader calls
    :meth:`offer`; the stream's own task calls the rest.
    """

    def __init__(
        self,
        tenant_id: str,
        wanted: StreamFilter,
        access: StreamAccess,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.tenant_id = tenant_id
        self.wanted = wanted
        self.access = access
        self.cursor: Cursor = (0, 0)
        #: Where a stream without a cursor of its client's started: it skips what came before.
        self.start: LogStart | None = None
        #: The queue may lack events the log holds: read the log from the cursor first.
        self.behind = True
        self.catching_up = True
        self.ended: KeelError | None = None
        self._queue: deque[tuple[Cursor, ChatEvent]] = deque()
        self._queue_size = queue_size
        self._wake = asyncio.Event()

    def offer(self, position: Cursor, event: ChatEvent) -> None:
        """Queue ``event`` (of this stream's tenant) if the stream wants it; never waits."""
        if self.ended is not None or not self.wants(position, event):
            return
        if len(self._queue) >= self._queue_size:
            if self.catching_up:
                self.fall_behind()
            else:
                self.end(
                    ResourceExhausted(
                        f"this stream fell more than {self._queue_size} events behind;"
                        " resume with `after` set to the last cursor received",
                        retry_after=0.0,
                    )
                )
            return
        self._queue.append((position, event))
        self._wake.set()

    def wants(self, position: Cursor, event: ChatEvent) -> bool:
        """Whether the client gets ``event``: it passes the filter, and it was not
        committed before a stream without a cursor started."""
        if self.start is not None and self.start.before(position):
            return False
        return self.wanted.wants(event)

    def fall_behind(self) -> None:
        """Drop the queue: the stream reads the log from its cursor again."""
        self._queue.clear()
        self.behind = True
        self._wake.set()

    def end(self, error: KeelError) -> None:
        """End the stream with ``error`` (the first one given counts)."""
        if self.ended is not None:
            return
        self.ended = error
        self._queue.clear()
        self._wake.set()
        STREAMS_CUT.labels(error.code.name).inc()

    def check(self) -> None:
        """Raise the error the stream was ended with, if it was."""
        if self.ended is not None:
            raise self.ended

    def begin_catch_up(self) -> None:
        self.behind = False
        self.catching_up = True

    def end_catch_up(self) -> None:
        """A read of the log came back short: go live, unless the queue was dropped while
        the stream read (then it reads again)."""
        if not self.behind:
            self.catching_up = False

    async def next_live(self) -> tuple[Cursor, ChatEvent] | None:
        """The next queued event after the cursor, which moves to it; None when the
        stream fell behind. Raises the error the stream was ended with."""
        while True:
            self.check()
            if self.behind:
                return None
            while self._queue:
                position, event = self._queue.popleft()
                if position > self.cursor:
                    self.cursor = position
                    return position, event
            self._wake.clear()
            await self._wake.wait()


class EventStreams:
    """The open streams of a process by tenant, at most ``max_per_tenant`` each."""

    def __init__(self, *, max_per_tenant: int) -> None:
        self._max = max_per_tenant
        self._by_tenant: dict[str, list[EventStream]] = {}

    def admit(self, stream: EventStream) -> None:
        """Count ``stream`` as open; RESOURCE_EXHAUSTED when its tenant has the most."""
        open_now = self._by_tenant.setdefault(stream.tenant_id, [])
        if len(open_now) >= self._max:
            raise ResourceExhausted(
                f"the tenant already has {self._max} event streams open on this gateway"
                " (KEEL_MAX_EVENT_STREAMS_PER_TENANT): close one, or retry later",
                retry_after=RETRY_WHEN_FULL,
            )
        open_now.append(stream)
        OPEN_STREAMS.inc()

    def release(self, stream: EventStream) -> None:
        """``stream`` closed: its slot is free."""
        open_now = self._by_tenant.get(stream.tenant_id, [])
        if stream in open_now:
            open_now.remove(stream)
            OPEN_STREAMS.dec()
        if not open_now:
            self._by_tenant.pop(stream.tenant_id, None)

    def of(self, tenant_id: str) -> tuple[EventStream, ...]:
        return tuple(self._by_tenant.get(tenant_id, ()))

    def tenants(self) -> list[str]:
        """The tenants with open streams."""
        return list(self._by_tenant)

    def all(self) -> list[EventStream]:
        return [s for streams in self._by_tenant.values() for s in streams]
