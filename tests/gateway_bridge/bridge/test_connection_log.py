"""websockets' two lines per connection (``connection open``, ``connection closed``) are
written up to a limit a second and counted past it, the count written in one line when
the second is over (:mod:`~gateway_bridge.bridge.connection_log`); every other line
passes, and a written line still names its connection."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.connection_log import ConnectionLines, ConnectionLog
from tests.gateway_bridge.bridge.conftest import Dial, token_for
from tests.gateway_bridge.conftest import Tenant

SUMMARY = "connection lines not written"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limited(per_second: int, caplog: pytest.LogCaptureFixture) -> tuple[Clock, ConnectionLines]:
    """Lines limited to ``per_second`` on a clock the test moves, INFO captured."""
    clock = Clock()
    caplog.set_level(logging.INFO)
    return clock, ConnectionLines(per_second, clock=clock)


def websockets_adapter(lines: ConnectionLines, name: str) -> logging.LoggerAdapter[ConnectionLog]:
    """What websockets makes of the logger a bridge gives it, per connection."""
    return logging.LoggerAdapter(ConnectionLog(lines), {"websocket": name})


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def test_past_the_limit_the_lines_are_counted_and_the_count_written_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, lines = limited(2, caplog)
    for n in range(5):
        websockets_adapter(lines, f"ws{n}").info("connection open")
    websockets_adapter(lines, "ws0").info("connection closed")
    opened = records(caplog, "connection open")
    assert [r.__dict__["websocket"] for r in opened] == ["ws0", "ws1"]
    assert len(records(caplog, "connection closed")) == 1
    assert records(caplog, SUMMARY) == []
    clock.now += 1.5
    lines.flush()
    [summary] = records(caplog, SUMMARY)
    assert summary.levelno == logging.INFO
    assert (summary.__dict__["connection_open"], summary.__dict__["connection_closed"]) == (3, 0)
    assert summary.__dict__["seconds"] == 1.5
    lines.flush()  # nothing more held: no second line
    assert len(records(caplog, SUMMARY)) == 1


def test_each_second_starts_with_the_full_limit_and_other_lines_always_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, lines = limited(1, caplog)
    log = websockets_adapter(lines, "ws")
    log.info("connection open")
    log.info("connection open")
    clock.now += 1.0
    log.info("connection open")
    for _ in range(3):
        log.info("connection rejected (%d %s)", 403, "Forbidden")
        log.error("connection handler failed")
    assert len(records(caplog, "connection open")) == 2
    assert len(records(caplog, "connection rejected (403 Forbidden)")) == 3
    assert len(records(caplog, "connection handler failed")) == 3


async def test_the_count_is_written_when_its_second_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, lines = limited(1, caplog)
    written = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == SUMMARY:
                written.set()

    seen = Seen()
    logging.getLogger("gateway_bridge.bridge.connection_log").addHandler(seen)
    try:
        log = websockets_adapter(lines, "ws")
        log.info("connection closed")
        clock.now += 1.0  # the next line opens a new second, which it then fills
        log.info("connection closed")
        log.info("connection closed")  # held: the count is due at the end of this second
        clock.now += 1.0
        await asyncio.wait_for(written.wait(), 10)
    finally:
        logging.getLogger("gateway_bridge.bridge.connection_log").removeHandler(seen)
    [summary] = records(caplog, SUMMARY)
    assert summary.__dict__["connection_closed"] == 1


async def test_a_bridge_writes_connection_open_naming_its_connection(
    bridge: Bridge, tenant: Tenant, dial: Dial, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await dial(bridge, await token_for(tenant, "alice"))
    await client.expect(lambda f: f["type"] == "welcome")
    opened = [r for r in records(caplog, "connection open") if r.name == "websockets.server"]
    assert opened
    assert all("websocket" in r.__dict__ for r in opened)
