"""The bridge's own answer to the common WebSocket upgrade
(:func:`~gateway_bridge.bridge.http.switching_protocols`): the very bytes websockets'
``accept`` would send, the same state left in the protocol, and websockets' own path for
every request that is not the plain upgrade."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import SERVER, Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from gateway_bridge.bridge import http
from gateway_bridge.bridge.bridge import Bridge
from tests.gateway_bridge.bridge.conftest import http_request

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
PLAIN = (
    ("Host", "127.0.0.1:8080"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Protocol", "keel.v1"),
)


def server_protocol(**options: object) -> ServerProtocol:
    return ServerProtocol(subprotocols=[Subprotocol("keel.v1")], **options)  # type: ignore[arg-type]


def request(*headers: tuple[str, str], method: str = "GET", protocol: str = "HTTP/1.1") -> Request:
    return Request("/ws", Headers(list(headers)), method, protocol)


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both answers name the same second."""
    monkeypatch.setattr("email.utils.formatdate", lambda *args, **kwargs: "FIXED")
    monkeypatch.setattr(http, "http_date", lambda: "FIXED")


@pytest.mark.parametrize(
    "headers",
    [
        PLAIN,
        (*PLAIN, ("Origin", "https://app.example")),
        tuple(
            (name, value.upper()) if name == "Upgrade" else (name, value) for name, value in PLAIN
        ),
        (*PLAIN, ("Sec-WebSocket-Extensions", "permessage-deflate")),  # not negotiated
    ],
    ids=["plain", "origin", "upper-case", "extension-offered"],
)
@pytest.mark.parametrize("server_header", [SERVER, None], ids=["server", "no-server"])
def test_a_plain_upgrade_is_answered_with_websockets_own_bytes(
    headers: tuple[tuple[str, str], ...], server_header: str | None
) -> None:
    ours, theirs = server_protocol(), server_protocol()
    accepted = http.switching_protocols(ours, request(*headers), server_header)
    response = theirs.accept(request(*headers))
    if server_header is not None:
        response.headers["Server"] = server_header
    assert accepted == response.serialize()
    assert (ours.accept_called, ours.origin, ours.extensions, ours.subprotocol) == (
        theirs.accept_called,
        theirs.origin,
        theirs.extensions,
        theirs.subprotocol,
    )


def without(name: str) -> tuple[tuple[str, str], ...]:
    return tuple(header for header in PLAIN if header[0] != name)


def replaced(name: str, value: str) -> tuple[tuple[str, str], ...]:
    return (*without(name), (name, value))


@pytest.mark.parametrize(
    ("headers", "method", "protocol"),
    [
        (replaced("Connection", "keep-alive, Upgrade"), "GET", "HTTP/1.1"),  # Firefox
        (replaced("Sec-WebSocket-Protocol", "other, keel.v1"), "GET", "HTTP/1.1"),
        (without("Sec-WebSocket-Protocol"), "GET", "HTTP/1.1"),
        (replaced("Sec-WebSocket-Protocol", "other"), "GET", "HTTP/1.1"),
        (without("Sec-WebSocket-Key"), "GET", "HTTP/1.1"),
        (replaced("Sec-WebSocket-Key", "not base64!"), "GET", "HTTP/1.1"),
        (replaced("Sec-WebSocket-Key", "c2hvcnQ="), "GET", "HTTP/1.1"),
        ((*PLAIN, ("Sec-WebSocket-Key", KEY)), "GET", "HTTP/1.1"),
        (replaced("Sec-WebSocket-Version", "8"), "GET", "HTTP/1.1"),
        (replaced("Upgrade", "h2c"), "GET", "HTTP/1.1"),
        ((*PLAIN, ("Origin", "https://a"), ("Origin", "https://b")), "GET", "HTTP/1.1"),
        (PLAIN, "POST", "HTTP/1.1"),
        (PLAIN, "GET", "HTTP/1.0"),
    ],
    ids=[
        "connection-list",
        "two-subprotocols",
        "no-subprotocol",
        "other-subprotocol",
        "no-key",
        "bad-key",
        "short-key",
        "two-keys",
        "version-8",
        "other-upgrade",
        "two-origins",
        "post",
        "http-1.0",
    ],
)
def test_anything_but_the_plain_upgrade_is_left_to_websockets(
    headers: tuple[tuple[str, str], ...], method: str, protocol: str
) -> None:
    ours = server_protocol()
    assert (
        http.switching_protocols(ours, request(*headers, method=method, protocol=protocol), SERVER)
        is None
    )
    assert not ours.accept_called and ours.subprotocol is None


def test_negotiated_extensions_and_checked_origins_are_left_to_websockets() -> None:
    deflate = server_protocol(extensions=[ServerPerMessageDeflateFactory()])
    offered = request(*PLAIN, ("Sec-WebSocket-Extensions", "permessage-deflate"))
    assert http.switching_protocols(deflate, offered, SERVER) is None
    checked = server_protocol(origins=["https://app.example"])
    assert http.switching_protocols(checked, request(*PLAIN), SERVER) is None


def test_a_subprotocol_the_hook_declines_is_left_to_websockets() -> None:
    """A hook that picks no subprotocol (the conformance echo route): no
    ``Sec-WebSocket-Protocol`` in the 101, which websockets' accept answers."""
    declined = server_protocol(select_subprotocol=lambda protocol, offered: None)
    assert http.switching_protocols(declined, request(*PLAIN), SERVER) is None
    assert not declined.accept_called and declined.subprotocol is None


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (PLAIN, 101),
        (replaced("Connection", "keep-alive, Upgrade"), 101),
        (replaced("Sec-WebSocket-Protocol", "other, keel.v1"), 101),
        (without("Sec-WebSocket-Protocol"), 400),
        (replaced("Sec-WebSocket-Key", "not base64!"), 400),
        (replaced("Sec-WebSocket-Version", "8"), 400),
    ],
    ids=["plain", "connection-list", "two-subprotocols", "no-subprotocol", "bad-key", "version-8"],
)
async def test_the_bridge_answers_each_upgrade_as_websockets_does(
    bridge: Bridge, headers: tuple[tuple[str, str], ...], status: int
) -> None:
    sent = tuple(header for header in headers if header[0] != "Host")  # http_request's own
    answer = await http_request(bridge.port, "GET", "/ws", headers=sent)
    assert answer.status == status
    if status == 101:
        assert answer.headers["sec-websocket-protocol"] == "keel.v1"
        assert answer.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
