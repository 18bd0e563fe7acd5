"""What the delivery jobs hand to a sender, and how a sender says it failed.

The job handlers (``notification_service/deliveries.py``) build these values from the
stored notification and call one sender per channel: :class:`Mailer` (SMTP),
:class:`PushSender` (Web Push) and :class:`WebhookSender` (signed HTTP POST). The senders
know nothing of the database; the handlers know nothing of SMTP or HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class DeliveryFailed(Exception):
    """An attempt did not deliver. ``permanent``: retrying cannot help (a refused
    address, a malformed subscription); ``status_code``: the HTTP status or SMTP reply
    code of the answer, 0 when there was none."""

    def __init__(self, message: str, *, permanent: bool = False, status_code: int = 0) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status_code = status_code


class SubscriptionGone(DeliveryFailed):
    """The push service answered 404 or 410: the subscription no longer exists and must be
    removed."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message, permanent=True, status_code=status_code)


@dataclass(frozen=True, slots=True)
class NotificationContent:
    """One notification as a sender renders it."""

    id: str
    user_id: str
    category: str
    title: str
    body: str
    data: Mapping[str, Any]
    create_time: datetime
    channel_id: str = ""


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """One email: a single notification, or a digest of several (``items``)."""

    to: str
    sender: str
    items: Sequence[NotificationContent]
    #: Stable across retries (``<id@keel>``), so a receiver can drop duplicates.
    message_id: str
    #: The RFC 8058 one-click link for this user and category; empty: none.
    unsubscribe_url: str = ""


@dataclass(frozen=True, slots=True)
class PushTarget:
    """One browser's subscription: ``endpoint``, ``p256dh`` and ``auth`` as the browser
    gave them (base64url)."""

    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True, slots=True)
class VapidKeys:
    """A tenant's VAPID key pair: the private key as PEM (PKCS#8), the public key as the
    uncompressed P-256 point in base64url (what browsers get as ``applicationServerKey``)."""

    private_pem: str
    public_key: str
    #: The JWT's ``sub``: ``mailto:`` or ``https:`` contact of the operator.
    subject: str = field(default="mailto:keel@localhost")


class Mailer(Protocol):
    """Sends emails over one reused SMTP connection (reconnecting when it drops)."""

    async def send(self, email: OutgoingEmail) -> None: ...

    async def close(self) -> None: ...


class PushSender(Protocol):
    """Encrypts (RFC 8291, aes128gcm) and posts one Web Push message with a VAPID
    (RFC 8292) authorization; returns the push service's HTTP status (2xx). Raises
    :class:`SubscriptionGone` on 404/410, :class:`DeliveryFailed` otherwise."""

    async def send(
        self,
        target: PushTarget,
        items: Sequence[NotificationContent],
        vapid: VapidKeys,
        *,
        ttl_seconds: int = 86400,
    ) -> int: ...


class WebhookSender(Protocol):
    """POSTs notifications as JSON, signed by the Standard Webhooks scheme (the signer of
    ``keel.webhooks``, the one event webhooks use) with ``webhook-id: message_id``;
    returns the HTTP status (2xx), raises :class:`DeliveryFailed` otherwise."""

    async def post(
        self,
        url: str,
        secret: str,
        message_id: str,
        items: Sequence[NotificationContent],
    ) -> int: ...
