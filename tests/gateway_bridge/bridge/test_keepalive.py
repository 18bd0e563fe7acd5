"""The bridge's one keepalive task: pings each connection when due, closes one whose pong
is overdue, leaves alone one that answers — on real WebSocket connections, with the
clock in the test's hands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from gateway_bridge.bridge.connection import CLOSED
from gateway_bridge.bridge.keepalive import Keepalive
from tests.gateway_bridge.bridge.conftest import Dial, Stack, join, running_bridge, until
from tests.gateway_bridge.conftest import Tenant

INTERVAL, TIMEOUT = 20.0, 10.0
#: Bounds for waiting on the real sockets (never asserted on).
WAIT = 5.0


@dataclass(eq=False)
class Peer:
    """A server-side connection as the keepalive sees it, and its client."""

    ws: ServerConnection
    client: ClientConnection
    closed: bool = False
    pinged_at: float = 0.0
    pong: asyncio.Future[float] | None = field(default=None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def peers() -> AsyncIterator[list[Peer]]:
    """Two open connections, each as a server side with its client."""
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        await accepted.put(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        made = []
        for _ in range(2):
            client = await connect(f"ws://127.0.0.1:{port}/", ping_interval=None)
            async with asyncio.timeout(WAIT):
                made.append(Peer(await accepted.get(), client))
        yield made
        for peer in made:
            await peer.client.close()


def keepalive(peers: list[Peer], clock: Clock, timed_out: list[Peer]) -> Keepalive[Peer]:
    return Keepalive(
        peers, interval=INTERVAL, timeout=TIMEOUT, on_timeout=timed_out.append, clock=clock
    )


async def test_a_connection_is_pinged_once_its_interval_has_passed(peers: list[Peer]) -> None:
    clock, timed_out = Clock(), []
    alive = keepalive(peers, clock, timed_out)
    peers[1].pinged_at = 5.0  # admitted later: its ping is due later

    clock.now = INTERVAL - 0.1
    await alive.tick()
    assert [p.pong for p in peers] == [None, None]

    clock.now = INTERVAL
    await alive.tick()
    first = peers[0].pong
    assert first is not None and peers[0].pinged_at == INTERVAL
    assert peers[1].pong is None
    async with asyncio.timeout(WAIT):  # the client answers by itself
        await first

    clock.now = INTERVAL + 5.0
    await alive.tick()
    assert peers[1].pong is not None
    # No second ping yet; the answered pong is let go (an idle connection keeps no future).
    assert peers[0].pinged_at == INTERVAL and peers[0].pong is None


async def test_a_connection_that_answers_is_never_timed_out(peers: list[Peer]) -> None:
    clock, timed_out = Clock(), []
    alive = keepalive(peers, clock, timed_out)
    for round_ in range(1, 4):
        clock.now = round_ * INTERVAL
        await alive.tick()
        pongs = [p.pong for p in peers]
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(pong for pong in pongs if pong is not None))
        clock.now = round_ * INTERVAL + TIMEOUT
        await alive.tick()
    assert timed_out == []
    assert all(p.pinged_at == 3 * INTERVAL for p in peers)


async def test_a_connection_whose_pong_is_overdue_is_timed_out_once(peers: list[Peer]) -> None:
    clock, timed_out = Clock(), []
    alive = keepalive(peers, clock, timed_out)
    silent = peers[0]
    silent.client.transport.pause_reading()  # it never sees the ping, so never answers

    clock.now = INTERVAL
    await alive.tick()
    async with asyncio.timeout(WAIT):
        await peers[1].pong  # type: ignore[misc]

    clock.now = INTERVAL + TIMEOUT - 0.1
    await alive.tick()
    assert timed_out == []

    clock.now = INTERVAL + TIMEOUT
    await alive.tick()
    assert timed_out == [silent]
    clock.now = INTERVAL + TIMEOUT + 1.0
    await alive.tick()
    assert timed_out == [silent]  # told once; closing it is the caller's job
    silent.client.transport.resume_reading()


async def test_closed_connections_are_skipped(peers: list[Peer]) -> None:
    clock, timed_out = Clock(), []
    alive = keepalive(peers, clock, timed_out)
    peers[0].closed = True
    clock.now = INTERVAL
    await alive.tick()
    assert peers[0].pong is None and peers[1].pong is not None


async def test_a_bridge_cuts_a_connection_that_stops_answering_pings_with_1011(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    before = CLOSED.labels("1011")._value.get()
    async with running_bridge(stack, ping_interval=1.0, ping_timeout=1.0) as bridge:
        answering = await join(dial, bridge, tenant, "answers")
        silent = await join(dial, bridge, tenant, "silent")
        silent.ws.transport.pause_reading()  # a frozen tab: the ping is never read

        await until(lambda: not bridge.user_connections(tenant.id, "silent"), within=10)

        assert CLOSED.labels("1011")._value.get() == before + 1
        # The other one answered every ping meanwhile and is still served.
        assert (await answering.call("ping"))["type"] == "pong"
        assert bridge.user_connections(tenant.id, "answers")
