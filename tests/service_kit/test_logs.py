"""The kit's logs: no secret in any line, websockets connections named by peer and path."""

from __future__ import annotations

import json
import logging
import queue
import sys
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from service_kit.logs import (
    REDACTED,
    JsonFormatter,
    _Handoff,
    configure_logging,
    redact,
    redact_values,
)

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInRpZCI6InQxIn0"
    ".RWaigYgEGACsdVF7CJRLyIs2sE3oMu8ty2ieim7mV0E"
)
CLIENT_SECRET = "ks_cbK-uDyuzveTOg2KtIyOfRSswxj9plJNyJ_M2j-zE1A"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"GET /ws?token={JWT} HTTP/1.1", JWT),
        ("GET /demo?channel=c1&token=opaque-token-value-123&x=1", "opaque-token-value-123"),
        ("POST /hook?client_secret=s3cr3t-value-42 HTTP/1.1", "s3cr3t-value-42"),
        ("authorization: Bearer kc_0123456789:hunter2hunter2", "hunter2hunter2"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("metadata (('x-client-secret', 'plain-secret-value'),)", "plain-secret-value"),
        ("Decoded (b'authorization', b'Bearer op-token-0123456789')", "op-token-0123456789"),
        ('{"x-client-secret": "json-secret-value"}', "json-secret-value"),
        (f"created tenant, secret {CLIENT_SECRET} shown once", CLIENT_SECRET),
        (f"webhook secret is {WEBHOOK_SECRET}", WEBHOOK_SECRET),
        (f"client token {JWT} issued", JWT),
        ("redis://:p4ssw0rd-value@127.0.0.1:6379/0 unreachable", "p4ssw0rd-value"),
        ("postgresql://keel:p4ssw0rd-value@db/keel refused", "p4ssw0rd-value"),
    ],
)
def test_secrets_are_redacted(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert REDACTED in redacted


@pytest.mark.parametrize(
    "text",
    [
        "rpc keel.channels.v1.ChannelService/SendMessage OK in 1.2 ms",
        "GET /ws HTTP/1.1",
        "waiting for the database: connection refused at 127.0.0.1:5432",
        "tenant 0e3e8d0c-c6e6-4084-b155-1e4e3e9a2956 has client id kc_0123456789abcdef0123",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_registered_values_are_redacted_however_they_appear() -> None:
    operator_token = "Qx7-registered-operator-token-zz"
    redact_values([operator_token, None, "short"])
    assert redact(f"token={operator_token}") == f"token={REDACTED}"
    assert redact(f"odd place {operator_token}!") == f"odd place {REDACTED}!"
    assert redact("short words stay") == "short words stay"


def test_every_field_of_a_line_is_redacted() -> None:
    try:
        raise RuntimeError(f"failed with secret {CLIENT_SECRET}")
    except RuntimeError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, 'quoted "%s" then', (JWT,), sys.exc_info()
        )
    record.__dict__.update(
        metadata={"authorization": "Bearer anything-at-all", "x-request-id": "r1"},
        token="bare-token-value",
        urls=[f"wss://h/ws?token={JWT}"],
    )
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    for secret in (JWT, CLIENT_SECRET, "anything-at-all", "bare-token-value"):
        assert secret not in line
    assert entry["message"] == f'quoted "{REDACTED}" then'
    assert entry["metadata"] == {"authorization": REDACTED, "x-request-id": "r1"}
    assert entry["token"] == REDACTED


@pytest.fixture
def websockets_records() -> Iterator[tuple[logging.Logger, queue.SimpleQueue[logging.LogRecord]]]:
    """A websockets server logger whose records go through the kit's hand-off."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    logger = logging.getLogger("test.websockets.server")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = _Handoff(records)
    logger.addHandler(handler)
    yield logger, records
    logger.removeHandler(handler)


async def test_websockets_lines_name_the_peer_and_path_without_the_token(
    websockets_records: tuple[logging.Logger, queue.SimpleQueue[logging.LogRecord]],
) -> None:
    logger, records = websockets_records

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, logger=logger) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/ws?token={JWT}") as client:
            await client.send("hello")
            assert await client.recv() == "hello"
            local_port = client.local_address[1]

    lines = []
    while not records.empty():
        lines.append(JsonFormatter().format(records.get()))
    assert lines
    assert not [line for line in lines if JWT in line or "object at 0x" in line]
    opened = [json.loads(line) for line in lines if '"connection open"' in line]
    assert len(opened) == 1
    assert opened[0]["peer"] == f"127.0.0.1:{local_port}"
    assert opened[0]["path"] == "/ws"


def test_websockets_debug_lines_are_never_enabled() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("DEBUG")
        assert logging.getLogger("websockets").getEffectiveLevel() == logging.INFO
        assert not logging.getLogger("websockets.server").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
