"""The bus payload of a chat event: what ``encode`` writes, ``decode`` reads back."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway_bridge.gateway.outbox import ChatEvent
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
