"""How notifications read: subjects, the email's text and HTML, the push payload within
its limit, and the webhook body — checked without a socket."""

from __future__ import annotations

import json

import pytest

from notification_service.senders.render import (
    PUSH_PAYLOAD_LIMIT,
    email_html,
    email_text,
    push_payload,
    subject_of,
    webhook_body,
)
from tests.notification_service.senders.conftest import notification


def test_the_subject_is_the_title_or_how_many_there_are() -> None:
    assert subject_of([notification(1, title="  Ada\n mentioned\tyou ")]) == "Ada mentioned you"
    assert subject_of([notification(n) for n in range(5)]) == "5 new mention notifications"
    mixed = [notification(1), notification(2, category="billing")]
    assert subject_of(mixed) == "2 new notifications"
    with pytest.raises(ValueError):
        subject_of([])


def test_the_text_part_reads_as_plain_text() -> None:
    item = notification(1, body="first paragraph\n\nsecond <one>")
    text = email_text([item], unsubscribe_url="https://x.example/u?token=t")
    assert text == (
        "Ada mentioned you (1)\n\n"
        "first paragraph\n\nsecond <one>\n\n"
        "Open: https://chat.example.com/team/42\n\n"
        "-- \nUnsubscribe from mention emails: https://x.example/u?token=t\n"
    )


def test_the_html_part_escapes_every_text_and_links_only_http_urls() -> None:
    hostile = notification(
        1,
        title='<script>alert("t")</script>',
        body="a & b\n\n<img src=x onerror=1>",
        data={"url": "javascript:alert(1)"},
    )
    html = email_html([hostile], unsubscribe_url='https://x.example/u?token="t"&a=1')
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&quot;t&quot;)&lt;/script&gt;" in html
    assert "<p>a &amp; b</p><p>&lt;img src=x onerror=1&gt;</p>" in html
    assert "javascript:" not in html
    assert 'href="https://x.example/u?token=&quot;t&quot;&amp;a=1"' in html


def test_a_digest_email_lists_each_notification_in_order() -> None:
    items = [notification(n) for n in (1, 2, 3)]
    text = email_text(items)
    positions = [text.index(f"- Ada mentioned you ({n})") for n in (1, 2, 3)]
    assert positions == sorted(positions)
    assert text.startswith("3 new mention notifications\n")
    assert email_html(items).count("<li>") == 3


def test_a_small_push_payload_is_the_whole_notification() -> None:
    item = notification(1)
    payload = json.loads(push_payload([item]))
    assert payload["id"] == item.id and payload["data"] == dict(item.data)
    assert "truncated" not in payload


def test_a_push_payload_never_exceeds_the_limit_and_says_when_it_was_cut() -> None:
    cases = [
        [notification(1, body="x" * 5000)],
        [notification(1, data={"k": "v" * 5000})],
        [notification(1, title="日" * 256, body="本" * 20000)],
        [notification(n, title="t" * 256, body="b" * 3000) for n in range(200)],
    ]
    for items in cases:
        encoded = push_payload(items)
        assert len(encoded) <= PUSH_PAYLOAD_LIMIT
        payload = json.loads(encoded)
        assert payload["truncated"] is True
        if len(items) > 1:
            assert payload["count"] == len(items)
            assert 1 <= len(payload["items"]) < len(items)
            assert payload["items"][0]["id"] == items[0].id
        else:
            assert payload["id"] == items[0].id


def test_a_push_payload_keeps_data_when_cutting_the_body_is_not_needed() -> None:
    item = notification(1, data={"k": "v" * 3000})
    payload = json.loads(push_payload([item]))
    assert payload["data"] == {"k": "v" * 3000}


def test_the_webhook_body_is_compact_utf8_json_stable_for_the_same_items() -> None:
    items = [notification(1, title="Ünïcode")]
    body = webhook_body(items)
    assert body == webhook_body(items)
    assert body.startswith(b'{"type":"notification.created","timestamp":')
    assert "Ünïcode".encode() in body
