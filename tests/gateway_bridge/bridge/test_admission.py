"""Admission at the seam where a browser can vanish: after the connection is counted and
indexed, while its welcome frame is written. A browser that leaves there must not stay
counted against its user's and tenant's connection limits, nor indexed for live
notifications. (A real socket cannot be made to close at exactly that write, so the
socket here is one whose send fails as a closed connection's does.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.frames import Close

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.admission import Admission
from gateway_bridge.bridge.connection import Connections
from service_kit.auth import TenantContext
from service_kit.client_tokens import ClientClaims
from service_kit.config import BridgeSettings


class Tokens:
    def verify(self, token: str) -> ClientClaims:
        now = datetime.now(UTC)
        return ClientClaims("t1", "alice", now + timedelta(hours=1), now)


class Tenants:
    async def tenant_by_id(self, tenant_id: str) -> TenantContext:
        return TenantContext(tenant_id, "t", frozenset({"chat:*", "send:basic"}))


class GoneDuringWelcome:
    """A socket whose browser left before the welcome could be written."""

    request = SimpleNamespace(path="/ws?token=x", headers=Headers())

    async def send_text(self, frame: Any) -> None:
        raise ConnectionClosedOK(Close(1001, "gone"), Close(1001, "gone"), True)

    async def close(self, *args: Any) -> None:
        pass


class Open(GoneDuringWelcome):
    sent: list[Any]

    async def send_text(self, frame: Any) -> None:
        self.sent = [*getattr(self, "sent", []), frame]


async def test_a_browser_gone_during_the_welcome_is_not_left_counted_or_indexed() -> None:
    connections = Connections()
    admission = Admission(
        settings=BridgeSettings(max_connections_per_user=2),
        tokens=Tokens(),  # type: ignore[arg-type]
        tenants=Tenants(),  # type: ignore[arg-type]
        connections=connections,
        limits=p.SessionLimits(),
        files_url=lambda: "http://files.example",
    )
    for _ in range(3):  # more than the user's limit of 2
        with pytest.raises(ConnectionClosed):
            await admission.admit(GoneDuringWelcome())  # type: ignore[arg-type]
    assert connections.of_user("t1", "alice") == 0
    assert connections.of_tenant("t1") == 0
    assert list(connections.user_connections("t1", "alice")) == []
    # The user can still connect up to the limit.
    admitted = [await admission.admit(Open()) for _ in range(2)]  # type: ignore[arg-type]
    assert all(conn is not None for conn in admitted)
    assert connections.of_user("t1", "alice") == 2
