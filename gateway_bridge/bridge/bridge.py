"""The WebSocket bridge: browsers on one side, the gateway's Connect stream on the other.

:class:`Bridge` is the I/O shell that puts the parts together and owns the sockets:
it listens (websockets), admits each connection
(:mod:`~gateway_bridge.bridge.admission`), runs its frames — parsed by
:mod:`~gateway_bridge.bridge.protocol`, charged to its rate budget, run by
:mod:`~gateway_bridge.bridge.commands` — and closes it. Events from the gateway
reach sockets through :mod:`~gateway_bridge.bridge.fanout` and its socket-free room
cores (:mod:`~gateway_bridge.bridge.room`); typing and presence through
:mod:`~gateway_bridge.bridge.ephemeral`. ``docs/protocol.md`` is the protocol.

An admitted connection's messages are handed over as they arrive
(:meth:`~gateway_bridge.bridge.connection.BrowserSocket.deliver_to`); they run in a
task that lives while the connection has frames to run, one frame at a time in the
order they came, so an idle connection holds no reader task. While one runs, those that
come wait; past ``MAX_WAITING`` of them the socket is not read until they are down to
``RESUME_AT`` (as websockets' own frame queue, ``max_queue``, does).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final
from urllib.parse import urlsplit

import grpc
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Data, Subprotocol

from gateway_bridge.bridge import http, unsubscribe
from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.admission import Admission
from gateway_bridge.bridge.commands import Commands
from gateway_bridge.bridge.connection import (
    CLOSED,
    MAX_WAITING,
    RESUME_AT,
    BrowserSocket,
    Conn,
    Connections,
)
from gateway_bridge.bridge.connection_log import ConnectionLines, ConnectionLog
from gateway_bridge.bridge.ephemeral import Ephemeral
from gateway_bridge.bridge.fanout import Fanout
from gateway_bridge.bridge.inbox import Inbox
from gateway_bridge.bridge.keepalive import Keepalive
from gateway_bridge.bridge.link import GatewayLink
from gateway_bridge.bridge.notification_link import NotificationLink
from gateway_bridge.bridge.presence import Presence
from gateway_bridge.bridge.revocation import Revocation
from service_kit.auth import Authenticator
from service_kit.bus import EventBus
from service_kit.client_tokens import ClientTokens
from service_kit.config import BridgeSettings

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT: Final = 2.0
#: What an admitted connection keeps as its handshake request (see ``_handle``).
_HANDSHAKE_DONE: Final = Request("/", Headers())


class Bridge:
    """Serves ``/ws`` (protocol keel.v1), ``/keel.js``, ``/demo``, ``/healthz`` and
    ``/notifications/unsubscribe``."""

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
        notifications: grpc.aio.Channel | None = None,
        files_url: Callable[[], str],
    ) -> None:
        """``notifications`` is a channel to a notification service, if there is one;
        ``files_url`` answers the base URL of the file service's HTTP endpoints, which
        ``welcome`` tells every client."""
        self._settings = settings
        self._gateway = gateway
        self._connections = Connections()
        self._admitting: set[ServerConnection] = set()
        limits = p.SessionLimits(
            max_subscriptions=settings.max_subscriptions,
            messages_per_second=settings.messages_per_second,
            burst=settings.burst,
        )
        self._admission = Admission(
            settings=settings,
            tokens=tokens,
            tenants=tenants,
            connections=self._connections,
            limits=limits,
            files_url=files_url,
        )
        self._ephemeral = Ephemeral(bus=bus, presence=presence, ttl=presence_ttl)
        self.link = GatewayLink(
            gateway,
            peer_token,
            on_response=lambda response: self._fanout.on_gateway(response),
            resubscriptions=lambda: self._fanout.resubscriptions(),
        )
        self._fanout = Fanout(
            connections=self._connections,
            link=self.link,
            send_buffer_bytes=settings.send_buffer_bytes,
            on_slow=lambda conn: self._cut(conn, p.CloseCode.SLOW_CONSUMER, "slow consumer"),
            on_presence=self._ephemeral.change,
        )
        self._notifications = NotificationLink(notifications, peer_token)
        self._inbox = Inbox(
            link=self._notifications,
            connections=self._connections,
            tenants=tenants,
            write=self._fanout.write,
            reply=self._reply,
        )
        self._commands = Commands(
            link=self.link,
            fanout=self._fanout,
            ephemeral=self._ephemeral,
            inbox=self._inbox,
            admission=self._admission,
            tenants=tenants,
            reply=self._reply,
            renewed=lambda conn: self._revocation.watch(conn),
        )
        self._revocation = Revocation(
            connections=self._connections, tenants=tenants, fanout=self._fanout, close=self._cut
        )
        self._keepalive = Keepalive(
            self._connections,
            interval=settings.ping_interval,
            timeout=settings.ping_timeout,
            on_timeout=lambda conn: self._cut(
                conn, p.CloseCode.INTERNAL_ERROR, "keepalive ping timeout"
            ),
        )
        self._bus = bus
        self._server: Server | None = None
        #: websockets' two lines per connection, at most so many a second (connection_log.py).
        self._connection_lines = ConnectionLines()
        #: One bound method for every connection's messages (not one made per connection).
        self._receiver = self._receive
        #: The tasks running connections' frames (asyncio keeps only weak references).
        self._running: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(
        self, host: str, port: int, *, reuse_port: bool = False, tls: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port`` and open the gateway link. With ``reuse_port`` the port
        is bound with ``SO_REUSEPORT`` and shared with the other workers of
        ``keel serve bridge --workers N``; the kernel spreads new connections between them.
        With ``tls`` the port speaks TLS (``wss://``, and ``https://`` for its HTTP)."""
        self.link.start()
        await self._ephemeral.start(self._fanout)
        await self._revocation.start(self._bus)
        await self._inbox.start(self._bus)
        self._server = await serve(
            self._handle,
            host,
            port,
            subprotocols=[p.PROTOCOL],  # type: ignore[list-item]
            select_subprotocol=self._subprotocol,
            process_request=self._http,
            create_connection=BrowserSocket,
            compression="deflate" if self._settings.compression else None,
            max_size=self._settings.max_frame_bytes,
            open_timeout=self._settings.handshake_timeout,
            # One task pings every connection (keepalive.py), not one task per connection.
            ping_interval=None,
            ping_timeout=None,
            close_timeout=_CLOSE_TIMEOUT,
            write_limit=self._settings.send_buffer_bytes,
            reuse_port=reuse_port,
            ssl=tls,
            logger=ConnectionLog(self._connection_lines),
        )
        self.port = self._server.sockets[0].getsockname()[1] if port == 0 else port
        self._keepalive.start()
        log.info("bridge listening", extra={"ws_addr": f"{host}:{self.port}"})

    async def stop(self) -> None:
        """Stop accepting; close every connection with SERVER_RESTART; close the link."""
        if self._server is not None:
            self._server.close(close_connections=False)
            closing = [
                self._close(conn, p.CloseCode.SERVER_RESTART, "server restart")
                for conn in self._connections
            ]
            # Connections still authenticating are told to go elsewhere too.
            closing += [
                ws.close(int(p.CloseCode.SERVER_RESTART), "server restart")
                for ws in list(self._admitting)
            ]
            await asyncio.gather(*closing, return_exceptions=True)
            await self._server.wait_closed()
            # Frames still running finish before the link they may be calling closes.
            await asyncio.gather(*self._running, return_exceptions=True)
        await self._keepalive.stop()
        self._fanout.close()
        await self._revocation.stop()
        await self._inbox.stop()
        await self._ephemeral.stop()
        await self.link.close()
        await self._gateway.close()
        await self._notifications.close()
        self._connection_lines.flush()

    def _http(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        if urlsplit(request.path).path == unsubscribe.UNSUBSCRIBE_PATH:
            assert isinstance(request, http.HttpRequest)
            return unsubscribe.respond(request, self._notifications)
        return http.respond(
            connection,
            request,
            gateway_up=self.link.connected.is_set(),
            echo=self._settings.conformance_echo,
        )

    def _subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """``keel.v1`` is required (websockets' own rule: 400 without it), except on the
        conformance suite's echo route, which speaks no subprotocol."""
        request = connection.request
        if self._settings.conformance_echo and request is not None:
            if urlsplit(request.path).path == http.ECHO_PATH:
                return None
        return ServerProtocol.select_subprotocol(connection.protocol, offered)

    # -- what tests and tools may look at ------------------------------------------------

    def connection(self, connection_id: str) -> Conn | None:
        """The open connection with this id (the ``connection_id`` of its welcome)."""
        return self._connections.get("c:" + connection_id)

    def live_connections(self, tenant_id: str, channel_id: str) -> Iterator[Conn]:
        """The connections live in a channel on this bridge."""
        return self._fanout.live_connections(tenant_id, channel_id)

    def user_connections(self, tenant_id: str, user_id: str) -> list[Conn]:
        """The open connections of a user on this bridge."""
        return list(self._connections.user_connections(tenant_id, user_id))

    # -- one connection -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, BrowserSocket)
        if self._settings.conformance_echo and ws.request is not None:
            if urlsplit(ws.request.path).path == http.ECHO_PATH:
                await _echo(ws)
                return
        conn: Conn | None = None
        self._admitting.add(ws)
        try:
            try:
                conn = await self._admission.admit(ws)
            finally:
                self._admitting.discard(ws)
            if conn is None:
                return
            # Admission read all it needs of the handshake; its headers (~3 KiB) would
            # otherwise stay for the connection's life. (websockets reads a None request
            # as "handshake not received yet": one shared stand-in instead.)
            ws.request, ws.response = _HANDSHAKE_DONE, None
            self._revocation.watch(conn)
            ws.deliver_to(conn, self._receiver)
            # websockets closes the connection when this returns: wait for its end here.
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            if conn is not None:
                self._drop(conn)

    def _receive(self, conn: Conn, message: Data) -> None:
        """A message of ``conn``: run it now, or after the ones before it (see the module
        docstring)."""
        if conn.closed:
            return
        waiting = conn.waiting
        if waiting is not None:
            waiting.append(message)
            if len(waiting) > MAX_WAITING and not conn.reading_paused:
                conn.reading_paused = True
                conn.ws.transport.pause_reading()
            return
        conn.waiting = []
        task = asyncio.get_running_loop().create_task(self._run(conn, message))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, conn: Conn, message: Data) -> None:
        """Run ``message`` and then those that came meanwhile, in order, until none waits
        or the connection closes. A frame that fails closes the connection with 1011, as
        websockets closes one whose handler fails."""
        try:
            while True:
                await self._on_frame(conn, message)
                waiting = conn.waiting
                if not waiting or conn.closed:
                    return
                message = waiting.pop(0)
                if conn.reading_paused and len(waiting) <= RESUME_AT:
                    conn.reading_paused = False
                    conn.ws.transport.resume_reading()
        except ConnectionClosed:
            pass
        except Exception:
            conn.ws.logger.error("connection handler failed", exc_info=True)
            self._drop(conn)
            await conn.ws.close(CloseCode.INTERNAL_ERROR)
        finally:
            conn.waiting = None

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
            await self._reply(conn, p.refusal_frame(refused))
            return
        await self._commands.run(conn, command)

    async def _reply(self, conn: Conn, frame: str) -> None:
        if not conn.closed:
            try:
                await conn.ws.send(frame)
            except ConnectionClosed:
                pass

    async def _close(self, conn: Conn, code: p.CloseCode, reason: str) -> None:
        if not conn.closed:
            conn.closed = True
            self._fanout.leave_all(conn)
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

    def _drop(self, conn: Conn) -> None:
        """The socket is gone: forget the connection, its rooms and its gateway key."""
        if not self._connections.remove(conn):
            return
        conn.closed = True
        self._fanout.leave_all(conn)
        self.link.unsubscribe(conn.key)


async def _echo(ws: ServerConnection) -> None:
    """The conformance suite's echo: every message back as it came (text or binary)."""
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass
