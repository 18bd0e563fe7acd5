"""Posting one signed webhook: Standard Webhooks headers, through the outbound guard.

Event webhooks (the gateway's dispatcher) and notification webhooks (the notification
service) are both JSON POSTs to a URL a tenant chose, signed with the one signer of
:mod:`keel.webhooks`. This is that POST, written once:

- ``webhook-id``: the message id, the same on every attempt (receivers drop
  duplicates by it);
- ``webhook-timestamp``: when this attempt was signed, in seconds since the epoch;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of ``"{id}.{timestamp}.{body}"``,
  one per secret (two while a secret is being rotated).

What an answer means (retry, give up, disable) is the caller's to decide.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from keel.webhooks import sign

from service_kit.outbound import OutboundHttp, OutboundResponse


def signed_headers(
    secrets: Sequence[str], message_id: str, body: bytes, *, timestamp: int
) -> dict[str, str]:
    """The headers of a signed JSON webhook. Raises
    :class:`keel.webhooks.WebhookVerificationError` when a secret is not
    ``whsec_<base64>``."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, message_id, timestamp, body),
    }


async def post_signed(
    http: OutboundHttp,
    url: str,
    *,
    secrets: Sequence[str],
    message_id: str,
    body: bytes,
    timestamp: int | None = None,
) -> OutboundResponse:
    """POST ``body`` to ``url`` signed with ``secrets``, signed now unless ``timestamp``
    is given; the answer whatever its status. Raises
    :class:`service_kit.outbound.OutboundError` when there is no answer."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    headers = signed_headers(secrets, message_id, body, timestamp=signed_at)
    return await http.post(url, body=body, headers=headers)
