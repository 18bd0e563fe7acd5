"""The bridge test harness: a tenant service and gateway on port 0 (as ``keel serve all``
wires them; with the notification service too, for the notification frames), bridges
started per test with the limits it is about, and clients that speak ``keel.v1`` —
websockets clients, or a bare socket driven by websockets' sans-I/O client protocol for a
consumer that stops reading."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
from keel.channels.v1 import channels_pb2
from keel.tenants.v1 import tenants_pb2
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.server import start_bridge as start_bridge_process
from gateway_bridge.gateway import server as gateway_server
from notification_service import server as notification_server
from service_kit.auth import Authenticator
from service_kit.config import Address, BridgeSettings
from service_kit.server import KeelServer, Runtime, open_runtime
from tenant_service import server as tenant_server
from tests.conftest import settings_for, unique
from tests.gateway_bridge.conftest import ADMIN, Keel, Tenant, running_keel

#: The longest a test waits for one frame, close or condition.
WAIT = 10.0
Json = dict[str, Any]


# -- the stack: tenant service + gateway on port 0, a bridge per test -----------------------


@dataclass
class Stack:
    keel: Keel

    @property
    def runtime(self) -> Runtime:
        return self.keel.runtime

    async def tenant(
        self,
        *permissions: str,
        allowed_origins: tuple[str, ...] = (),
        require_origin: bool = False,
    ) -> Tenant:
        created = await self.keel.tenants.CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(
                    name=unique("ws"),
                    permissions=list(permissions or ["chat:*"]),
                    allowed_origins=list(allowed_origins),
                    require_origin=require_origin,
                )
            ),
            metadata=ADMIN,
        )
        return Tenant(
            created.tenant.id, created.tenant.client_id, created.client_secret, self.keel.chat
        )


@pytest.fixture(scope="module")
async def stack(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The tenant and gateway services in one server, wired as ``keel serve all`` wires them."""
    async with running_keel(sqlite_url, tmp_path_factory.mktemp("bridge")) as keel:
        yield Stack(keel)


async def start_bridge(
    stack: Stack, *, notification_addr: str | None = None, **limits: Any
) -> Bridge:
    """A bridge on port 0 with ``limits`` (BridgeSettings fields), its gateway link up;
    calling the notification service at ``notification_addr``, if any."""
    settings = replace(
        stack.runtime.settings,
        ws_addr=Address("127.0.0.1", 0),
        bridge=BridgeSettings(**limits),
    )
    keel = stack.keel
    bridge = await start_bridge_process(
        settings,
        keel.runtime.bus,
        keel.runtime.redis,
        keel.authenticator,
        keel.address,
        notification_addr=notification_addr,
    )
    async with asyncio.timeout(WAIT):
        await bridge.link.connected.wait()
    return bridge


@asynccontextmanager
async def running_bridge(
    stack: Stack, *, notification_addr: str | None = None, **limits: Any
) -> AsyncIterator[Bridge]:
    bridge = await start_bridge(stack, notification_addr=notification_addr, **limits)
    try:
        yield bridge
    finally:
        await bridge.stop()


# -- the stack with the notification service -----------------------------------------------


@asynccontextmanager
async def running_keel_with_notifications(database_url: str, tmp_path: Any) -> AsyncIterator[Keel]:
    """Tenant service, gateway and notification service in one server on port 0, wired
    as ``keel serve all`` wires them (the notification service checks recipients with
    the server's own gateway); no SMTP, so only in-app notifications are delivered."""
    runtime = await open_runtime(settings_for(database_url, tmp_path))
    port: list[int] = []
    try:
        tenants = tenant_server.build(runtime)
        authenticator = Authenticator(tenants.directory, lookup=tenants.directory)
        await authenticator.follow_changes(runtime.bus)
        notifications = notification_server.build(
            runtime, gateway_addr=lambda: f"127.0.0.1:{port[0]}"
        )
        server = KeelServer(
            runtime,
            [
                tenants.spec,
                *gateway_server.build(runtime, authenticator=authenticator),
                notifications.spec,
            ],
            authenticator=authenticator,
        )
        await server.start()
        port.append(server.port)
        address = f"127.0.0.1:{server.port}"
        client = grpc.aio.insecure_channel(address)
        try:
            yield Keel(client, runtime.settings, runtime, authenticator, address)
        finally:
            await client.close()
            await server.stop(1)
            await authenticator.close()
    finally:
        await runtime.close()


