"""What the bridge answers over plain HTTP on its port: ``/keel.js``, ``/demo``,
``/healthz``, ``/notifications/unsubscribe`` (:mod:`~gateway_bridge.bridge.unsubscribe`),
and a 426 for ``/ws`` without a WebSocket upgrade (and for the conformance suite's echo
route, when it is turned on).

websockets reads only what a WebSocket handshake needs: a request without a body. The
one-click unsubscribe of RFC 8058 is a POST with a short form body, so the bridge's
connections (:class:`BridgeConnection`) read requests with :func:`read_request`, which
also takes the body of a POST of up to :data:`MAX_BODY_BYTES`.
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable, Generator
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidMessage,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.http11 import SERVER, Request, Response, parse_headers, parse_line
from websockets.protocol import CONNECTING, OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Origin, Subprotocol
from websockets.utils import accept_key

STATIC: Final = Path(__file__).with_name("static")

#: Files served as they are: path -> (file in static/, content type).
FILES: Final = {
    "/keel.js": ("keel.js", "application/javascript; charset=utf-8"),
    "/demo": ("demo.html", "text/html; charset=utf-8"),
    "/demo/": ("demo.html", "text/html; charset=utf-8"),
}


#: The echo route of the conformance suite (``KEEL_WS_CONFORMANCE_ECHO``).
ECHO_PATH: Final = "/_conformance/echo"

#: websockets' body of a 500 answered when ``process_request`` fails.
_FAILED: Final = "Failed to open a WebSocket connection.\nSee server log for more information.\n"

#: The largest request body read (a POST's; an RFC 8058 one is 26 bytes).
MAX_BODY_BYTES: Final = 4096


def respond(
    connection: ServerConnection, request: Request, *, gateway_up: bool, echo: bool = False
) -> Response | None:
    """The HTTP response for ``request``, or None to go on with the WebSocket handshake.

    ``/healthz`` is 200 while the bridge's stream to the gateway is up, 503 otherwise;
    :data:`ECHO_PATH` upgrades only when ``echo`` is on (else it is not found)."""
    path = urlsplit(request.path).path
    if path == "/ws" or (echo and path == ECHO_PATH):
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return connection.respond(
                HTTPStatus.UPGRADE_REQUIRED, "this endpoint speaks WebSocket (keel.v1)\n"
            )
        return None
    if path == "/healthz":
        return connection.respond(
            HTTPStatus.OK if gateway_up else HTTPStatus.SERVICE_UNAVAILABLE,
            "ok\n" if gateway_up else "gateway unreachable\n",
        )
    if path in FILES:
        name, content_type = FILES[path]
        return page(HTTPStatus.OK, (STATIC / name).read_bytes(), content_type)
    return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")


def page(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    *,
    cache: str = "no-cache",
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    """A response with ``body``; by default not to be cached without asking again."""
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", cache),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


# -- reading requests with a body ------------------------------------------------------------


@dataclasses.dataclass
class HttpRequest(Request):
    """A request as websockets parses it, with its body (a POST's; empty otherwise).
    ``body_too_long`` when it announced more than :data:`MAX_BODY_BYTES` (left unread)."""

    body: bytes = b""
    body_too_long: bool = False


def read_request(reader: StreamReader) -> Generator[None, None, HttpRequest]:
    """websockets' ``Request.parse``, except that a POST may have a body (read, up to
    :data:`MAX_BODY_BYTES`). Raises what ``Request.parse`` raises."""
    request_line = yield from parse_line(reader.read_line, RequestLineTooLong)
    try:
        raw_method, raw_path, raw_protocol = request_line.split(b" ", 2)
    except ValueError:
        raise ValueError(f"invalid HTTP request line: {request_line!r}") from None
    if raw_protocol not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError(f"unsupported protocol: {request_line!r}")
    method, path = raw_method.decode("ascii"), raw_path.decode("ascii")
    headers = yield from parse_headers(reader.read_line)
    if "Transfer-Encoding" in headers:
        raise NotImplementedError("transfer codings aren't supported")
    lengths = set(headers.get_all("Content-Length"))
    request = HttpRequest(path, headers, method, raw_protocol.decode("ascii"))
    if lengths <= {"0"}:
        return request
    if method != "POST" or len(lengths) != 1 or not next(iter(lengths)).isdigit():
        raise ValueError("unsupported request body")
    length = int(next(iter(lengths)))
    if length > MAX_BODY_BYTES:
        request.body_too_long = True  # answered 413; the response discards the rest
        return request
    request.body = bytes((yield from reader.read_exact(length)))
    return request


def _handshake(protocol: ServerProtocol) -> Generator[None]:
    """``ServerProtocol.parse`` with :func:`read_request` for ``Request.parse``."""
    if protocol.state is CONNECTING:
        try:
            request = yield from read_request(protocol.reader)
        except RequestLineTooLong as exc:
            protocol.handshake_exc = exc
            protocol.send_response(
                protocol.reject(
                    HTTPStatus.REQUEST_URI_TOO_LONG,
                    f"Failed to open a WebSocket connection: {exc}.\n",
                )
            )
            yield
        except (HeaderLineTooLong, TooManyHeaders) as exc:
            protocol.handshake_exc = exc
            protocol.send_response(
                protocol.reject(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"Failed to open a WebSocket connection: {exc}.\n",
                )
            )
            yield
        except Exception as exc:
            protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
            protocol.handshake_exc.__cause__ = exc
            protocol.send_eof()
            protocol.parser = protocol.discard()
            next(protocol.parser)
            yield
        protocol.events.append(request)
        while request.body_too_long:  # unread: its bytes must not be taken for frames
            protocol.reader.discard()  # (the 413 answer replaces this parser)
            yield
        # This generator lives as long as the connection: it must not keep the request
        # (its headers, ~3.5 KiB) once the connection has let it go.
        del request
    yield from Protocol.parse(protocol)


# -- the common WebSocket handshake, without websockets' general path ------------------------

#: What a connection accepted by :func:`switching_protocols` keeps as its ``response``:
#: the 101 went out as bytes, never as a ``Response`` (nothing reads it afterwards).
SWITCHED: Final = Response(101, "Switching Protocols", Headers())


class _HttpDate:
    """The ``Date`` header's value, made again only when the second changes (it names
    whole seconds; ``formatdate`` costs about as much as the rest of a 101)."""

    def __init__(self) -> None:
        self._second = 0
        self._text = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, formatdate(second, usegmt=True)
        return self._text


http_date: Final = _HttpDate()


def switching_protocols(
    protocol: ServerProtocol, request: Request, server_header: str | None
) -> bytes | None:
    """The 101 response to ``request``, as bytes, when it is the plain upgrade every
    client sends: ``GET`` over HTTP/1.1, one ``Connection: Upgrade``, one ``Upgrade:
    websocket``, one well-formed ``Sec-WebSocket-Key``, ``Sec-WebSocket-Version: 13``, at
    most one ``Origin`` (and no ``origins`` to check it against), extensions the server
    does not negotiate, and a subprotocol ``select_subprotocol`` picks from one
    ``Sec-WebSocket-Protocol`` naming one. ``protocol`` then holds what
    ``ServerProtocol.accept`` would have set (origin, extensions, subprotocol). None for
    anything else, which ``accept`` answers as websockets does (its refusals and their
    messages are websockets' own). The bytes are those of websockets' response, headers
    in its order, ``Date`` first and ``Server`` last; made here, they cost a third of
    ``accept`` and ``send_response`` (no ``Headers``, ``Response`` or date formatting per
    connection, no header parsing for the common values)."""
    if request.method != "GET" or request.protocol != "HTTP/1.1" or protocol.origins is not None:
        return None
    headers = request.headers
    connection = headers.get_all("Connection")
    upgrade = headers.get_all("Upgrade")
    keys = headers.get_all("Sec-WebSocket-Key")
    if (
        len(connection) != 1
        or connection[0].lower() != "upgrade"
        or len(upgrade) != 1
        or upgrade[0].lower() != "websocket"
        or len(keys) != 1
        or headers.get_all("Sec-WebSocket-Version") != ["13"]
        or len(headers.get_all("Origin")) > 1
        or (headers.get_all("Sec-WebSocket-Extensions") and protocol.available_extensions)
    ):
        return None
    key = keys[0]
    try:
        if len(b64decode(key.encode(), validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    offered = headers.get_all("Sec-WebSocket-Protocol")
    if len(offered) != 1 or "," in offered[0]:
        return None
    try:
        subprotocol = protocol.select_subprotocol([Subprotocol(offered[0].strip())])
    except Exception:  # accept() answers it (400, or 500 for a failing hook)
        return None
    if subprotocol is None:
        return None
    origins = headers.get_all("Origin")
    protocol.accept_called = True
    protocol.origin = Origin(origins[0]) if origins else None
    protocol.extensions = []
    protocol.subprotocol = subprotocol
    return (
        f"HTTP/1.1 101 Switching Protocols\r\nDate: {http_date()}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n"
        f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
        + (f"Server: {server_header}\r\n" if server_header is not None else "")
        + "\r\n"
    ).encode()


class BridgeConnection(ServerConnection):
    """websockets' server connection, reading its request with :func:`read_request`, and
    waiting for it on one future (:meth:`handshake`)."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        # Nothing has been received yet: the handshake parser can still be swapped.
        protocol.parser = _handshake(protocol)
        next(protocol.parser)
        super().__init__(protocol, *args, **kwargs)

    async def handshake(
        self,
        process_request: Callable[
            [ServerConnection, Request], Awaitable[Response | None] | Response | None
        ]
        | None = None,
        process_response: Callable[
            [ServerConnection, Request, Response], Awaitable[Response | None] | Response | None
        ]
        | None = None,
        server_header: str | None = SERVER,
    ) -> None:
        """websockets' handshake, except that it waits for the request on its one future,
        which :meth:`connection_lost` also resolves: websockets waits on two futures with
        ``asyncio.wait`` (a set, a waiter, two callbacks and a loop turn per connection,
        about 6 % of a connect's CPU)."""
        await self.request_rcvd
        if self.request is None:  # the connection was lost first
            return
        response: Response | None = None
        if process_request is not None:
            try:
                returned = process_request(self, self.request)
                response = await returned if isinstance(returned, Awaitable) else returned
            except Exception as exc:
                self.protocol.handshake_exc = exc
                self.logger.error("process_request failed", exc_info=True)
                response = self.protocol.reject(HTTPStatus.INTERNAL_SERVER_ERROR, _FAILED)
        if response is None and process_response is None and self.server.is_serving():
            accepted = switching_protocols(self.protocol, self.request, server_header)
            if accepted is not None:
                await self._switch(accepted)
                return
        self.response = self.protocol.accept(self.request) if response is None else response
        if server_header is not None:
            self.response.headers["Server"] = server_header
        if process_response is not None:
            try:
                returned = process_response(self, self.request, self.response)
                response = await returned if isinstance(returned, Awaitable) else returned
            except Exception as exc:
                self.protocol.handshake_exc = exc
                self.logger.error("process_response failed", exc_info=True)
                response = self.protocol.reject(HTTPStatus.INTERNAL_SERVER_ERROR, _FAILED)
            if response is not None:
                self.response = response
        # Refused if the server started closing meanwhile (no await from here to the send).
        if (
            self.response.status_code == HTTPStatus.SWITCHING_PROTOCOLS
            and not self.server.is_serving()
        ):
            self.response = self.protocol.reject(
                HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n"
            )
        if self.state is CONNECTING:  # not if the connection closed meanwhile
            async with self.send_context(expected_state=CONNECTING):
                self.protocol.send_response(self.response)

    async def _switch(self, accepted: bytes) -> None:
        """Send the 101 of :func:`switching_protocols` and open the connection, as
        ``ServerProtocol.send_response`` and websockets' ``send_context`` would (a write
        that fails aborts the connection and raises its ``ConnectionClosed``)."""
        if self.state is not CONNECTING:  # the connection closed meanwhile
            return
        self.response = SWITCHED
        protocol = self.protocol
        protocol.writes.append(accepted)
        protocol.state = OPEN
        protocol.logger.info("connection open")
        try:
            self.send_data()
        except Exception as exc:
            self.set_connection_exc(exc)
            self.transport.abort()
            await asyncio.shield(self.connection_lost_waiter)
            raise self.close_exc from None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.request_rcvd.done():
            self.request_rcvd.set_result(None)
