"""The bridge's browser connections: one :class:`Conn` each, and the registry of them.

A connection is admitted (:mod:`~gateway_bridge.bridge.admission`) with its tenant
and user, and registered under its *key* (``c:<id>``), the key its subscriptions
travel under on the gateway stream. :class:`Connections` also counts them per
tenant and per user, for the limits admission applies.

:meth:`Conn.write` is the fan-out's one write: bytes of ready-made frames straight to
the transport, unless the connection already has more than the send buffer
unsent — then it is a slow consumer, and the caller cuts it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from gateway_bridge.bridge import protocol as p
from service_kit.auth import TenantContext

CONNECTIONS = Gauge("keel_bridge_connections", "Open WebSocket connections.")
DELIVERIES = MetricCounter("keel_bridge_deliveries_total", "Event frames written to sockets.")
CLOSED = MetricCounter("keel_bridge_closed_total", "Connections closed by the bridge.", ["code"])


@dataclass(eq=False, slots=True)
class Conn:
    """One browser connection."""

    id: str
    ws: ServerConnection
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
