"""An admitted connection's frames reach the bridge without a reader task of its own
(:class:`~gateway_bridge.bridge.connection.BrowserSocket`): in order, one at a time,
reading paused while too many wait, failures closed with websockets' codes, and an idle
connection keeping nothing of its handshake and no task."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.typing import Data

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.connection import MAX_WAITING, Conn
from gateway_bridge.bridge.http import HttpRequest
from tests.gateway_bridge.bridge.conftest import (
    Client,
    Dial,
    Stack,
    join,
    running_bridge,
    token_for,
    until,
)
from tests.gateway_bridge.conftest import Tenant

OnFrame = Callable[[Conn, Data], Awaitable[None]]


def only_connection(bridge: Bridge, client: Client) -> Conn:
    conn = bridge.connection(client.welcome["connection_id"])
    assert conn is not None
    return conn


@asynccontextmanager
async def gate(bridge: Bridge) -> AsyncIterator[tuple[asyncio.Event, asyncio.Event]]:
    """Hold the bridge's first frame from now on until ``release`` is set (at the latest
    on exit, so that a failed test does not leave the bridge's stop waiting for it);
    ``held`` is set once it is held."""
    held, release = asyncio.Event(), asyncio.Event()
    run: OnFrame = bridge._on_frame

    async def gated(conn: Conn, text: Data) -> None:
        if not held.is_set():
            held.set()
            await release.wait()
        await run(conn, text)

    bridge._on_frame = gated  # type: ignore[method-assign]
    try:
        yield held, release
    finally:
        release.set()


async def test_frames_that_come_while_one_runs_run_after_it_in_their_order(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    async with running_bridge(stack, burst=1000) as bridge:
        client = await join(dial, bridge, tenant, "alice")
        conn = only_connection(bridge, client)
        async with gate(bridge) as (held, release):
            await client.send({"type": "ping", "id": "p0"})
            await held.wait()
            for i in range(1, 6):
                await client.send({"type": "ping", "id": f"p{i}"})
            await until(lambda: conn.waiting is not None and len(conn.waiting) == 5)
            assert client.inbox == [] and not conn.reading_paused
            release.set()
            pongs = [await client.expect(lambda f: f.get("type") == "pong") for _ in range(6)]
        assert [p["id"] for p in pongs] == [f"p{i}" for i in range(6)]
        await until(lambda: conn.waiting is None)


async def test_past_max_waiting_frames_the_socket_is_not_read_until_they_drain(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    async with running_bridge(stack, burst=1000) as bridge:
        client = await join(dial, bridge, tenant, "alice")
        conn = only_connection(bridge, client)
        count = 3 * MAX_WAITING
        async with gate(bridge) as (held, release):
            for i in range(count):
                await client.send({"type": "ping", "id": f"p{i}"})
            await held.wait()
            await until(lambda: conn.reading_paused)
            assert conn.waiting is not None and len(conn.waiting) > MAX_WAITING
            assert not conn.ws.transport.is_reading()
            release.set()
            pongs = [await client.expect(lambda f: f.get("type") == "pong") for _ in range(count)]
        assert [p["id"] for p in pongs] == [f"p{i}" for i in range(count)]
        await until(lambda: conn.waiting is None)
        assert not conn.reading_paused and conn.ws.transport.is_reading()


async def test_frames_sent_before_the_welcome_run_after_it(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    client = await dial(bridge)
    token = await token_for(tenant, "alice")
    await client.send({"type": "auth", "token": token})
    await client.send({"type": "ping", "id": "a"})
    await client.send({"type": "ping", "id": "b"})
    frames = [json.loads(await client.ws.recv()) for _ in range(3)]
    assert [(f["type"], f.get("id")) for f in frames] == [
        ("welcome", None),
        ("pong", "a"),
        ("pong", "b"),
    ]


async def test_a_fragmented_message_is_run_whole(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    client = await join(dial, bridge, tenant, "alice")
    await client.ws.send(['{"type": ', '"ping", "id": ', '"frag"}'])
    assert (await client.expect(lambda f: f.get("id") == "frag"))["type"] == "pong"


async def test_a_text_message_that_is_not_utf8_is_closed_with_1007(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    client = await join(dial, bridge, tenant, "alice")
    conn = only_connection(bridge, client)
    await client.ws.send(b'{"type": "ping", "id": "\xff"}', text=True)
    code, _ = await client.closed()
    assert code == 1007
    await until(lambda: bridge.connection(conn.id) is None)


async def test_too_many_fragments_are_closed_with_1009(
    bridge: Bridge, tenant: Tenant, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway_bridge.bridge.connection.MAX_FRAGMENTS", 4)
    client = await join(dial, bridge, tenant, "alice")
    await client.ws.send(["{", '"type"', ":", '"ping"', "}"])
    code, reason = await client.closed()
    assert (code, reason) == (1009, "too many fragments")


async def test_a_frame_that_fails_closes_its_connection_with_1011(
    bridge: Bridge, tenant: Tenant, dial: Dial, caplog: pytest.LogCaptureFixture
) -> None:
    client = await join(dial, bridge, tenant, "alice")
    conn = only_connection(bridge, client)

    async def broken(conn: Conn, text: Data) -> None:
        raise RuntimeError("a bug")

    bridge._on_frame = broken  # type: ignore[method-assign]
    await client.send({"type": "ping", "id": "p"})
    code, _ = await client.closed()
    assert code == 1011
    assert bridge.connection(conn.id) is None
    assert "connection handler failed" in caplog.text


async def test_an_idle_connection_keeps_no_frame_task_and_nothing_of_its_handshake(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    token = await token_for(tenant, "alice")
    client = await dial(bridge, token)
    client.welcome = await client.expect(lambda f: f["type"] == "welcome")
    await client.ok("subscribe", channel_id=await tenant.public())
    conn = only_connection(bridge, client)
    await until(lambda: conn.waiting is None and not bridge._running)
    gc.collect()
    kept = [o for o in gc.get_objects() if isinstance(o, HttpRequest) and token in o.path]
    assert kept == []
    assert conn.ws.request is not None and conn.ws.request.path == "/"


@pytest.mark.parametrize("sent", [b"", b"GET /ws HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "part"])
async def test_a_socket_closed_before_its_whole_request_leaves_no_handshake_waiting(
    stack: Stack, tenant: Tenant, dial: Dial, sent: bytes
) -> None:
    """The handshake waits for the request on one future, which the socket's loss
    resolves too (http.BridgeConnection): its handler ends then, not at the handshake
    timeout (longer here than the test waits)."""
    async with running_bridge(stack, handshake_timeout=3600.0) as bridge:
        server = bridge._server
        assert server is not None
        _, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        writer.write(sent)
        await until(lambda: len(server.handler_tasks) == 1)
        writer.close()
        await writer.wait_closed()
        await until(lambda: not server.handler_tasks)
        await join(dial, bridge, tenant, "alice")
