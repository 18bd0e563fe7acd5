"""One task pings every connection of a bridge, instead of websockets' task per connection.

websockets keeps each connection alive with a task of its own (a ping every
``ping_interval``, then a wait of up to ``ping_timeout`` for the pong): a task, its
coroutine and its timer, about 1.7 KiB per idle connection. The bridge turns that off and
runs :class:`Keepalive`: once a second it looks at each admitted connection and

- sends a ping when ``interval`` has passed since its last one (a connection's pings keep
  the rhythm of its admission, so they are spread over the interval, not sent in a burst);
- closes it with 1011 ("keepalive ping timeout") when the pong of its last ping has not
  come within ``timeout``, as websockets would.

What it keeps per connection is on the :class:`~gateway_bridge.bridge.connection.Conn`: when
it was last pinged and the pong it waits for. Connections still being admitted are bound by
the handshake and auth timeouts instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final, Generic, Protocol, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

log = logging.getLogger(__name__)

C = TypeVar("C", bound="Pinged")

#: How often the connections are looked at (a ping is late by at most this much).
TICK_SECONDS: Final = 1.0


class Pinged(Protocol):
    """What the keepalive needs of a connection (a :class:`~.connection.Conn` has it)."""

    @property
    def ws(self) -> ServerConnection: ...

    closed: bool
    pinged_at: float
    pong: asyncio.Future[float] | None


class Keepalive(Generic[C]):
    """Pings ``connections`` (see the module docstring); ``on_timeout`` closes one whose
    pong is overdue."""

    def __init__(
        self,
        connections: Iterable[C],
        *,
        interval: float,
        timeout: float,
        on_timeout: Callable[[C], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connections = connections
        self._interval = interval
        self._timeout = timeout
        self._on_timeout = on_timeout
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="keepalive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await self.tick()
            except Exception:  # one bad connection must not end every connection's pings
                log.exception("keepalive round failed")

    async def tick(self) -> None:
        """Ping each connection that is due; close each whose pong is overdue."""
        now = self._clock()
        for conn in self._connections:
            if conn.closed:
                continue
            if conn.pong is not None:
                if not conn.pong.done():
                    if now - conn.pinged_at >= self._timeout:
                        conn.pong = None
                        self._on_timeout(conn)
                    continue
                # Answered: nothing to keep until the next ping (and the emptied table of
                # websockets' pings by payload, ~160 bytes, goes back too).
                conn.pong = None
                if not conn.ws.pending_pings:
                    conn.ws.pending_pings.clear()
            if now - conn.pinged_at < self._interval or conn.ws.state is not State.OPEN:
                continue  # (a closing connection's ping would wait for the close)
            try:
                pong = asyncio.ensure_future(await conn.ws.ping())  # it is a future
            except ConnectionClosed:
                continue
            # A connection that closes fails its pending pong: nobody else looks at it.
            pong.add_done_callback(_seen)
            conn.pong, conn.pinged_at = pong, now


def _seen(pong: asyncio.Future[float]) -> None:
    if not pong.cancelled():
        pong.exception()
