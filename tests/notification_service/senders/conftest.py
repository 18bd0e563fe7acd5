"""What the sender tests share: notifications to send, a real SMTP server (aiosmtpd)
on a random port of 127.0.0.1, certificates from a test CA (trustme), and the outbound
HTTP client allowed to reach 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from notification_service.senders.base import NotificationContent
from service_kit.outbound import OutboundHttp
from tests.conftest import unique

T0 = datetime(2026, 11, 30, 10, 7, 38, 123456, tzinfo=UTC)


def notification(number: int = 1, **changes: Any) -> NotificationContent:
    """A notification of category ``mention`` for user ``u-1``, made ``number`` seconds
    after :data:`T0`."""
    values: dict[str, Any] = {
        "id": unique("n"),
        "user_id": "u-1",
        "category": "mention",
        "title": f"Ada mentioned you ({number})",
        "body": f"in #team: look at this, number {number}",
        "data": {"url": "https://chat.example.com/team/42", "n": number},
        "create_time": T0 + timedelta(seconds=number),
        "channel_id": "c-team",
    }
    values.update(changes)
    return NotificationContent(**values)


# -- SMTP -------------------------------------------------------------------------------


@dataclass
class Received:
    """One email the server accepted, and the connection it came over."""

    session: Session
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Mailbox:
    """The aiosmtpd handler: keeps what arrives; answers ``refusals`` to some
    recipients (``{"gone@example.com": "550 5.1.1 no such user"}``)."""

    received: list[Received] = field(default_factory=list)
    refusals: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refusals:
            return self.refusals[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes) and envelope.mail_from is not None
        self.received.append(
            Received(session, envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        )
        return "250 OK"

    def sessions(self) -> int:
        """How many connections the received emails came over."""
        return len({id(r.session) for r in self.received})


class SmtpServer(Controller):
    """aiosmtpd's threaded controller, listening on a port the system chose; it closes
    its connections when it stops, whoever still holds them."""

    connections: list[SMTP]

    def factory(self) -> SMTP:
        connection: SMTP = super().factory()  # type: ignore[no-untyped-call]
        self.connections.append(connection)
        return connection

    def start(self) -> None:
        self.connections = []
        super().start()

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = int(self.server.sockets[0].getsockname()[1])
        super()._trigger_server()  # type: ignore[no-untyped-call]

    def drop_connections(self) -> None:
        """Close every connection at once from the server's side (no TLS goodbye: the
        client may not be listening); return once they are closed."""
        done = threading.Event()

        def close() -> None:
            for connection in self.connections:
                if isinstance(connection.transport, asyncio.Transport):
                    connection.transport.abort()
            done.set()

        self.loop.call_soon_threadsafe(close)
        assert done.wait(5), "the SMTP server's loop did not run"

    def stop(self, no_assert: bool = False) -> None:
        self.drop_connections()
        super().stop(no_assert)


@contextmanager
def smtp_server(mailbox: Mailbox, **options: Any) -> Iterator[SmtpServer]:
    """An aiosmtpd server on 127.0.0.1 for the length of the block."""
    server = SmtpServer(
        mailbox, hostname="127.0.0.1", port=0, server_hostname="smtp.test", **options
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- TLS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    """A server context with a certificate for 127.0.0.1, and a client context that
    trusts only the CA that issued it."""

    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls() -> Tls:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Tls(server, client)


# -- HTTP -------------------------------------------------------------------------------


@asynccontextmanager
async def http_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 (a port the system chose) answering every POST
    with ``handler``; yields its origin, ``http://127.0.0.1:<port>``."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[OutboundHttp]:
    """The outbound client, allowed to reach 127.0.0.1 (the test servers)."""
    async with _outbound(allow_private=True) as client:
        yield client


@pytest.fixture
async def guarded_http() -> AsyncIterator[OutboundHttp]:
    """The outbound client as production runs it: private addresses refused."""
    async with _outbound(allow_private=False) as client:
        yield client


def _outbound(*, allow_private: bool) -> OutboundHttp:
    return OutboundHttp(allow_private=allow_private, timeout_seconds=10.0, user_agent="Keel-Test/1")
