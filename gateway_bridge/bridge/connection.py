"""The bridge's browser connections: one :class:`Conn` each, and the registry of them.

A connection is admitted (:mod:`~gateway_bridge.bridge.admission`) with its tenant
and user, and registered under its *key* (``c:<id>``), the key its subscriptions
travel under on the gateway stream. :class:`Connections` also counts them per
tenant and per user, for the limits admission applies.

:meth:`Conn.write` is the fan-out's one write: bytes of ready-made frames straight to
the transport, unless the connection already has more than the send buffer
unsent — then it is a slow consumer, and the caller cuts it.

:class:`BrowserSocket` is websockets' server connection cut down to what an idle
connection needs to keep (the issue-13 budget is 12 KiB per idle subscribed connection):
once admitted, its messages are handed to a callback as they arrive
(:meth:`BrowserSocket.deliver_to`) instead of queueing for a task that waits in
``recv()``, so an idle connection holds no reader coroutines, no frame queue and no
waiter; and its drain waiters are a list (websockets' deque allocates 760 bytes
up front for a queue that is empty but while a write is blocked).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from websockets.asyncio.messages import MAX_FRAGMENTS, Assembler
from websockets.exceptions import ConnectionClosed
from websockets.frames import BINARY, CONT, TEXT, CloseCode, Frame
from websockets.protocol import Event, State
from websockets.server import ServerProtocol
from websockets.typing import Data

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.http import BridgeConnection
from service_kit.auth import TenantContext

CONNECTIONS = Gauge("keel_bridge_connections", "Open WebSocket connections.")
DELIVERIES = MetricCounter("keel_bridge_deliveries_total", "Event frames written to sockets.")
CLOSED = MetricCounter("keel_bridge_closed_total", "Connections closed by the bridge.", ["code"])

log = logging.getLogger(__name__)

#: Messages a connection may have waiting while one of its frames runs before the bridge
#: stops reading its socket, and the number it resumes at (websockets' ``max_queue``
#: default, 16 frames, and its low-water mark, a quarter of it).
MAX_WAITING: Final = 16
RESUME_AT: Final = MAX_WAITING // 4

Receiver = Callable[["Conn", Data], None]


class BrowserSocket(BridgeConnection):
    """A browser's WebSocket (see the module docstring). Until :meth:`deliver_to` it is
    websockets' connection as it comes (admission reads the ``auth`` frame with
    ``recv()``); from then on each whole message goes to the receiver, in order, as soon
    as it arrives. Control frames are websockets' as before: pings are answered, pongs
    acknowledged, a close frame answered and the socket closed."""

    # In slots: websockets' connection already has 27 attributes in its __dict__, and
    # past 30 an instance no longer shares its keys with the others (+1.5 KiB each).
    __slots__ = ("_fragments", "_receiver", "conn")

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        # Only append, remove and iteration are used on it (asyncio's FlowControlMixin).
        self.drain_waiters = cast("collections.deque[asyncio.Future[None]]", [])
        self.conn: Conn | None = None
        self._receiver: Receiver | None = None
        self._fragments: list[Frame] | None = None

    async def send_text(self, text: str) -> None:
        """Send one text frame: written straight to the socket when the connection is
        open (as the fan-out writes; uncompressed, which permessage-deflate allows),
        websockets' ``send`` otherwise, which raises the ``ConnectionClosed`` of a closing
        connection."""
        if self.protocol.state is State.OPEN:
            self.transport.write(p.encode_text_frame(text.encode()))
        else:
            await self.send(text)

    def deliver_to(self, conn: Conn, receiver: Receiver) -> None:
        """Hand every message from now on to ``receiver(conn, message)``, starting with
        those already queued; websockets' queue (and its reader callbacks) is let go.
        Call once, from the task that last read with ``recv()``, when it has returned.
        ``receiver`` should be one object shared by all connections (a bound method
        made once), not one made per connection."""
        queued = self.recv_messages.frames.queue
        if self.recv_messages.paused:  # the receiver pauses reading again if it must
            self.transport.resume_reading()
        self.recv_messages = _NO_MORE_MESSAGES
        self.conn, self._receiver = conn, receiver
        for frame in queued:
            self._data_frame(frame)

    def process_event(self, event: Event) -> None:
        if (
            self._receiver is not None
            and isinstance(event, Frame)
            and event.opcode in (TEXT, BINARY, CONT)
        ):
            self._data_frame(event)
        else:
            super().process_event(event)

    def _data_frame(self, frame: Frame) -> None:
        """Assemble ``frame`` into its message (websockets' ``Assembler.get`` rules:
        TEXT is decoded, BINARY is bytes, at most ``MAX_FRAGMENTS`` fragments)."""
        assert self.conn is not None and self._receiver is not None
        fragments = self._fragments
        if fragments is None:
            if frame.fin:
                data = bytes(frame.data)
                opcode = frame.opcode
            else:
                self._fragments = [frame]
                return
        else:
            if len(fragments) >= MAX_FRAGMENTS:
                self._fragments = None
                self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return
            fragments.append(frame)
            if not frame.fin:
                return
            self._fragments = None
            data = b"".join(f.data for f in fragments)
            opcode = fragments[0].opcode
        if opcode is TEXT:
            try:
                message: Data = data.decode()
            except UnicodeDecodeError as exc:
                self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        else:
            message = data
        self._receiver(self.conn, message)

    def _fail(self, code: CloseCode, reason: str) -> None:
        """Fail the connection as websockets' ``recv()`` would (1007 for a text message
        that is not UTF-8, 1009 for too many fragments), waiting for the close in a task
        as its ``send_context`` does."""

        async def fail() -> None:
            try:
                async with self.send_context():
                    self.protocol.fail(code, reason)
            except ConnectionClosed:
                pass

        _fails.add(task := self.loop.create_task(fail()))
        task.add_done_callback(_fails.discard)


#: Tasks failing a connection (asyncio keeps only weak references to tasks).
_fails: set[asyncio.Task[None]] = set()


class _NoMoreMessages:
    """What stands for websockets' frame queue (``recv_messages``) once messages go to a
    receiver: one for every connection; ``connection_lost`` closes it (nothing to do)."""

    paused = False

    def close(self) -> None:
        pass

    async def get(self, decode: bool | None = None) -> Data:
        raise RuntimeError("this connection's messages go to its receiver, not to recv()")


_NO_MORE_MESSAGES: Final = cast("Assembler", _NoMoreMessages())


@dataclass(eq=False, slots=True)
class Conn:
    """One browser connection."""

    id: str
    ws: BrowserSocket
    tenant: TenantContext
    user_id: str
    session: p.Session
    #: When its client token was issued and when it expires (a fresh ``auth`` frame
    #: moves both); the connection is closed with 4002 at expiry.
    issued_at: datetime
    expires_at: datetime
    closed: bool = False
    #: When the bridge's keepalive last pinged it (``time.monotonic``; admission at first)
    #: and the pong it waits for (:mod:`~gateway_bridge.bridge.keepalive`).
    pinged_at: float = field(default_factory=time.monotonic)
    pong: asyncio.Future[float] | None = None
    #: Its messages that wait while one of its frames runs (None when none runs), and
    #: whether its socket is not read until they are down to ``RESUME_AT``.
    waiting: list[Data] | None = None
    reading_paused: bool = False

    @property
    def key(self) -> str:
        return "c:" + self.id

    @property
    def tenant_id(self) -> str:
        return self.tenant.tenant_id

    def write(self, data: bytes, send_buffer_bytes: int) -> bool | None:
        """Write ``data`` (whole frames) unless the connection is closing (None) or a slow
        consumer, with more than ``send_buffer_bytes`` unsent (False: cut it)."""
        if self.closed or self.ws.state is not State.OPEN:
            return None
        transport = self.ws.transport
        if transport.get_write_buffer_size() > send_buffer_bytes:
            return False
        transport.write(data)
        return True


class Connections:
    """The open connections by key and by user, counted per tenant."""

    def __init__(self) -> None:
        self._by_key: dict[str, Conn] = {}
        self._per_tenant: Counter[str] = Counter()
        self._by_user: dict[tuple[str, str], set[Conn]] = {}

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self._by_key.values()))

    def get(self, key: str) -> Conn | None:
        return self._by_key.get(key)

    def of(self, tenant_id: str) -> list[Conn]:
        """The open connections of a tenant."""
        return [conn for conn in self._by_key.values() if conn.tenant_id == tenant_id]

    def of_tenant(self, tenant_id: str) -> int:
        return self._per_tenant[tenant_id]

    def of_user(self, tenant_id: str, user_id: str) -> int:
        return len(self._by_user.get((tenant_id, user_id), ()))

    def user_connections(self, tenant_id: str, user_id: str) -> Collection[Conn]:
        """The open connections of one user (one lookup; do not keep the result)."""
        return self._by_user.get((tenant_id, user_id), ())

    def add(self, conn: Conn) -> None:
        self._by_key[conn.key] = conn
        self._per_tenant[conn.tenant_id] += 1
        self._by_user.setdefault((conn.tenant_id, conn.user_id), set()).add(conn)
        CONNECTIONS.inc()

    def remove(self, conn: Conn) -> bool:
        """Forget ``conn``; False when it was not registered (already removed)."""
        if self._by_key.pop(conn.key, None) is None:
            return False
        user = (conn.tenant_id, conn.user_id)
        self._per_tenant[conn.tenant_id] -= 1
        if self._per_tenant[conn.tenant_id] <= 0:
            del self._per_tenant[conn.tenant_id]
        connections = self._by_user[user]
        connections.discard(conn)
        if not connections:
            del self._by_user[user]
        CONNECTIONS.dec()
        return True
