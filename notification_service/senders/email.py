"""Email over SMTP: the message (a pure function) and the mailer that sends it.

:func:`~service_kit.config.parse_smtp_url` reads ``KEEL_SMTP_URL`` (checked at start-up):

- ``smtp://host`` — plain SMTP, port 25;
- ``smtp://user:pass@host:587?starttls=1`` — STARTTLS, required (port 587 by default);
- ``smtps://user:pass@host`` — TLS from the first byte (port 465 by default).

User and password are percent-decoded (``p%40ss`` is ``p@ss``). Server certificates
are always verified.

:func:`build_message` makes the bytes of one email: ``multipart/alternative`` with a
text/plain and a text/html part (UTF-8, quoted-printable), ``Subject`` (RFC 2047 encoded
when it is not ASCII), ``From``, ``To``, ``Date``, the stable ``Message-ID`` the caller
chose, ``Auto-Submitted: auto-generated`` (RFC 3834: no auto-replies), and, with an
unsubscribe URL, ``List-Unsubscribe: <url>`` + ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click`` (RFC 8058). The URL is written as it is, never folded or
encoded, because mail providers read it literally.

:class:`SmtpMailer` keeps **one** SMTP connection and sends every email over it, one
at a time (a lock); :class:`SmtpMailerPool` sends over a few of them at once (each reused
the same way), so that a process's delivery jobs do not all wait for one connection's
round trips. It does not probe the connection before a send: when a reused
connection turns out to have been dropped by the server, it connects again and sends
once more (the server accepted nothing on a connection it had closed).

Failures are :class:`~notification_service.senders.base.DeliveryFailed`:

- a 5xx answer to the message (``MAIL``, ``RCPT``, ``DATA``): ``permanent=True``
  with the reply code — the server will not take this email;
- a 4xx answer, a lost connection, a timeout, or a failure to connect, start TLS or
  log in (whatever the code: the server or the settings are at fault, not this
  email): ``permanent=False`` — a later attempt may succeed.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import ssl
from datetime import datetime
from email import quoprimime
from email.header import Header
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, parseaddr
from typing import Any, Final

import aiosmtplib

from notification_service.senders import render
from notification_service.senders.base import DeliveryFailed, OutgoingEmail
from service_kit.clock import Clock, utcnow
from service_kit.config import parse_smtp_url

# -- the message ------------------------------------------------------------------------


class _MailPolicy(EmailPolicy):
    """The SMTP policy, except that ``List-Unsubscribe`` is written as it is and a
    non-ASCII ``Subject`` is encoded by :class:`email.header.Header`, whose encoded
    words keep every space (the default folder can lose one between two of them)."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        text = str(value)
        if name.lower() == "list-unsubscribe" or (name.lower() == "subject" and text.isascii()):
            return f"{name}: {text}{self.linesep}".encode("ascii")
        if name.lower() == "subject":
            encoded = Header(text, "utf-8", header_name=name).encode(linesep=self.linesep)
            return f"{name}: {encoded}{self.linesep}".encode("ascii")
        return bytes(super().fold_binary(name, value))


_POLICY: Final = _MailPolicy(linesep="\r\n")


def build_message(email: OutgoingEmail, *, date: datetime) -> bytes:
    """The bytes of ``email`` as sent with ``DATA`` (see the module's docstring).

    Raises ValueError when a header cannot be written (an address with a line break).

    Most emails (plain ASCII addresses, such as ``Team <team@example.com>``) are written
    directly, a tenth of the CPU of :mod:`email`'s header objects; any other goes
    through :class:`~email.message.EmailMessage`, which quotes and encodes what needs it.
    """
    if _plain_mailbox(email.sender) and _plain_mailbox(email.to, name=False):
        return _written_directly(email, date)
    return _built_by_email_package(email, date)


#: An address (``local@domain``) and an optional display name before it that need no
#: quoting or encoding; anything else goes through the email package.
_ADDRESS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+"
_PLAIN_MAILBOX = re.compile(
    rf"{_ADDRESS}|[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~ -]*[A-Za-z0-9] <{_ADDRESS}>"
)
_PLAIN_ADDRESS = re.compile(_ADDRESS)
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+>")


