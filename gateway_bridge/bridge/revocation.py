"""What an open connection may still do: its token's expiry, and its tenant's changes.

A connection keeps what it was given at open only as long as that still holds:

- **Token expiry.** At the expiry of its client token the connection is closed with
  4002 (token expired), unless the client sent a fresh token first (an ``auth`` frame
  on the open connection, :meth:`~gateway_bridge.bridge.admission.Admission.renew`).
  One task sleeps until the next expiry of any connection (a heap, not a timer each).
- **Tenant changes.** The tenant service announces every change on the bus
  (``TENANT_CHANGED_TOPIC``). For each connection of that tenant the bridge reads the
  tenant anew: deleted → closed with 4001; its client secret rotated after the
  connection's token was issued → closed with 4001 (revoked); ``chat:read`` gone → its
  subscriptions end, each with an ``error`` frame naming the channel; ``presence:read``
  gone or granted → it stops or starts getting presence events. Every later frame is
  checked against the tenant's scopes as they are then (``commands.FRAME_SCOPES``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.admission import REVOKED, revoked
from gateway_bridge.bridge.connection import Conn, Connections
from gateway_bridge.bridge.fanout import Fanout
from service_kit.auth import TENANT_CHANGED_TOPIC, Authenticator
from service_kit.bus import EventBus, Subscription
from service_kit.errors import KeelError, NotFound

log = logging.getLogger(__name__)

Close = Callable[[Conn, p.CloseCode, str], None]


class Revocation:
    """Closes or narrows connections whose token expired or whose tenant changed."""

    def __init__(
        self,
        *,
        connections: Connections,
        tenants: Authenticator,
        fanout: Fanout,
        close: Close,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._connections = connections
        self._tenants = tenants
        self._fanout = fanout
        self._close = close
        self._clock = clock
        self._expiries: list[tuple[datetime, int, Conn]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._checks: set[asyncio.Task[None]] = set()

    async def start(self, bus: EventBus) -> None:
        self._subscription = await bus.subscribe(TENANT_CHANGED_TOPIC, self._on_change)
        self._task = asyncio.create_task(self._expire(), name="token-expiry")

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
        for task in [self._task, *self._checks]:
            if task is not None:
                task.cancel()

    # -- token expiry --------------------------------------------------------------------

    def watch(self, conn: Conn) -> None:
        """Close ``conn`` at its token's expiry (call again after a renewal)."""
        heapq.heappush(self._expiries, (conn.expires_at, next(self._order), conn))
        if self._expiries[0][2] is conn:
            self._wake.set()

    async def _expire(self) -> None:
        while True:
            self._wake.clear()
            if not self._expiries:
                await self._wake.wait()
                continue
            wait = (self._expiries[0][0] - self._clock()).total_seconds()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    pass
                continue
            _, _, conn = heapq.heappop(self._expiries)
            # A renewed connection has a later expiry (and another entry in the heap).
            if not conn.closed and conn.expires_at <= self._clock():
                self._close(conn, p.CloseCode.TOKEN_EXPIRED, "client token expired")

    # -- tenant changes ------------------------------------------------------------------

    def _on_change(self, payload: bytes) -> None:
        tenant_id = payload.decode()
        if not self._connections.of_tenant(tenant_id):
            return
        task = asyncio.get_running_loop().create_task(self.recheck(tenant_id))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def recheck(self, tenant_id: str) -> None:
        """Read the tenant anew and apply it to each of its open connections."""
        self._tenants.forget_tenant(tenant_id)  # whichever bus subscriber runs first
        try:
            tenant = await self._tenants.tenant_by_id(tenant_id)
        except NotFound:
            for conn in self._connections.of(tenant_id):
                self._close(conn, p.CloseCode.BAD_TOKEN, "the tenant was deleted")
            return
        except KeelError:
            log.warning("could not re-check a changed tenant", exc_info=True)
            return
        for conn in self._connections.of(tenant_id):
            if revoked(tenant, conn.issued_at):
                self._close(conn, p.CloseCode.BAD_TOKEN, REVOKED[:120])
                continue
            conn.tenant = tenant
            self._fanout.rescope(conn)
