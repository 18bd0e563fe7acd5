"""Signed download URLs of the files attached to messages, made as a message leaves the
gateway.

A message stores its attachments' metadata, never URLs: a URL expires. Each time the
gateway hands a message out — an answer to a caller (:mod:`.convert`), an event or a
replay on a bridge's Connect stream (:mod:`.routes`) — it signs a URL for each
attachment (and its thumbnail, if it has one), valid for
``KEEL_ATTACHMENT_URL_TTL_SECONDS``. It signs once per message handed out, with one
expiry for all of the message's files; the bridge fans the same signed text out to every
subscriber, so nothing is signed per recipient.

The URLs are the file service's own download URLs (:mod:`service_kit.file_links`),
served by its HTTP endpoints at the base URL the process is given: whoever holds one may
download that file until it expires, which is what a channel's members need to show an
attachment. The event log keeps the metadata only, so webhooks and ``SubscribeEvents``
carry no URLs (a backend asks the file service for one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final

from gateway_bridge.gateway.channels.drafts import attachment_of
from gateway_bridge.gateway.channels.models import Attachment
from gateway_bridge.gateway.outbox import encode_data
from service_kit.clock import Clock, rfc3339, utcnow
from service_kit.file_links import signed_download_url

#: Only event data holding this text can carry attachments (JSON escapes every quote
#: inside a string, so message content cannot fake it); other events pass untouched.
_HAS_ATTACHMENTS: Final = '"attachments":[{'


@dataclass(frozen=True, slots=True)
class SignedAttachment:
    """An attachment with its download URLs; ``thumbnail_url`` is empty without a
    thumbnail."""

    attachment: Attachment
    url: str
    thumbnail_url: str
    expire_time: datetime


class AttachmentLinks:
    """Signs the download URLs of attachments with ``secret`` (``KEEL_TOKEN_SECRET``),
    under the base URL ``base_url()`` answers (read at each signing: in ``keel serve all``
    the file endpoints' port is known only once they listen), valid for ``ttl``."""

    def __init__(
        self,
        secret: str,
        *,
        base_url: Callable[[], str],
        ttl: timedelta,
        clock: Clock = utcnow,
    ) -> None:
        if not secret:
            raise ValueError("attachment URLs need a signing secret")
        self._secret = secret
        self._base_url = base_url
        self._ttl = ttl
        self._clock = clock

    def sign(self, tenant_id: str, attachments: Sequence[Attachment]) -> list[SignedAttachment]:
        """The tenant's ``attachments`` (of one message) with URLs expiring together."""
        if not attachments:
            return []
        base = self._base_url()
        expires_at = (self._clock() + self._ttl).replace(microsecond=0)
        signed = []
        for attachment in attachments:
            url_of = partial(
                signed_download_url,
                self._secret,
                base,
                tenant_id,
                attachment.file_id,
                attachment.filename,
                expires_at=expires_at,
            )
            url = url_of(variant="file")
            thumbnail_url = url_of(variant="thumbnail") if attachment.thumbnail_width else ""
            signed.append(SignedAttachment(attachment, url, thumbnail_url, expires_at))
        return signed

    def sign_event_data(self, tenant_id: str, data_json: str) -> str:
        """Event data (JSON text) whose message's attachments carry signed ``url``,
        ``thumbnail_url`` and ``url_expire_time``; other data comes back as it is."""
        if _HAS_ATTACHMENTS not in data_json:
            return data_json
        data = json.loads(data_json)
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict) or not message.get("attachments"):
            return data_json
        documents = message["attachments"]
        signed = self.sign(tenant_id, [attachment_of(d) for d in documents])
        message["attachments"] = [
            document | signed_fields(link) for document, link in zip(documents, signed, strict=True)
        ]
        return encode_data(data)


def signed_fields(link: SignedAttachment) -> dict[str, Any]:
    """The URL fields of an attachment in JSON (the names of ``keel.channels.v1.Attachment``)."""
    return {
        "url": link.url,
        "thumbnail_url": link.thumbnail_url,
        "url_expire_time": rfc3339(link.expire_time),
    }
