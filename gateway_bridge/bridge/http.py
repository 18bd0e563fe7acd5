"""What the bridge answers over plain HTTP on its port: ``/keel.js``, ``/demo``,
``/healthz``, and a 426 for ``/ws`` without a WebSocket upgrade (and for the
conformance suite's echo route, when it is turned on)."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

STATIC: Final = Path(__file__).with_name("static")

#: Files served as they are: path -> (file in static/, content type).
FILES: Final = {
    "/keel.js": ("keel.js", "application/javascript; charset=utf-8"),
    "/demo": ("demo.html", "text/html; charset=utf-8"),
    "/demo/": ("demo.html", "text/html; charset=utf-8"),
}


#: The echo route of the conformance suite (``KEEL_WS_CONFORMANCE_ECHO``).
ECHO_PATH: Final = "/_conformance/echo"


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
