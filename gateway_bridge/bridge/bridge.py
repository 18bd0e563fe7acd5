"""The WebSocket bridge: browsers on one side, the gateway's Connect stream on the other.

This module is the I/O adapter around :mod:`gateway_bridge.bridge.protocol`. It
accepts connections (websockets), authenticates them with client tokens,
checks the tenant's allowed origins, turns client frames into gateway calls,
and fans events out. Fan-out is the hot path: each event becomes one frame's
bytes once, and those bytes are written straight to every live subscriber's
transport; a subscriber whose unsent bytes exceed the send buffer is closed
as a slow consumer instead of slowing the others or growing memory.

Each channel with local subscribers is a :class:`Room`. Message events carry
the channel's seq; the room drops repeats (the event log publishes at least
once) and, when it sees a jump, asks the gateway to replay the gap before
releasing what came after it, so a subscriber never silently misses a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

import grpc
from keel.channels.v1 import channels_pb2
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.link import GatewayLink
from gateway_bridge.bridge.presence import Presence, Presence3
from gateway_bridge.tokens import ClientTokens, InvalidClientToken
from service_kit.auth import Authenticator, TenantContext
from service_kit.bus import EventBus, Subscription
from service_kit.config import BridgeSettings
from service_kit.errors import KeelError
from service_kit.validation import is_uuid

log = logging.getLogger(__name__)

STATIC: Final = Path(__file__).with_name("static")
EPHEMERAL_TOPIC: Final = "bridge.ephemeral"
_ENDS_SUBSCRIPTIONS: Final = frozenset({"user:left", "channel:deleted"})
_CLOSE_TIMEOUT: Final = 2.0
#: Events arriving this close together are written to each subscriber in one write.
_COALESCE_SECONDS: Final = 0.001

CONNECTIONS = Gauge("keel_bridge_connections", "Open WebSocket connections.")
DELIVERIES = MetricCounter("keel_bridge_deliveries_total", "Event frames written to sockets.")
CLOSED = MetricCounter("keel_bridge_closed_total", "Connections closed by the bridge.", ["code"])

_GRPC_TO_ERROR = {
    grpc.StatusCode.INVALID_ARGUMENT: p.ErrorCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: p.ErrorCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: p.ErrorCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION: p.ErrorCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE: p.ErrorCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: p.ErrorCode.RATE_LIMITED,
    grpc.StatusCode.UNAVAILABLE: p.ErrorCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: p.ErrorCode.UNAVAILABLE,
}


def _error_code(code: int | grpc.StatusCode) -> p.ErrorCode:
    if isinstance(code, int):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return _GRPC_TO_ERROR.get(code, p.ErrorCode.INTERNAL)


@dataclass(eq=False)
class Conn:
    """One browser connection."""

    id: str
    ws: ServerConnection
    tenant: TenantContext
    user_id: str
    session: p.Session
    closed: bool = False

    @property
    def key(self) -> str:
        return "c:" + self.id


@dataclass(eq=False)
class Room:
    """A channel with local subscribers: who is live, who is still replaying, how far it got."""

    tenant_id: str
    channel_id: str
    live: set[Conn] = field(default_factory=set)
    #: The live connections whose tenant may read presence (fixed per connection), so a
    #: presence event costs nothing in a room where nobody may see it.
    watchers: set[Conn] = field(default_factory=set)
    joining: set[Conn] = field(default_factory=set)
    pending: list[bytes] = field(default_factory=list)  # frames not yet written to `live`
    dirty: bool = False
    last_seq: int = 0
    known: bool = False
    filling: bool = False
    held: list[channels_pb2.ChannelEvent] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"ch:{self.tenant_id}:{self.channel_id}"

    @property
    def empty(self) -> bool:
        return not self.live and not self.joining


class Bridge:
    """Serves ``/ws`` (protocol keel.v1), ``/keel.js``, ``/demo`` and ``/healthz``."""

    def __init__(
        self,
        *,
        settings: BridgeSettings,
        tokens: ClientTokens,
        tenants: Authenticator,
        gateway: grpc.aio.Channel,
        peer_token: str,
        bus: EventBus,
        presence: Presence,
        presence_ttl: float = 30.0,
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._tenants = tenants
        self._bus = bus
        self._presence = presence
        self._presence_ttl = presence_ttl
        self._limits = p.SessionLimits(
            max_subscriptions=settings.max_subscriptions,
            messages_per_second=settings.messages_per_second,
            burst=settings.burst,
        )
        self.link = GatewayLink(
            gateway,
            peer_token,
            on_response=self._on_gateway,
            resubscriptions=self._resubscriptions,
        )
        self._gateway = gateway
        self._conns: dict[str, Conn] = {}
        self._admitting: set[ServerConnection] = set()
        self._dirty: list[Room] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._rooms: dict[tuple[str, str], Room] = {}
        self._per_tenant: Counter[str] = Counter()
        self._per_user: Counter[tuple[str, str]] = Counter()
        self._present: Counter[Presence3] = Counter()
        self._presence_changes: asyncio.Queue[tuple[str, Presence3]] = asyncio.Queue()
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ephemeral: Subscription | None = None
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` and open the gateway link."""
        self.link.start()
        self._ephemeral = await self._bus.subscribe(EPHEMERAL_TOPIC, self._on_ephemeral)
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="presence-heartbeat"))
        self._tasks.append(asyncio.create_task(self._announce_presence(), name="presence"))
        self._server = await serve(
            self._handle,
            host,
            port,
            subprotocols=[p.PROTOCOL],  # type: ignore[list-item]
            process_request=self._http,
            compression="deflate" if self._settings.compression else None,
            max_size=self._settings.max_frame_bytes,
            open_timeout=self._settings.handshake_timeout,
            ping_interval=self._settings.ping_interval,
            ping_timeout=self._settings.ping_timeout,
            close_timeout=_CLOSE_TIMEOUT,
            write_limit=self._settings.send_buffer_bytes,
        )
        self.port = self._server.sockets[0].getsockname()[1] if port == 0 else port
        log.info("bridge listening", extra={"ws_addr": f"{host}:{self.port}"})

    async def stop(self) -> None:
        """Stop accepting; close every connection with SERVER_RESTART; close the link."""
        if self._server is not None:
            self._server.close(close_connections=False)
            closing = [
                self._close(conn, p.CloseCode.SERVER_RESTART, "server restart")
                for conn in list(self._conns.values())
            ]
            # Connections still authenticating are told to go elsewhere too.
            closing += [
                ws.close(int(p.CloseCode.SERVER_RESTART), "server restart")
                for ws in list(self._admitting)
            ]
            await asyncio.gather(*closing, return_exceptions=True)
            await self._server.wait_closed()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for task in self._tasks:
            task.cancel()
        if self._ephemeral is not None:
            await self._ephemeral.close()
        await self.link.close()
        await self._gateway.close()

    # -- HTTP: static files and health -------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/ws":
            if "upgrade" not in request.headers.get("Connection", "").lower():
                return connection.respond(
                    HTTPStatus.UPGRADE_REQUIRED, "this endpoint speaks WebSocket (keel.v1)\n"
                )
            return None
        if path == "/healthz":
            up = self.link.connected.is_set()
            return connection.respond(
                HTTPStatus.OK if up else HTTPStatus.SERVICE_UNAVAILABLE,
                "ok\n" if up else "gateway unreachable\n",
            )
        files = {
            "/keel.js": ("keel.js", "application/javascript; charset=utf-8"),
            "/demo": ("demo.html", "text/html; charset=utf-8"),
            "/demo/": ("demo.html", "text/html; charset=utf-8"),
        }
        if path in files:
            name, content_type = files[path]
            body = (STATIC / name).read_bytes()
            headers = Headers(
                [
                    ("Content-Type", content_type),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-cache"),
                ]
            )
            return Response(200, "OK", headers, body)
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")

    # -- one connection -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        conn: Conn | None = None
        self._admitting.add(ws)
        try:
            try:
                conn = await self._admit(ws)
            finally:
                self._admitting.discard(ws)
            if conn is None:
                return
            async for message in ws:
                if conn.closed:
                    break
                await self._on_frame(conn, message)
        except ConnectionClosed:
            pass
        finally:
            if conn is not None:
                await self._drop(conn)

    async def _admit(self, ws: ServerConnection) -> Conn | None:
        """Authenticate and register a new connection, or close it with the right code."""
        assert ws.request is not None
        token = _query_token(ws.request.path)
        if token is None:
            token = await self._token_frame(ws)
            if token is None:
                return None
        try:
            claims = self._tokens.verify(token)
        except InvalidClientToken as exc:
            expired = exc.message == "client token expired"
            code = p.CloseCode.TOKEN_EXPIRED if expired else p.CloseCode.BAD_TOKEN
            await self._refuse(ws, code, exc.message)
            return None
        try:
            tenant = await self._tenants.tenant_by_id(claims.tenant_id)
        except KeelError as exc:
            await self._refuse(ws, p.CloseCode.BAD_TOKEN, f"tenant unavailable: {exc.message}")
            return None
        origin = ws.request.headers.get("Origin")
        if not _origin_allowed(origin, tenant, ws.request.headers.get("Host")):
            await self._refuse(ws, p.CloseCode.ORIGIN_REFUSED, f"origin {origin!r} is not allowed")
            return None
        user = (tenant.tenant_id, claims.user_id)
        if self._per_tenant[tenant.tenant_id] >= self._settings.max_connections_per_tenant:
            await self._refuse(ws, p.CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
            return None
        if self._per_user[user] >= self._settings.max_connections_per_user:
            await self._refuse(
                ws, p.CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this user"
            )
            return None
        conn = Conn(uuid.uuid4().hex, ws, tenant, claims.user_id, p.Session(self._limits))
        self._conns[conn.key] = conn
        self._per_tenant[tenant.tenant_id] += 1
        self._per_user[user] += 1
        CONNECTIONS.inc()
        await ws.send(p.welcome_frame(conn.id, conn.user_id, tenant.tenant_id))
        return conn

    async def _token_frame(self, ws: ServerConnection) -> str | None:
        """Without ``?token=``, the first frame must be ``{"type": "auth", "token": ...}``."""
        try:
            async with asyncio.timeout(self._settings.handshake_timeout):
                first = await ws.recv()
        except TimeoutError:
            await self._refuse(ws, p.CloseCode.AUTH_TIMEOUT, "no token within the handshake time")
            return None
        try:
            command = p.parse_frame(first)
        except p.FrameError as exc:
            await self._refuse(ws, p.CloseCode.BAD_TOKEN, exc.message)
            return None
        if command.type != "auth":
            await self._refuse(ws, p.CloseCode.BAD_TOKEN, "the first frame must be auth")
            return None
        return str(command.fields["token"])

    async def _refuse(self, ws: ServerConnection, code: p.CloseCode, reason: str) -> None:
        CLOSED.labels(str(int(code))).inc()
        await ws.close(int(code), reason[:120])

    async def _close(self, conn: Conn, code: p.CloseCode, reason: str) -> None:
        if not conn.closed:
            conn.closed = True
            self._leave_all(conn)
            CLOSED.labels(str(int(code))).inc()
        await conn.ws.close(int(code), reason)

    def _cut(self, conn: Conn, code: p.CloseCode, reason: str) -> None:
        """Close from the hot path: stop writing to it now, finish the close in a task.

        A slow consumer may never read the close frame (its buffer is full), so the
        socket is dropped if the close has not completed within the close timeout."""
        if conn.closed:
            return

        async def close() -> None:
            try:
                await asyncio.wait_for(self._close(conn, code, reason), _CLOSE_TIMEOUT)
            except TimeoutError:
                conn.ws.transport.abort()

        asyncio.get_running_loop().create_task(close())

    async def _drop(self, conn: Conn) -> None:
        if self._conns.pop(conn.key, None) is None:
            return
        conn.closed = True
        self._leave_all(conn)
        tenant_id, user = conn.tenant.tenant_id, (conn.tenant.tenant_id, conn.user_id)
        self._per_tenant[tenant_id] -= 1
        self._per_user[user] -= 1
        if self._per_tenant[tenant_id] <= 0:
            del self._per_tenant[tenant_id]
        if self._per_user[user] <= 0:
            del self._per_user[user]
        CONNECTIONS.dec()
        self.link.send(
            channels_pb2.ConnectRequest(
                unsubscribe=channels_pb2.ConnectUnsubscribe(subscription_key=conn.key)
            )
        )

    def _leave_all(self, conn: Conn) -> None:
        for channel_id in list(conn.session.subscriptions):
            self._leave_room(conn, channel_id)
            conn.session.stop(channel_id)

    # -- client frames ------------------------------------------------------------------

    async def _on_frame(self, conn: Conn, text: str | bytes) -> None:
        refused: p.FrameError | None = None
        try:
            command = p.parse_frame(text)
        except p.FrameError as exc:
            refused = exc
        if not conn.session.admit():  # every frame counts, well-formed or not
            if conn.session.flooding:
                await self._close(conn, p.CloseCode.RATE_LIMITED, "rate limited")
                return
            frame_id = refused.frame_id if refused is not None else command.id
            await self._reply(conn, p.error_frame(p.ErrorCode.RATE_LIMITED, "slow down", frame_id))
            return
        if refused is not None:
            await self._reply(conn, p.error_frame(refused.code, refused.message, refused.frame_id))
            return
        try:
            if command.channel_id and not is_uuid(command.channel_id):
                raise p.FrameError(
                    p.ErrorCode.INVALID_ARGUMENT,
                    f"channel_id {command.channel_id[:40]!r} is not a valid id",
                    command.id,
                )
            handler = getattr(self, "_do_" + command.type)
            await handler(conn, command)
        except p.FrameError as exc:
            await self._reply(conn, p.error_frame(exc.code, exc.message, exc.frame_id))
        except grpc.aio.AioRpcError as exc:
            await self._reply(
                conn,
                p.error_frame(
                    _error_code(exc.code()), exc.details() or exc.code().name, command.id
                ),
            )

    async def _reply(self, conn: Conn, frame: str) -> None:
        if not conn.closed:
            try:
                await conn.ws.send(frame)
            except ConnectionClosed:
                pass

    async def _do_auth(self, conn: Conn, command: p.Command) -> None:
        raise p.FrameError(p.ErrorCode.BAD_FRAME, "already authenticated", command.id)

    async def _do_ping(self, conn: Conn, command: p.Command) -> None:
        await self._reply(conn, p.pong_frame(command.id))

    async def _do_subscribe(self, conn: Conn, command: p.Command) -> None:
        sub = conn.session.start(command)
        if sub.live:  # already subscribed: answer at once, with where the channel is now
            room = self._room(conn.tenant.tenant_id, command.channel_id)
            current = max(sub.last_seq, room.last_seq)
            await self._reply(
                conn,
                p.ack_frame(command.id, {"channel_id": command.channel_id, "last_seq": current}),
            )
            return
        room = self._room(conn.tenant.tenant_id, command.channel_id)
        room.joining.add(conn)
        position = channels_pb2.ChannelPosition(channel_id=command.channel_id)
        if "since_seq" in command.fields:
            position.since_seq = command.fields["since_seq"]
        self.link.send(
            channels_pb2.ConnectRequest(
                subscribe=channels_pb2.ConnectSubscribe(
                    subscription_key=conn.key,
                    tenant_id=conn.tenant.tenant_id,
                    user_id=conn.user_id,
                    channels=[position],
                )
            )
        )

    async def _do_unsubscribe(self, conn: Conn, command: p.Command) -> None:
        self._leave_room(conn, command.channel_id)
        if not conn.session.stop(command.channel_id):
            raise p.FrameError(p.ErrorCode.NOT_SUBSCRIBED, "not subscribed", command.id)
        self.link.send(
            channels_pb2.ConnectRequest(
                unsubscribe=channels_pb2.ConnectUnsubscribe(
                    subscription_key=conn.key, channel_ids=[command.channel_id]
                )
            )
        )
        await self._reply(conn, p.ack_frame(command.id, {"channel_id": command.channel_id}))

    async def _do_send(self, conn: Conn, command: p.Command) -> None:
        fields = command.fields
        key = fields.get("client_msg_id", "")
        if key:
            # Scoped to the user, so two users' client ids never collide.
            key = hashlib.sha256(f"{conn.user_id}\x1f{key}".encode()).hexdigest()
        response = await self.link.call(
            "SendMessage",
            channels_pb2.SendMessageRequest(
                channel_id=command.channel_id,
                user_id=conn.user_id,
                content=fields["content"],
                message_type=fields.get("message_type", ""),
                reply_to=fields.get("reply_to", ""),
                idempotency_key=key,
            ),
            conn.tenant.tenant_id,
        )
        message = response.message
        await self._reply(
            conn,
            p.ack_frame(
                command.id,
                {"message_id": message.id, "channel_id": message.channel_id, "seq": message.seq},
            ),
        )

    async def _do_edit(self, conn: Conn, command: p.Command) -> None:
        response = await self.link.call(
            "EditMessage",
            channels_pb2.EditMessageRequest(
                channel_id=command.channel_id,
                message_id=command.fields["message_id"],
                user_id=conn.user_id,
                content=command.fields["content"],
            ),
            conn.tenant.tenant_id,
        )
        await self._reply(conn, p.ack_frame(command.id, {"message_id": response.message.id}))

    async def _do_delete(self, conn: Conn, command: p.Command) -> None:
        response = await self.link.call(
            "DeleteMessage",
            channels_pb2.DeleteMessageRequest(
                channel_id=command.channel_id,
                message_id=command.fields["message_id"],
                user_id=conn.user_id,
            ),
            conn.tenant.tenant_id,
        )
        await self._reply(conn, p.ack_frame(command.id, {"message_id": response.message.id}))

    async def _do_react(self, conn: Conn, command: p.Command, method: str = "AddReaction") -> None:
        request_type = (
            channels_pb2.AddReactionRequest
            if method == "AddReaction"
            else channels_pb2.RemoveReactionRequest
        )
        response = await self.link.call(
            method,
            request_type(
                channel_id=command.channel_id,
                message_id=command.fields["message_id"],
                user_id=conn.user_id,
                emoji=command.fields["emoji"],
            ),
            conn.tenant.tenant_id,
        )
        counts = {r.emoji: r.count for r in response.message.reaction_counts}
        await self._reply(
            conn, p.ack_frame(command.id, {"message_id": response.message.id, "reactions": counts})
        )

    async def _do_unreact(self, conn: Conn, command: p.Command) -> None:
        await self._do_react(conn, command, "RemoveReaction")

    async def _do_read(self, conn: Conn, command: p.Command) -> None:
        response = await self.link.call(
            "MarkRead",
            channels_pb2.MarkReadRequest(
                channel_id=command.channel_id, user_id=conn.user_id, seq=command.fields["seq"]
            ),
            conn.tenant.tenant_id,
        )
        await self._reply(
            conn, p.ack_frame(command.id, {"last_read_seq": response.member.last_read_seq})
        )

    def _require_live(self, conn: Conn, command: p.Command) -> None:
        sub = conn.session.subscriptions.get(command.channel_id)
        if sub is None or not sub.live:
            raise p.FrameError(
                p.ErrorCode.NOT_SUBSCRIBED, "subscribe to the channel first", command.id
            )

    async def _do_typing(self, conn: Conn, command: p.Command) -> None:
        self._require_live(conn, command)
        await self._bus.publish(
            EPHEMERAL_TOPIC,
            json.dumps(
                {
                    "kind": "typing",
                    "tenant_id": conn.tenant.tenant_id,
                    "channel_id": command.channel_id,
                    "user_id": conn.user_id,
                    "origin": conn.id,
                }
            ).encode(),
        )
        if command.id is not None:
            await self._reply(conn, p.ack_frame(command.id))

    async def _do_presence(self, conn: Conn, command: p.Command) -> None:
        self._require_live(conn, command)
        if not conn.tenant.allows("presence:read"):
            raise p.FrameError(
                p.ErrorCode.PERMISSION_DENIED, "the tenant lacks presence:read", command.id
            )
        users = await self._presence.online(conn.tenant.tenant_id, command.channel_id)
        await self._reply(conn, p.presence_frame(command.channel_id, users, command.id))

    # -- from the gateway ---------------------------------------------------------------

    def _room(self, tenant_id: str, channel_id: str) -> Room:
        room = self._rooms.get((tenant_id, channel_id))
        if room is None:
            room = self._rooms[(tenant_id, channel_id)] = Room(tenant_id, channel_id)
        return room

    def _leave_room(self, conn: Conn, channel_id: str) -> None:
        room = self._rooms.get((conn.tenant.tenant_id, channel_id))
        if room is None:
            return
        if conn in room.live:
            room.live.discard(conn)
            room.watchers.discard(conn)
            self._presence_change((room.tenant_id, room.channel_id, conn.user_id), -1)
        room.joining.discard(conn)
        if room.empty:
            del self._rooms[(room.tenant_id, room.channel_id)]
            if room.known:
                self.link.send(
                    channels_pb2.ConnectRequest(
                        unsubscribe=channels_pb2.ConnectUnsubscribe(subscription_key=room.key)
                    )
                )

    def _on_gateway(self, response: channels_pb2.ConnectResponse) -> None:
        if response.HasField("subscribe_result"):
            self._on_result(response.subscribe_result)
            return
        event = response.event
        if not response.subscription_keys:
            self._on_live(event)
            return
        frame = b""
        for key in response.subscription_keys:
            if key.startswith("ch:"):
                self._deliver(event)  # a gap being filled: for the whole room
            else:
                conn = self._conns.get(key)
                if conn is not None and not conn.closed:
                    if conn.session.replayed(event.channel_id, event.seq):
                        frame = frame or _frame(event)  # encoded once for all its keys
                        self._write(conn, frame)

    def _on_live(self, event: channels_pb2.ChannelEvent) -> None:
        room = self._rooms.get((event.tenant_id, event.channel_id))
        if room is None:
            return
        if room.filling:
            room.held.append(event)
            return
        if event.event == p.MESSAGE_CREATED and room.known and event.seq > room.last_seq + 1:
            # A jump: some messages never reached us live. Fetch them first.
            room.filling = True
            room.held.append(event)
            self.link.send(_subscribe(room.key, room.tenant_id, room.channel_id, room.last_seq))
            return
        self._deliver(event)

    def _deliver(self, event: channels_pb2.ChannelEvent) -> None:
        """Write the event once-encoded to every live subscriber of its room."""
        room = self._rooms.get((event.tenant_id, event.channel_id))
        if room is None:
            return
        if event.event == p.MESSAGE_CREATED:
            if room.known and event.seq <= room.last_seq:
                return  # already delivered (the log publishes at least once)
            room.last_seq = max(room.last_seq, event.seq)
        frame = _frame(event)
        for conn in room.joining:
            conn.session.hold(event.channel_id, event.event, event.seq, frame)
        room.pending.append(frame)
        if event.event in _ENDS_SUBSCRIPTIONS:
            self._flush_room(room)  # the leaving connections get this event too
            self._end_subscriptions(room, event)
        elif not room.dirty:
            room.dirty = True
            self._dirty.append(room)
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                _COALESCE_SECONDS, self._flush
            )

    def _flush(self) -> None:
        self._flush_handle = None
        rooms, self._dirty = self._dirty, []
        for room in rooms:
            self._flush_room(room)

    def _flush_room(self, room: Room) -> None:
        """Write the room's pending frames to every live subscriber, as one write each.

        Events that arrive within ``_COALESCE_SECONDS`` of each other go out together:
        one system call per subscriber for the lot, instead of one per event, which is
        what limits fan-out when traffic is dense (at the cost of at most that delay).
        """
        room.dirty = False
        frames, room.pending = room.pending, []
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        limit = self._settings.send_buffer_bytes
        delivered = 0
        for conn in room.live:
            transport = conn.ws.transport
            if conn.closed or conn.ws.state is not State.OPEN:
                continue
            if transport.get_write_buffer_size() > limit:
                self._cut(conn, p.CloseCode.SLOW_CONSUMER, "slow consumer")
                continue
            transport.write(data)
            delivered += 1
        DELIVERIES.inc(delivered * len(frames))

    def _end_subscriptions(self, room: Room, event: channels_pb2.ChannelEvent) -> None:
        """After ``user:left`` the user's connections stop following the channel (it may
        be private now); after ``channel:deleted`` everyone's do."""
        leaving = json.loads(event.data_json).get("user_id") if event.event == "user:left" else None
        for conn in list(room.live | room.joining):
            if leaving is None or conn.user_id == leaving:
                self._leave_room(conn, room.channel_id)
                conn.session.stop(room.channel_id)
                self.link.send(
                    channels_pb2.ConnectRequest(
                        unsubscribe=channels_pb2.ConnectUnsubscribe(
                            subscription_key=conn.key, channel_ids=[room.channel_id]
                        )
                    )
                )

    def _write(self, conn: Conn, frame: bytes) -> None:
        if conn.closed or conn.ws.state is not State.OPEN:
            return
        if conn.ws.transport.get_write_buffer_size() > self._settings.send_buffer_bytes:
            self._cut(conn, p.CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        conn.ws.transport.write(frame)
        DELIVERIES.inc()

    def _on_result(self, result: channels_pb2.SubscribeResult) -> None:
        key = result.subscription_key
        if key.startswith("ch:"):
            self._on_fill_done(key, result)
            return
        conn = self._conns.get(key)
        if conn is None or conn.closed:
            return
        sub = conn.session.subscriptions.get(result.channel_id)
        if sub is None:
            return
        room = self._room(conn.tenant.tenant_id, result.channel_id)
        if result.code != 0:
            conn.session.stop(result.channel_id)
            self._leave_room(conn, result.channel_id)
            self._send_soon(
                conn, p.error_frame(_error_code(result.code), result.message, sub.frame_id)
            )
            return
        if not room.known:
            room.known, room.last_seq = True, max(room.last_seq, result.last_seq)
        held = conn.session.go_live(result.channel_id, result.last_seq)
        # Frames pending for the room were held for this connection too: send them to
        # the others now, before it joins them.
        self._flush_room(room)
        room.joining.discard(conn)
        room.live.add(conn)
        if conn.tenant.allows("presence:read"):
            room.watchers.add(conn)
        self._write(
            conn,
            p.encode_text_frame(
                p.ack_frame(
                    sub.frame_id, {"channel_id": result.channel_id, "last_seq": result.last_seq}
                ).encode()
            ),
        )
        for frame in held:
            self._write(conn, frame)
        self._presence_change((conn.tenant.tenant_id, result.channel_id, conn.user_id), +1)

    def _on_fill_done(self, key: str, result: channels_pb2.SubscribeResult) -> None:
        _, tenant_id, channel_id = key.split(":", 2)
        room = self._rooms.get((tenant_id, channel_id))
        if room is None:
            return
        if not room.known and result.code == 0:
            room.known, room.last_seq = True, result.last_seq
        room.filling = False
        held, room.held = room.held, []
        for event in held:
            self._on_live(event)

    def _send_soon(self, conn: Conn, frame: str) -> None:
        asyncio.get_running_loop().create_task(self._reply(conn, frame))

    def _resubscriptions(self) -> list[channels_pb2.ConnectRequest]:
        """After the link (re)opens: every room from where it got, every pending subscribe.

        Built at once (the link writes them one by one while rooms keep changing)."""
        requests = []
        for room in list(self._rooms.values()):
            if room.known and room.live:
                requests.append(
                    _subscribe(room.key, room.tenant_id, room.channel_id, room.last_seq)
                )
            for conn in list(room.joining):
                sub = conn.session.subscriptions.get(room.channel_id)
                since = sub.last_seq if sub is not None else 0
                request = _subscribe(conn.key, room.tenant_id, room.channel_id, since)
                request.subscribe.user_id = conn.user_id
                requests.append(request)
        return requests

    # -- presence and typing ------------------------------------------------------------

    def _presence_change(self, who: Presence3, delta: int) -> None:
        """Count a user's live subscriptions here; queue a join/leave on 0 <-> 1."""
        before = self._present[who]
        after = before + delta
        if after > 0:
            self._present[who] = after
        else:
            del self._present[who]
        if before == 0 and after > 0:
            self._presence_changes.put_nowait(("join", who))
        elif before > 0 and after <= 0:
            self._presence_changes.put_nowait(("leave", who))

    async def _announce_presence(self) -> None:
        """Apply queued joins/leaves to the presence store, in order; announce changes."""
        while True:
            change, (tenant_id, channel_id, user_id) = await self._presence_changes.get()
            try:
                if change == "join":
                    if await self._presence.join(tenant_id, channel_id, user_id):
                        await self._announce("presence:online", tenant_id, channel_id, user_id)
                elif await self._presence.leave(tenant_id, channel_id, user_id):
                    await self._announce("presence:offline", tenant_id, channel_id, user_id)
            except Exception:
                log.warning("presence update failed", exc_info=True)

    async def _announce(self, event: str, tenant_id: str, channel_id: str, user_id: str) -> None:
        await self._bus.publish(
            EPHEMERAL_TOPIC,
            json.dumps(
                {
                    "kind": "presence",
                    "event": event,
                    "tenant_id": tenant_id,
                    "channel_id": channel_id,
                    "user_id": user_id,
                }
            ).encode(),
        )

    def _on_ephemeral(self, payload: bytes) -> None:
        message = json.loads(payload)
        room = self._rooms.get((message["tenant_id"], message["channel_id"]))
        if room is None:
            return
        if message["kind"] == "typing":
            text = p.typing_frame(message["channel_id"], message["user_id"])
            skip = message.get("origin", "")
        else:
            data = json.dumps({"user_id": message["user_id"]}, separators=(",", ":"))
            text = p.event_frame(message["event"], message["channel_id"], 0, data)
            skip = None
        frame = p.encode_text_frame(text.encode())
        for conn in room.live if skip is not None else room.watchers:
            if conn.id != skip:
                self._write(conn, frame)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._presence_ttl / 3)
            try:
                for tenant_id, channel_id, user_id in await self._presence.heartbeat(
                    list(self._present)
                ):
                    await self._announce("presence:offline", tenant_id, channel_id, user_id)
            except Exception:
                log.warning("presence heartbeat failed", exc_info=True)


def _frame(event: channels_pb2.ChannelEvent) -> bytes:
    return p.encode_text_frame(
        p.event_frame(
            event.event, event.channel_id, event.seq, event.data_json or "{}", event.event_id
        ).encode()
    )


def _subscribe(
    key: str, tenant_id: str, channel_id: str, since: int
) -> channels_pb2.ConnectRequest:
    return channels_pb2.ConnectRequest(
        subscribe=channels_pb2.ConnectSubscribe(
            subscription_key=key,
            tenant_id=tenant_id,
            channels=[channels_pb2.ChannelPosition(channel_id=channel_id, since_seq=since)],
        )
    )


def _query_token(path: str) -> str | None:
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def _origin_allowed(origin: str | None, tenant: TenantContext, host: str | None) -> bool:
    """No Origin (not a browser): allowed unless the tenant requires one. Otherwise the
    origin must be listed exactly, or be the bridge's own (its demo page)."""
    if origin is None:
        return not tenant.require_origin
    if origin in tenant.allowed_origins:
        return True
    own = urlsplit(origin)
    return bool(host) and own.netloc == host