def _plain_mailbox(value: str, *, name: bool = True) -> bool:
    return (_PLAIN_MAILBOX if name else _PLAIN_ADDRESS).fullmatch(value) is not None


def _written_directly(email: OutgoingEmail, date: datetime) -> bytes:
    """:func:`build_message`'s bytes for plain addresses: the same headers and parts as
    :func:`_built_by_email_package`, written as text."""
    message_id = _angle_bracketed(email.message_id)
    if not _MESSAGE_ID.fullmatch(message_id):
        return _built_by_email_package(email, date)
    subject = render.subject_of(email.items)
    if subject.isascii():
        subject_line = f"Subject: {subject}"
    else:
        subject_line = (
            f"Subject: {Header(subject, 'utf-8', header_name='Subject').encode(linesep=_CRLF)}"
        )
    lines = [
        subject_line,
        f"From: {email.sender}",
        f"To: {email.to}",
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-generated",
    ]
    if email.unsubscribe_url:
        _check_unsubscribe_url(email.unsubscribe_url)
        lines += [
            f"List-Unsubscribe: <{email.unsubscribe_url}>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        ]
    boundary = f"==============={secrets.randbelow(10**19):019d}=="  # QP never has "=="
    text = render.email_text(email.items, unsubscribe_url=email.unsubscribe_url)
    html = render.email_html(email.items, unsubscribe_url=email.unsubscribe_url)
    lines += [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "",
        *_part(boundary, "plain", text),
        *_part(boundary, "html", html),
        f"--{boundary}--",
        "",
    ]
    return _CRLF.join(lines).encode("ascii")


_CRLF: Final = "\r\n"


def _part(boundary: str, subtype: str, content: str) -> list[str]:
    """A UTF-8 quoted-printable text part (as :meth:`EmailMessage.set_content` writes it)."""
    body = b"\n".join(content.encode("utf-8").splitlines()) + b"\n"
    encoded = quoprimime.body_encode(body.decode("latin-1"), 76)
    return [
        f"--{boundary}",
        f'Content-Type: text/{subtype}; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
        "",
        *encoded.split("\n"),
    ]


def _check_unsubscribe_url(url: str) -> None:
    if not url.isascii() or any(c in url for c in "<> \r\n\t"):
        raise ValueError(f"not a URL for List-Unsubscribe: {url[:100]!r}")


def _built_by_email_package(email: OutgoingEmail, date: datetime) -> bytes:
    message = EmailMessage(policy=_POLICY)
    message["Subject"] = render.subject_of(email.items)
    message["From"] = email.sender
    message["To"] = email.to
    message["Date"] = format_datetime(date)
    message["Message-ID"] = _angle_bracketed(email.message_id)
    message["Auto-Submitted"] = "auto-generated"
    if email.unsubscribe_url:
        _check_unsubscribe_url(email.unsubscribe_url)
        message["List-Unsubscribe"] = f"<{email.unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    text = render.email_text(email.items, unsubscribe_url=email.unsubscribe_url)
    html = render.email_html(email.items, unsubscribe_url=email.unsubscribe_url)
    message.set_content(text, charset="utf-8", cte="quoted-printable")
    message.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message.as_bytes(policy=_POLICY)


def _angle_bracketed(message_id: str) -> str:
    return message_id if message_id.startswith("<") else f"<{message_id}>"


def envelope_sender(sender: str) -> str:
    """The address of a ``From`` such as ``Team <team@example.com>`` (``MAIL FROM``)."""
    _, address = parseaddr(sender)
    if "@" not in address:
        raise ValueError(f"not a sender address: {sender[:100]!r}")
    return address


# -- the mailer -------------------------------------------------------------------------


class _Dropped(Exception):
    """A reused connection turned out to be closed; connect again and resend."""


class SmtpMailer:
    """A :class:`~notification_service.senders.base.Mailer` over one reused SMTP
    connection (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 15.0,
        tls_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """``url``: ``KEEL_SMTP_URL`` (ValueError when it is not one);
        ``timeout_seconds``: the longest one SMTP command (or connecting) may take;
        ``tls_context``: for TLS, the system's trusted CAs by default;
        ``local_hostname``: the ``EHLO`` name, this machine's FQDN by default.
        Nothing connects before the first :meth:`send`."""
        self.server = parse_smtp_url(url)
        self._timeout = timeout_seconds
        self._tls_context = tls_context
        self._local_hostname = local_hostname
        self._clock = clock
        self._lock = asyncio.Lock()
        self._connection: aiosmtplib.SMTP | None = None

    async def send(self, email: OutgoingEmail) -> None:
        """Send ``email``; raises :class:`DeliveryFailed` (see the module's docstring)."""
        try:
            sender = envelope_sender(email.sender)
            message = build_message(email, date=self._clock())
        except ValueError as exc:
            raise DeliveryFailed(f"cannot write the email: {exc}", permanent=True) from exc
        async with self._lock:
            try:
                await self._transaction(sender, email.to, message)
            except _Dropped:
                await self._transaction(sender, email.to, message, reconnected=True)

    async def check(self) -> None:
        """Connect, greet, upgrade to TLS and log in as a send would, then ``QUIT``: raises
        ``DeliveryFailed`` saying why the server cannot be used (for ``keel doctor``)."""
        async with self._lock:
            await self._connect()
        await self.close()

    async def close(self) -> None:
        """Say ``QUIT`` and close the connection, if there is one."""
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None and connection.is_connected:
                try:
                    await connection.quit()
                except (aiosmtplib.SMTPException, OSError):
                    connection.close()

    async def _transaction(
        self, sender: str, to: str, message: bytes, *, reconnected: bool = False
    ) -> None:
        reused = self._connection is not None and self._connection.is_connected
        connection = self._connection if reused else await self._connect()
        assert connection is not None
        try:
            await connection.sendmail(sender, [to], message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            raise _refused(refusal.code, refusal.message, f"refused {to}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:  # the server is closing this connection
                self._forget()
            raise _refused(exc.code, exc.message, "refused the email") from exc
        except aiosmtplib.SMTPServerDisconnected as exc:
            self._forget()
            if reused and not reconnected:
                raise _Dropped from exc
            raise DeliveryFailed(f"the SMTP server closed the connection: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._forget()
            raise DeliveryFailed(f"sending failed: {_describe(exc)}") from exc
        except ValueError as exc:  # aiosmtplib refuses an address it cannot send
            raise DeliveryFailed(f"cannot send to {to!r}: {exc}", permanent=True) from exc

    async def _connect(self) -> aiosmtplib.SMTP:
        """A new connection, greeted, upgraded and logged in; it replaces the old one."""
        self._forget()
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        server = self.server
        connection = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            username=server.username,
            password=server.password,
            local_hostname=self._local_hostname,
            timeout=self._timeout,
            use_tls=server.implicit_tls,
            start_tls=server.starttls,
            tls_context=self._tls_context,
        )
        where = f"{server.host}:{server.port}"
        try:
            await connection.connect()
        except aiosmtplib.SMTPResponseException as exc:
            connection.close()
            raise DeliveryFailed(
                f"the SMTP server at {where} answered {exc.code} {exc.message}",
                status_code=exc.code,
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            connection.close()
            raise DeliveryFailed(f"cannot connect to {where}: {_describe(exc)}") from exc
        self._connection = connection
        return connection

    def _forget(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _refused(code: int, reply: str, what: str) -> DeliveryFailed:
    """A refusal of the server: permanent for 5xx, retryable for 4xx."""
    return DeliveryFailed(
        f"the SMTP server {what}: {code} {reply}", permanent=500 <= code < 600, status_code=code
    )


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class SmtpMailerPool:
    """A :class:`~notification_service.senders.base.Mailer` over several
    :class:`SmtpMailer`\\ s: each email goes over one that is free (each connects on its
    first send, and is reused after)."""

    def __init__(self, mailers: list[SmtpMailer]) -> None:
        if not mailers:
            raise ValueError("a pool needs at least one mailer")
        self._mailers = mailers
        self._free: asyncio.Queue[SmtpMailer] = asyncio.Queue()
        for mailer in mailers:
            self._free.put_nowait(mailer)

    async def send(self, email: OutgoingEmail) -> None:
        mailer = await self._free.get()
        try:
            await mailer.send(email)
        finally:
            self._free.put_nowait(mailer)

    async def close(self) -> None:
        for mailer in self._mailers:
            await mailer.close()
