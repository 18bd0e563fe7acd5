"""Notification webhooks: a signed JSON POST per notification (or digest).

The body is :func:`~notification_service.senders.render.webhook_body` (the same bytes
on every attempt); the headers and signature are Standard Webhooks', made by
:func:`service_kit.webhook_post.post_signed` with the signer event webhooks use, so a
receiver verifies both kinds with :func:`keel.webhooks.verify` (or any Standard
Webhooks library).

Answers: 2xx → the status; 410 → a permanent :class:`DeliveryFailed` (the receiver
says the endpoint is gone); anything else, and no answer at all (the outbound guard's
refusal included, as for event webhooks) → a :class:`DeliveryFailed` to retry.
"""

from __future__ import annotations

from collections.abc import Sequence

from keel.webhooks import WebhookVerificationError

from notification_service.senders import render
from notification_service.senders.base import DeliveryFailed, NotificationContent
from service_kit.outbound import OutboundError, OutboundHttp
from service_kit.webhook_post import post_signed


class HttpWebhookSender:
    """A :class:`~notification_service.senders.base.WebhookSender` posting through
    ``http``, which it does not own (nor close)."""

    def __init__(self, http: OutboundHttp) -> None:
        self._http = http

    async def post(
        self,
        url: str,
        secret: str,
        message_id: str,
        items: Sequence[NotificationContent],
    ) -> int:
        """POST ``items`` to ``url`` signed with ``secret`` (``whsec_…``) as
        ``webhook-id: message_id``; the 2xx status. Raises :class:`DeliveryFailed`."""
        if not secret:
            raise DeliveryFailed("the webhook has no signing secret", permanent=True)
        body = render.webhook_body(items)
        try:
            response = await post_signed(
                self._http, url, secrets=[secret], message_id=message_id, body=body
            )
        except WebhookVerificationError as exc:
            raise DeliveryFailed(f"bad webhook secret: {exc}", permanent=True) from exc
        except OutboundError as exc:
            raise DeliveryFailed(f"webhook unreachable: {exc.message}") from exc
        status = response.status
        if 200 <= status < 300:
            return status
        if status == 410:
            raise DeliveryFailed(
                "the endpoint answered 410 Gone", permanent=True, status_code=status
            )
        raise DeliveryFailed(f"the endpoint answered HTTP {status}", status_code=status)