@pytest.fixture(scope="module")
async def notifying_stack(
    sqlite_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """:func:`stack` with the notification service in the same server."""
    async with running_keel_with_notifications(
        sqlite_url, tmp_path_factory.mktemp("notifying")
    ) as keel:
        yield Stack(keel)


@pytest.fixture
async def notifying_bridge(notifying_stack: Stack) -> AsyncIterator[Bridge]:
    """A bridge of :func:`notifying_stack` that calls its notification service."""
    address = notifying_stack.keel.address
    async with running_bridge(notifying_stack, notification_addr=address) as running:
        yield running


@pytest.fixture
async def bridge(stack: Stack) -> AsyncIterator[Bridge]:
    async with running_bridge(stack) as running:
        yield running


@pytest.fixture
async def tenant(stack: Stack) -> Tenant:
    return await stack.tenant()


async def token_for(tenant: Tenant, user_id: str) -> str:
    """A client token, minted the way a tenant's backend mints one."""
    response = await tenant.stub.IssueClientToken(
        channels_pb2.IssueClientTokenRequest(user_id=user_id), metadata=tenant.md
    )
    return str(response.token)


# -- clients -------------------------------------------------------------------------------


class Client:
    """A keel.v1 client: frames it did not wait for yet stay in ``inbox``; ``log`` has all."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[Json] = []
        self.log: list[Json] = []
        self.welcome: Json = {}
        self._ids = itertools.count(1)

    async def send(self, frame: Json | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def expect(self, wanted: Callable[[Json], bool], within: float = WAIT) -> Json:
        """The first frame (already received or yet to come) that is ``wanted``."""
        for i, frame in enumerate(self.inbox):
            if wanted(frame):
                return self.inbox.pop(i)
        try:
            async with asyncio.timeout(within):
                while True:
                    frame = json.loads(await self.ws.recv())
                    self.log.append(frame)
                    if wanted(frame):
                        return frame
                    self.inbox.append(frame)
        except TimeoutError:
            pytest.fail(f"no wanted frame within {within}s; got {self.inbox[-5:]}")

    async def call(self, kind: str, **fields: Any) -> Json:
        """Send a frame with a fresh id; return the reply carrying that id."""
        frame_id = f"{kind}-{next(self._ids)}"
        await self.send({"type": kind, "id": frame_id, **fields})
        return await self.expect(lambda f: f.get("id") == frame_id)

    async def ok(self, kind: str, **fields: Any) -> Json:
        reply = await self.call(kind, **fields)
        assert reply["type"] != "error", reply
        return reply

    async def error(self, kind: str, **fields: Any) -> Json:
        reply = await self.call(kind, **fields)
        assert reply["type"] == "error", reply
        return reply

    async def event(self, name: str, channel_id: str | None = None) -> Json:
        return await self.expect(
            lambda f: (
                f["type"] == "event"
                and f["event"] == name
                and channel_id in (None, f["channel_id"])
            )
        )

    async def created_seqs(self, channel_id: str, until: int) -> list[int]:
        """The seqs of message:created events for the channel, up to seq ``until``."""
        seqs: list[int] = []
        while not seqs or seqs[-1] < until:
            frame = await self.event("message:created", channel_id)
            seqs.append(frame["seq"])
        return seqs

    async def flush(self) -> list[Json]:
        """Every frame the bridge wrote before answering a ping (which it answers in order)."""
        before = len(self.log)
        pong = await self.call("ping")
        assert pong["type"] == "pong"
        return self.log[before:-1]

    async def closed(self) -> tuple[int, str]:
        """Read until the bridge closes the connection; the code and reason it sent."""
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    frame = json.loads(await self.ws.recv())
                    self.log.append(frame)
                    self.inbox.append(frame)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, f"closed without a close frame: {exc}"
            return exc.rcvd.code, exc.rcvd.reason


Dial = Callable[..., Any]


async def until(condition: Callable[[], bool], within: float = WAIT) -> None:
    """Wait for ``condition`` to hold (polled: it is the bridge's state, not an event)."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the condition did not hold within {within}s")


@pytest.fixture
async def dial() -> AsyncIterator[Dial]:
    """Open clients to a bridge (``await dial(bridge, token=..., origin=...)``); all are
    closed after the test."""
    opened: list[Client] = []

    async def open_client(
        bridge: Bridge, token: str | None = None, *, origin: str | None = None, **options: Any
    ) -> Client:
        url = f"ws://127.0.0.1:{bridge.port}/ws" + (f"?token={token}" if token else "")
        options.setdefault("subprotocols", [Subprotocol("keel.v1")])
        ws = await connect(
            url,
            origin=origin,  # type: ignore[arg-type]
            proxy=None,
            open_timeout=WAIT,
            close_timeout=2,
            **options,
        )
        client = Client(ws)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.ws.close()


async def join(dial: Dial, bridge: Bridge, tenant: Tenant, user_id: str, **options: Any) -> Client:
    """A client of ``user_id`` (token in the query), past its welcome frame."""
    client = await dial(bridge, await token_for(tenant, user_id), **options)
    client.welcome = await client.expect(lambda f: True)
    assert client.welcome["type"] == "welcome", client.welcome
    return client


class SlowClient:
    """A WebSocket client on a bare socket with a small receive buffer, which reads only
    when asked: it can stop reading altogether, as a stalled browser tab does."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, port: int, token: str, *, receive_buffer: int = 4096) -> SlowClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        protocol = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}/ws?token={token}"),
            subprotocols=[Subprotocol("keel.v1")],
            max_size=None,
        )
        client = cls(sock, protocol)
        try:
            await client.loop.sock_connect(sock, ("127.0.0.1", port))
            protocol.send_request(protocol.connect())
            await client._flush()
        except BaseException:
            sock.close()
            raise
        return client

    async def _flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            await self.loop.sock_sendall(self.sock, data)

    async def send(self, frame: Json) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        await self._flush()

    async def read(self) -> list[Json | Close]:
        """The next frames to arrive (JSON text, or the close frame); answers a close."""
        while True:
            async with asyncio.timeout(WAIT):
                data = await self.loop.sock_recv(self.sock, 65536)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            found: list[Json | Close] = []
            for event in self.protocol.events_received():
                if isinstance(event, Response):
                    assert event.status_code == 101, event
                elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    found.append(json.loads(event.data))
                elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    found.append(Close.parse(event.data))
            await self._flush()  # e.g. the reply to a close frame
            if found:
                return found
            if not data:
                raise ConnectionError("the bridge ended the connection without a close frame")

    def close(self) -> None:
        self.sock.close()


# -- plain HTTP on the bridge's port -----------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


async def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
) -> HttpAnswer:
    """One HTTP/1.1 request to the bridge's port, as a browser or mail client sends it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            found = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines if line)
            }
            content = await reader.readexactly(int(found.get("content-length", "0")))
        return HttpAnswer(int(status_line.split(" ")[1]), found, content)
    finally:
        writer.close()
        await writer.wait_closed()
