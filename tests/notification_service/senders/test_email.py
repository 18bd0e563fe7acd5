"""Email: reading KEEL_SMTP_URL, the message's bytes, and SmtpMailer against a real SMTP
server (aiosmtpd on 127.0.0.1): plain, STARTTLS with login, implicit TLS; one reused
connection; a dropped connection replaced; refusals told apart (5xx permanent, 4xx
retryable)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from notification_service.senders.base import DeliveryFailed, OutgoingEmail
from notification_service.senders.email import SmtpMailer, SmtpMailerPool, build_message
from notification_service.senders.unsubscribe import make_token, read_token, unsubscribe_url
from service_kit.config import SmtpServer, parse_smtp_url
from tests.conftest import free_port
from tests.notification_service.senders.conftest import T0, Mailbox, Tls, notification, smtp_server

SECRET = "unsubscribe-test-secret-0123456789abcdef"


def an_email(*items: Any, **changes: Any) -> OutgoingEmail:
    items = items or (notification(),)
    token = make_token(SECRET, "tenant-1", "u-1", "mention")
    values: dict[str, Any] = {
        "to": "ada@example.com",
        "sender": "Team <team@example.com>",
        "items": items,
        "message_id": f"<{items[0].id}.email@keel>",
        "unsubscribe_url": unsubscribe_url("https://chat.example.com", token),
    }
    values.update(changes)
    return OutgoingEmail(**values)


def parse(raw: bytes) -> EmailMessage:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts_of(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


@pytest.fixture
async def mailer_for() -> AsyncIterator[Any]:
    """Makes mailers and closes them at the end of the test."""
    made: list[SmtpMailer] = []

    def make(url: str, **options: Any) -> SmtpMailer:
        options.setdefault("local_hostname", "keel.test")
        options.setdefault("timeout_seconds", 10.0)
        mailer = SmtpMailer(url, **options)
        made.append(mailer)
        return mailer

    yield make
    for mailer in made:
        await mailer.close()


# -- KEEL_SMTP_URL ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", SmtpServer("mail.example.com", 25)),
        ("smtp://mail.example.com:2525", SmtpServer("mail.example.com", 2525)),
        (
            "smtp://ada:s3cret@mail.example.com?starttls=1",
            SmtpServer("mail.example.com", 587, starttls=True, username="ada", password="s3cret"),
        ),
        (
            "smtps://ada%40example.com:p%40ss%3Aw%2Frd@mail.example.com",
            SmtpServer(
                "mail.example.com",
                465,
                implicit_tls=True,
                username="ada@example.com",
                password="p@ss:w/rd",
            ),
        ),
        ("smtp://mail.example.com:25?starttls=0", SmtpServer("mail.example.com", 25)),
    ],
)
def test_the_smtp_url_names_server_port_tls_and_login(url: str, expected: SmtpServer) -> None:
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://mail.example.com", "expected smtp://"),
        ("smtp://", "expected smtp://"),
        ("smtp://mail.example.com:99999", "bad port"),
        ("smtp://mail.example.com?tls=1", "unknown parameter 'tls'"),
        ("smtp://mail.example.com?starttls=maybe", "expected 1 or 0"),
        ("smtps://mail.example.com?starttls=1", "smtps:// is TLS from the start"),
    ],
)
def test_a_bad_smtp_url_is_refused_saying_why(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_smtp_url(url)


def test_the_password_is_not_in_the_servers_repr() -> None:
    assert "s3cret" not in repr(parse_smtp_url("smtp://ada:s3cret@mail.example.com"))


# -- the message ------------------------------------------------------------------------


def test_an_email_has_text_and_html_parts_and_the_headers_receivers_rely_on() -> None:
    email = an_email(notification(title="Ada <b>mentioned</b> you", body="1 < 2 & 3"))
    raw = build_message(email, date=T0)

    parsed = parse(raw)
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed["Message-ID"] == email.message_id
    assert parsed["From"] == "Team <team@example.com>"
    assert parsed["To"] == "ada@example.com"
    assert parsed["Date"] == "Mon, 30 Nov 2026 10:07:38 +0000"
    assert parsed["Subject"] == "Ada <b>mentioned</b> you"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # written literally, on one line, never RFC 2047-encoded or folded
    line = f"List-Unsubscribe: <{email.unsubscribe_url}>\r\n".encode()
    assert line in raw
    text, html = parts_of(parsed)
    assert "1 < 2 & 3" in text
    assert "Ada &lt;b&gt;mentioned&lt;/b&gt; you" in html and "<b>" not in html
    assert "1 &lt; 2 &amp; 3" in html
    assert 'href="https://chat.example.com/team/42"' in html
    assert email.unsubscribe_url in text
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_a_subject_in_any_script_survives_encoding_word_for_word() -> None:
    title = "Ünïcödé réponse — 日本語のタイトル and many more words " * 4
    raw = build_message(an_email(notification(title=title.strip())), date=T0)
    assert parse(raw)["Subject"] == " ".join(title.split())
    assert raw.isascii()


def test_a_digest_says_how_many_and_lists_every_notification() -> None:
    items = [notification(n) for n in (1, 2, 3)]
    raw = build_message(an_email(*items), date=T0)
    parsed = parse(raw)
    assert parsed["Subject"] == "3 new mention notifications"
    text, html = parts_of(parsed)
    for item in items:
        assert item.title in text
        assert item.body in text
        assert f"<h2>{item.title}</h2>" in html


@pytest.mark.parametrize(
    "sender",
    [
        "Team <team@example.com>",
        "team@example.com",
        "Équipe Nord <team@example.com>",
        '"Ops, Inc." <ops@example.com>',
    ],
)
def test_any_sender_reads_back_as_given_with_both_parts(sender: str) -> None:
    """Plain addresses are written directly, others (a display name to encode or quote)
    by the email package: either way a reader gets the same headers and parts."""
    item = notification(title="Réunion à dix heures", body="line one\nline two " + "é" * 200)
    raw = build_message(an_email(item, sender=sender), date=T0)
    assert raw.isascii() and all(len(line) <= 998 for line in raw.split(b"\r\n"))
    parsed = parse(raw)
    assert parsed["From"] == sender and parsed["To"] == "ada@example.com"
    assert parsed["Subject"] == "Réunion à dix heures"
    assert parsed["Date"] == "Mon, 30 Nov 2026 10:07:38 +0000"
    assert parsed.get_content_type() == "multipart/alternative"
    text, html = parts_of(parsed)
    assert "line one\r\nline two " + "é" * 200 + "\r\n" in text
    assert "Réunion à dix heures" in html


@pytest.mark.parametrize("field", ["to", "sender"])
def test_an_address_with_a_line_break_is_refused(field: str) -> None:
    with pytest.raises(ValueError):
        build_message(an_email(**{field: "ada@example.com\r\nBcc: eve@example.com"}), date=T0)


def test_an_email_without_unsubscribe_link_has_no_list_unsubscribe() -> None:
    parsed = parse(build_message(an_email(unsubscribe_url=""), date=T0))
    assert parsed["List-Unsubscribe"] is None
    assert parsed["List-Unsubscribe-Post"] is None


def test_a_title_with_line_breaks_cannot_add_headers() -> None:
    raw = build_message(an_email(notification(title="hi\r\nBcc: eve@example.com")), date=T0)
    parsed = parse(raw)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "hi Bcc: eve@example.com"


# -- sending ----------------------------------------------------------------------------


async def test_emails_arrive_over_one_reused_connection(mailer_for: Any) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        mailer = mailer_for(f"smtp://127.0.0.1:{server.port}")
        emails = [an_email(notification(n)) for n in range(5)]
        for email in emails:
            await mailer.send(email)

    assert [r.message["Message-ID"] for r in mailbox.received] == [e.message_id for e in emails]
    assert mailbox.sessions() == 1
    first = mailbox.received[0]
    assert first.mail_from == "team@example.com"
    assert first.rcpt_tos == ["ada@example.com"]
    text, html = parts_of(first.message)
    assert emails[0].items[0].body in text and emails[0].items[0].title in html


async def test_a_pool_sends_concurrent_emails_over_its_few_reused_connections(
    mailer_for: Any,
) -> None:
    """The notification service's mailer: concurrent emails go over at most as many
    connections as the pool has, each reused, and every email arrives once."""
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        pool = SmtpMailerPool([mailer_for(f"smtp://127.0.0.1:{server.port}") for _ in range(2)])
        emails = [an_email(notification(n)) for n in range(12)]
        await asyncio.gather(*(pool.send(email) for email in emails))
        await asyncio.gather(*(pool.send(email) for email in emails[:4]))

    received = [r.message["Message-ID"] for r in mailbox.received]
    assert sorted(received) == sorted(
        [e.message_id for e in emails] + [e.message_id for e in emails[:4]]
    )
    assert mailbox.sessions() == 2


async def test_the_unsubscribe_link_of_a_received_email_carries_a_valid_token(
    mailer_for: Any,
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        await mailer_for(f"smtp://127.0.0.1:{server.port}").send(an_email())

    header = mailbox.received[0].message["List-Unsubscribe"]
    url = re.fullmatch(r"<(.+)>", str(header))
    assert url is not None
    parts = urlsplit(url.group(1))
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "chat.example.com",
        "/notifications/unsubscribe",
    )
    claim = read_token([SECRET], parse_qs(parts.query)["token"][0])
    assert (claim.tenant_id, claim.user_id, claim.category) == ("tenant-1", "u-1", "mention")


async def test_a_connection_the_server_dropped_is_replaced_and_the_email_sent_once(
    mailer_for: Any,
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        mailer = mailer_for(f"smtp://127.0.0.1:{server.port}")
        await mailer.send(an_email(notification(1)))
        # Closed while the mailer is not looking (this test's loop is blocked meanwhile):
        # the mailer learns of it only when it uses the connection.
        server.drop_connections()
        await mailer.send(an_email(notification(2)))
        await mailer.send(an_email(notification(3)))

    assert [r.message["Subject"] for r in mailbox.received] == [
        f"Ada mentioned you ({n})" for n in (1, 2, 3)
    ]
    assert mailbox.sessions() == 2


async def test_a_5xx_refusal_is_permanent_and_the_connection_stays_usable(
    mailer_for: Any,
) -> None:
    mailbox = Mailbox(refusals={"gone@example.com": "550 5.1.1 no such user"})
    with smtp_server(mailbox) as server:
        mailer = mailer_for(f"smtp://127.0.0.1:{server.port}")
        with pytest.raises(DeliveryFailed) as failed:
            await mailer.send(an_email(to="gone@example.com"))
        await mailer.send(an_email())

    assert failed.value.permanent
    assert failed.value.status_code == 550
    assert "no such user" in str(failed.value)
    assert len(mailbox.received) == 1 and mailbox.sessions() == 1


async def test_a_4xx_refusal_is_retryable(mailer_for: Any) -> None:
    mailbox = Mailbox(refusals={"full@example.com": "452 4.2.2 mailbox full"})
    with smtp_server(mailbox) as server:
        mailer = mailer_for(f"smtp://127.0.0.1:{server.port}")
        with pytest.raises(DeliveryFailed) as failed:
            await mailer.send(an_email(to="full@example.com"))

    assert not failed.value.permanent
    assert failed.value.status_code == 452
    assert mailbox.received == []


async def test_a_421_closing_answer_is_retryable_and_the_next_email_reconnects(
    mailer_for: Any,
) -> None:
    class Closing(Mailbox):
        closed_once = False

        async def handle_MAIL(
            self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
        ) -> str:
            if not self.closed_once:
                self.closed_once = True
                return "421 4.3.2 shutting down"
            envelope.mail_from = address
            return "250 OK"

    mailbox = Closing()
    with smtp_server(mailbox) as server:
        mailer = mailer_for(f"smtp://127.0.0.1:{server.port}")
        with pytest.raises(DeliveryFailed) as failed:
            await mailer.send(an_email(notification(1)))
        await mailer.send(an_email(notification(2)))

    assert (failed.value.permanent, failed.value.status_code) == (False, 421)
    assert [r.message["Subject"] for r in mailbox.received] == ["Ada mentioned you (2)"]


async def test_no_server_listening_is_a_retryable_failure(mailer_for: Any) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        mailer = mailer_for(f"smtp://127.0.0.1:{port}")
        with pytest.raises(DeliveryFailed) as failed:
            await mailer.send(an_email())

    assert not failed.value.permanent
    assert failed.value.status_code == 0
    assert f"127.0.0.1:{port}" in str(failed.value)


async def test_an_unsendable_address_is_a_permanent_failure(mailer_for: Any) -> None:
    mailer = mailer_for(f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(DeliveryFailed) as failed:
        await mailer.send(an_email(to="ada@example.com\r\nRCPT TO:<eve@example.com>"))
    assert failed.value.permanent


# -- TLS and login ----------------------------------------------------------------------


class Logins:
    """An aiosmtpd authenticator accepting one user name and password."""

    def __init__(self, username: str, password: str) -> None:
        self.expected = LoginPassword(username.encode(), password.encode())
        self.tried: list[LoginPassword] = []

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.tried.append(data)
        return AuthResult(success=data == self.expected, handled=False, auth_data=data)


async def test_starttls_and_login_with_percent_encoded_credentials(
    tls: Tls, mailer_for: Any
) -> None:
    logins = Logins("ada@example.com", "p@ss:w/rd")
    mailbox = Mailbox()
    with smtp_server(
        mailbox, tls_context=tls.server, require_starttls=True, authenticator=logins
    ) as server:
        mailer = mailer_for(
            f"smtp://ada%40example.com:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}?starttls=1",
            tls_context=tls.client,
        )
        await mailer.send(an_email(notification(1)))
        await mailer.send(an_email(notification(2)))

    assert len(mailbox.received) == 2 and mailbox.sessions() == 1
    session = mailbox.received[0].session
    assert session.ssl is not None
    assert session.authenticated
    assert logins.tried == [logins.expected]


async def test_a_wrong_password_is_a_retryable_failure_naming_the_answer(
    tls: Tls, mailer_for: Any
) -> None:
    mailbox = Mailbox()
    with smtp_server(
        mailbox,
        tls_context=tls.server,
        require_starttls=True,
        authenticator=Logins("ada", "right"),
    ) as server:
        mailer = mailer_for(
            f"smtp://ada:wrong@127.0.0.1:{server.port}?starttls=1", tls_context=tls.client
        )
        with pytest.raises(DeliveryFailed) as failed:
            await mailer.send(an_email())

    # The settings are wrong, not this email: once they are fixed, a retry succeeds.
    assert (failed.value.permanent, failed.value.status_code) == (False, 535)
    assert mailbox.received == []


async def test_a_server_certificate_from_an_unknown_ca_is_refused(
    tls: Tls, mailer_for: Any
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox, tls_context=tls.server, require_starttls=True) as server:
        mailer = mailer_for(f"smtp://127.0.0.1:{server.port}?starttls=1")  # system CAs
        with pytest.raises(DeliveryFailed) as failed:
            await mailer.send(an_email())

    assert not failed.value.permanent
    assert "certificate" in str(failed.value).lower()
    assert mailbox.received == []


async def test_smtps_speaks_tls_from_the_first_byte(tls: Tls, mailer_for: Any) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox, ssl_context=tls.server) as server:
        mailer = mailer_for(f"smtps://127.0.0.1:{server.port}", tls_context=tls.client)
        email = an_email()
        await mailer.send(email)

    assert [r.message["Message-ID"] for r in mailbox.received] == [email.message_id]


async def test_close_ends_the_session_and_a_later_send_opens_another(mailer_for: Any) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        mailer = mailer_for(f"smtp://127.0.0.1:{server.port}")
        await mailer.send(an_email(notification(1)))
        await mailer.close()
        await mailer.send(an_email(notification(2)))

    assert len(mailbox.received) == 2 and mailbox.sessions() == 2
