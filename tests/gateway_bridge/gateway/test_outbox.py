"""The bus payload of chat events: what ``encode`` and ``encode_events`` write,
``decode`` and ``decode_events`` read back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway_bridge.gateway.outbox import ChatEvent, decode_events, encode_events
from service_kit.validation import new_id


def event(seq: int, text: str) -> ChatEvent:
    return ChatEvent.of(
        cursor=seq,
        event_id=new_id(),
        tenant_id=new_id(),
        channel_id=new_id(),
        seq=seq,
        name="message:created",
        data={"message": {"content": text}},
        created_at=datetime(2026, 12, 1, 1, 2, 3, 456789, tzinfo=UTC),
    )


def test_decode_reads_back_what_encode_wrote() -> None:
    sent = event(7, "héllo\nworld")
    assert ChatEvent.decode(sent.encode()) == sent


def test_each_payload_decodes_to_its_own_event_even_when_decoded_again() -> None:
    """Handlers of one bus message share a decode; another payload, even an equal one
    arriving later, is never answered with an earlier payload's event."""
    first, second = event(1, "one"), event(2, "two")
    p1, p2 = first.encode(), second.encode()
    assert ChatEvent.decode(p1) == first
    assert ChatEvent.decode(p1) is ChatEvent.decode(p1)  # the second handler's is free
    assert ChatEvent.decode(p2) == second
    assert ChatEvent.decode(p1) == first
    again = bytes(bytearray(p2))  # equal bytes, another object
    assert ChatEvent.decode(again) == second


def test_events_published_together_decode_in_their_order() -> None:
    together = [event(1, "one\nline"), event(2, ""), event(3, "three")]
    payload = encode_events(together)
    assert decode_events(payload) == tuple(together)
    assert decode_events(payload) is decode_events(payload)  # the second handler's is free
    assert decode_events(together[0].encode()) == (together[0],)  # one event alone


def test_decode_refuses_a_payload_of_several_events() -> None:
    with pytest.raises(ValueError):
        ChatEvent.decode(encode_events([event(1, "one"), event(2, "two")]))
