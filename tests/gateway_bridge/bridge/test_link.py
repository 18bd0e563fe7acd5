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


class Recording:
    """A Connect call that notes each request written (``done`` set at the ``count``-th)."""

    def __init__(self, count: int) -> None:
        self.written: list[Any] = []
        self.count = count
        self.done = asyncio.Event()

    async def write(self, request: Any) -> None:
        self.written.append(request)
        if len(self.written) == self.count:
            self.done.set()


async def test_subscriptions_gathered_keep_their_place_among_the_other_commands() -> None:
    """A subscription waits for others to go up with it, but never past an unsubscribe
    (or anything else) queued after it: the gateway sees the commands in their order."""
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never called
    link = GatewayLink(channel, "t", on_response=lambda r: None, resubscriptions=lambda: [])
    link.stream_subscribes = True
    link.subscribe("k1", "t", "c1", since=None)
    link.unsubscribe("k1")
    link.subscribe("k2", "t", "c2", since=None)
    link.subscribe("k3", "t", "c3", since=None)
    link.unsubscribe("k3", ["c3"])
    call = Recording(4)
    writer = asyncio.create_task(link._write(call))
    try:
        async with asyncio.timeout(WAIT):
            await call.done.wait()
    finally:
        writer.cancel()
        await channel.close()
    commands = []
    for request in call.written:
        kind = request.WhichOneof("command")
        if kind == "subscribe":
            commands.append(("subscribe", [request.subscribe.subscription_key]))
        elif kind == "subscribes":
            keys = [s.subscription_key for s in request.subscribes.subscribes]
            commands.append(("subscribe", keys))
        else:
            commands.append((kind, [request.unsubscribe.subscription_key]))
    assert commands == [
        ("subscribe", ["k1"]),
        ("unsubscribe", ["k1"]),
        ("subscribe", ["k2", "k3"]),
        ("unsubscribe", ["k3"]),
    ]
