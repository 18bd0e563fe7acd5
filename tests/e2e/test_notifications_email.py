"""Notification email end to end: ``keel serve all`` sending to a real SMTP server
(aiosmtpd, in this test's process), and the email's one-click unsubscribe link followed
as a mail client follows it (RFC 8058: a POST of ``List-Unsubscribe=One-Click`` to the
URL in ``List-Unsubscribe``), against the bridge's HTTP port.

What a user relies on: the email has a text and an HTML part with the notification in
both, comes from the configured address, and carries the link; following the link turns
that category's email off for that user and nothing else — the next email of that
category is skipped (and says why), while the user's other categories still arrive.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import grpc
import pytest
from google.protobuf import field_mask_pb2
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.notifications.v1 import notifications_pb2 as pb
from keel.notifications.v1 import notifications_pb2_grpc

from tests.e2e.conftest import KeelProcess, Metadata, client_metadata, embedded_env
from tests.notification_service.senders.conftest import Mailbox, SmtpServer, smtp_server

pytestmark = pytest.mark.e2e

EMAIL = pb.NOTIFICATION_CHANNEL_EMAIL
IN_APP = pb.NOTIFICATION_CHANNEL_IN_APP
#: The longest any wait here takes before the test fails.
WAIT = 20.0


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def smtp(mailbox: Mailbox) -> Iterator[SmtpServer]:
    with smtp_server(mailbox) as server:
        yield server


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {WAIT} s")
        time.sleep(0.02)


def parts(message: EmailMessage) -> dict[str, str]:
    """The text of each leaf part by content type."""
    return {
        part.get_content_type(): str(part.get_content())
        for part in message.walk()
        if not part.is_multipart()
    }


def test_an_email_arrives_with_both_parts_and_its_link_turns_that_category_off(
    keel_env: dict[str, str],
    keel_server: Callable[..., KeelProcess],
    smtp: SmtpServer,
    mailbox: Mailbox,
) -> None:
    env = embedded_env(
        keel_env,
        KEEL_SMTP_URL=f"smtp://127.0.0.1:{smtp.port}",
        KEEL_SMTP_FROM="Forum <notify@forum.example>",
    )
    keel = keel_server("all", env, wait_for_stdout="Keel is running")
    creds = json.loads((keel.data_dir / "demo-tenant.json").read_text())
    metadata = client_metadata(creds["client_id"], creds["client_secret"])

    with grpc.insecure_channel(keel.addr) as channel:
        users = channels_pb2_grpc.ChannelServiceStub(channel)
        users.UpsertUser(
            channels_pb2.UpsertUserRequest(user=channels_pb2.User(id="erin", username="Erin")),
            metadata=metadata,
            timeout=10,
        )
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        stub.UpdatePreferences(
            pb.UpdatePreferencesRequest(
                preferences=pb.Preferences(user_id="erin", email="erin@example.com"),
                update_mask=field_mask_pb2.FieldMask(paths=["email"]),
            ),
            metadata=metadata,
            timeout=10,
        )
        send = sender(stub, metadata)

        send("billing", "Your invoice is ready", "Invoice #7: 12.00 EUR")
        wait_until(lambda: len(mailbox.received) == 1, "the first email")
        received = mailbox.received[0]
        message = received.message
        assert received.rcpt_tos == ["erin@example.com"]
        assert message["From"] == "Forum <notify@forum.example>"
        assert message["Subject"] == "Your invoice is ready"
        assert message.get_content_type() == "multipart/alternative"
        text = parts(message)
        assert set(text) == {"text/plain", "text/html"}
        assert all("Invoice #7: 12.00 EUR" in t for t in text.values()), text
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = str(message["List-Unsubscribe"]).strip("<>")
        assert link.startswith("http://") and "/notifications/unsubscribe?token=" in link

        # The mail client's one-click POST, to the bridge's HTTP port.
        request = urllib.request.Request(
            link,
            data=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
            assert "billing" in answer.read().decode()

        preferences = stub.GetPreferences(
            pb.GetPreferencesRequest(user_id="erin"), metadata=metadata, timeout=10
        ).preferences
        assert [(r.category, r.channel, r.enabled) for r in preferences.rules] == [
            ("billing", EMAIL, False)
        ]

        # billing email is off now; mentions still arrive, and the inbox gets both.
        skipped = send("billing", "Payment received", "Thank you")
        send("mention", "Ana mentioned you", "in #general")
        wait_until(lambda: len(mailbox.received) == 2, "the mention's email")
        assert mailbox.received[1].message["Subject"] == "Ana mentioned you"
        email = next(d for d in skipped.deliveries if d.channel == EMAIL)
        assert email.state == pb.DELIVERY_STATE_SKIPPED and email.error, email
        inbox = stub.ListNotifications(
            pb.ListNotificationsRequest(user_id="erin"), metadata=metadata, timeout=10
        )
        assert [n.title for n in inbox.notifications] == [
            "Ana mentioned you",
            "Payment received",
            "Your invoice is ready",
        ]
    assert len(mailbox.received) == 2


def sender(
    stub: notifications_pb2_grpc.NotificationServiceStub, metadata: Metadata
) -> Callable[[str, str, str], pb.Notification]:
    def send(category: str, title: str, body: str) -> pb.Notification:
        sent = stub.SendNotification(
            pb.SendNotificationRequest(
                user_ids=["erin"],
                category=category,
                title=title,
                body=body,
                channels=[IN_APP, EMAIL],
            ),
            metadata=metadata,
            timeout=10,
        )
        (notification,) = sent.notifications
        return notification

    return send
