"""How notifications read in an email, a Web Push message and a webhook body.

Pure functions, no I/O: the senders call them and tests check their output without a
socket. One notification is rendered as itself; several (a digest) as one message that
says how many there are and lists them.

The JSON shape of one notification (:func:`notification_document`) is the same in
push messages and webhook bodies::

    {"id": "…", "user_id": "…", "category": "mention", "title": "…", "body": "…",
     "data": {…}, "create_time": "2026-11-30T10:07:38.123456Z", "channel_id": ""}

A Web Push message must fit in 4096 bytes once encrypted, so :func:`push_payload`
drops ``data``, then shortens bodies, then (for a digest) leaves out the last items
until it fits, and says so with ``"truncated": true``; the full notification is in the
user's inbox under its ``id``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, Final

from notification_service.senders.base import NotificationContent
from service_kit.clock import rfc3339

#: The largest push payload before encryption: 4096 bytes (what push services accept)
#: minus the aes128gcm header (86 bytes: salt, record size, the sender's public key),
#: the padding delimiter (1) and the AEAD tag (16) of its one record (RFC 8291).
PUSH_PAYLOAD_LIMIT: Final = 4096 - 86 - 1 - 16

# How far push_payload shortens bodies, step by step, before it leaves items out.
_BODY_STEPS: Final = (1000, 140, 0)

# -- words ------------------------------------------------------------------------------


def subject_of(items: Sequence[NotificationContent]) -> str:
    """One line saying what ``items`` are: the title of a single notification, or
    ``"5 new mention notifications"`` for a digest (without the category when the
    items are of several)."""
    _require(items)
    if len(items) == 1:
        return _one_line(items[0].title)
    categories = {item.category for item in items}
    kind = f"{categories.pop()} " if len(categories) == 1 else ""
    return _one_line(f"{len(items)} new {kind}notifications")


def link_of(item: NotificationContent) -> str:
    """The notification's ``data.url`` when it is an http(s) URL (emails show it as a
    link), else ``""``."""
    url = item.data.get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return url
    return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _require(items: Sequence[NotificationContent]) -> None:
    if not items:
        raise ValueError("nothing to render: no notifications")


# -- email ------------------------------------------------------------------------------


def email_text(items: Sequence[NotificationContent], *, unsubscribe_url: str = "") -> str:
    """The text/plain part of an email of ``items``."""
    _require(items)
    if len(items) == 1:
        item = items[0]
        parts = [_one_line(item.title), item.body]
        if link := link_of(item):
            parts.append(f"Open: {link}")
    else:
        parts = [subject_of(items)]
        parts.extend(_text_entry(item) for item in items)
    if unsubscribe_url:
        parts.append(f"-- \n{_unsubscribe_words(items)}: {unsubscribe_url}")
    return "\n\n".join(part for part in parts if part) + "\n"


def _text_entry(item: NotificationContent) -> str:
    lines = [f"- {_one_line(item.title)}"]
    lines.extend(f"  {line}" if line else "" for line in item.body.splitlines())
    if link := link_of(item):
        lines.append(f"  {link}")
    return "\n".join(lines)


def email_html(items: Sequence[NotificationContent], *, unsubscribe_url: str = "") -> str:
    """The text/html part of an email of ``items``; every text is escaped."""
    _require(items)
    if len(items) == 1:
        content = _html_entry(items[0], heading="h1")
    else:
        entries = "".join(f"<li>{_html_entry(item, heading='h2')}</li>" for item in items)
        content = f"<h1>{_escape(subject_of(items))}</h1><ul>{entries}</ul>"
    footer = ""
    if unsubscribe_url:
        footer = (
            '<hr><p style="font-size:small;color:#666">'
            f'<a href="{_escape(unsubscribe_url)}">{_escape(_unsubscribe_words(items))}</a></p>'
        )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{_escape(subject_of(items))}</title></head>"
        f'<body style="font-family:sans-serif">{content}{footer}</body></html>\n'
    )


def _html_entry(item: NotificationContent, *, heading: str) -> str:
    paragraphs = "".join(
        f"<p>{_escape(paragraph).replace(chr(10), '<br>')}</p>"
        for paragraph in item.body.split("\n\n")
        if paragraph.strip()
    )
    link = link_of(item)
    opener = f'<p><a href="{_escape(link)}">Open</a></p>' if link else ""
    return f"<{heading}>{_escape(_one_line(item.title))}</{heading}>{paragraphs}{opener}"


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


def _unsubscribe_words(items: Sequence[NotificationContent]) -> str:
    categories = {item.category for item in items}
    kind = f"{categories.pop()} " if len(categories) == 1 else ""
    return f"Unsubscribe from {kind}emails"


# -- JSON: push and webhooks ------------------------------------------------------------


def notification_document(item: NotificationContent) -> dict[str, Any]:
    """One notification as JSON carries it (push messages, webhook bodies)."""
    return {
        "id": item.id,
        "user_id": item.user_id,
        "category": item.category,
        "title": item.title,
        "body": item.body,
        "data": dict(item.data),
        "create_time": rfc3339(item.create_time),
        "channel_id": item.channel_id,
    }


def push_payload(items: Sequence[NotificationContent], *, limit: int = PUSH_PAYLOAD_LIMIT) -> bytes:
    """The JSON a service worker receives in its ``push`` event, at most ``limit`` bytes.

    One notification: :func:`notification_document`. A digest::

        {"digest": true, "count": 5, "category": "mention",
         "title": "5 new mention notifications", "items": [<document>, …]}

    When the whole does not fit, ``data`` is left out, then bodies are shortened, then
    (a digest) the last items are left out, and ``"truncated": true`` is added;
    ``count`` always says how many there were.
    """
    _require(items)
    documents = [notification_document(item) for item in items]
    encoded = _push_json(items, documents)
    if len(encoded) <= limit:
        return encoded
    # Too large: without data, then with shorter and shorter bodies …
    for document in documents:
        document["data"] = {}
    for chars in (None, *_BODY_STEPS):
        if chars is not None:
            for document in documents:
                document["body"] = _shortened(document["body"], chars)
        encoded = _push_json(items, documents, truncated=True)
        if len(encoded) <= limit:
            return encoded
    # … then, for a digest, with fewer items.
    kept = list(documents)
    while len(kept) > 1:
        kept.pop()
        encoded = _push_json(items, kept, truncated=True)
        if len(encoded) <= limit:
            return encoded
    raise ValueError(f"a push message cannot be made to fit in {limit} bytes")


def _push_json(
    items: Sequence[NotificationContent],
    documents: Sequence[dict[str, Any]],
    *,
    truncated: bool = False,
) -> bytes:
    marker = {"truncated": True} if truncated else {}
    if len(items) == 1:
        document: dict[str, Any] = {**documents[0], **marker}
    else:
        categories = {item.category for item in items}
        document = {
            "digest": True,
            "count": len(items),
            "category": categories.pop() if len(categories) == 1 else "",
            "title": subject_of(items),
            "items": list(documents),
            **marker,
        }
    return _json(document)


def _shortened(body: str, chars: int) -> str:
    return body if len(body) <= chars else body[:chars].rstrip() + "…"


def webhook_body(items: Sequence[NotificationContent]) -> bytes:
    """The body of a notification webhook, the same bytes on every attempt.

    One notification: ``{"type": "notification.created", "timestamp": <its
    create_time>, "data": <document>}``. A digest: ``{"type": "notification.digest",
    "timestamp": <the newest create_time>, "data": {"user_id", "category", "count",
    "notifications": [<document>, …]}}``.
    """
    _require(items)
    timestamp = rfc3339(max(item.create_time for item in items))
    if len(items) == 1:
        return _json(
            {
                "type": "notification.created",
                "timestamp": timestamp,
                "data": notification_document(items[0]),
            }
        )
    categories = {item.category for item in items}
    return _json(
        {
            "type": "notification.digest",
            "timestamp": timestamp,
            "data": {
                "user_id": items[0].user_id,
                "category": categories.pop() if len(categories) == 1 else "",
                "count": len(items),
                "notifications": [notification_document(item) for item in items],
            },
        }
    )


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
