"""The bridge's gateway link says it is up (``/healthz`` 200) only once a gateway accepted
its Connect stream — never while what answers on the gateway's address refuses it (a
process that is not a gateway yet, or refuses the peer token). It used to be "up" for a
moment on every attempt, and a check that caught such a moment (the README's cluster
check, under load) then found the bridge without its gateway."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from gateway_bridge.bridge.link import GatewayLink

WAIT = 10.0


class CountingEvent(asyncio.Event):
    """An event that counts how often it was set."""

    sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


class Refusing(grpc.GenericRpcHandler):
    """Every call is refused (UNIMPLEMENTED); counts the attempts."""

    def __init__(self) -> None:
        self.calls = 0
        self.third = asyncio.Event()

    def service(self, handler_call_details: Any) -> None:
        self.calls += 1
        if self.calls >= 3:
            self.third.set()
        return None


async def test_a_refused_stream_never_counts_as_connected() -> None:
    refusing = Refusing()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((refusing,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    link = GatewayLink(
        channel, "peer-token-0123456789", on_response=lambda _: None, resubscriptions=lambda: []
    )
    link.connected = CountingEvent()
    link.start()
    try:
        async with asyncio.timeout(WAIT):
            await refusing.third.wait()  # three attempts, each refused
    finally:
        await link.close()
        await channel.close()
        await server.stop(0)
    assert isinstance(link.connected, CountingEvent)
    assert link.connected.sets == 0
