"""The chat outbox: events recorded with each change, and how they travel.

Every mutation of a channel records an event row in the same transaction as
the change (a transactional outbox). After commit the gateway publishes it on
the bus topic :data:`~gateway_bridge.vocabulary.CHAT_EVENTS_TOPIC`;
:class:`~gateway_bridge.gateway.relay.EventRelay` also drains rows a crash left
unpublished, so none is lost. The channel service records events
(:mod:`~gateway_bridge.gateway.channels.drafts` says what each carries); the event
service reads them back for webhooks and subscriptions. An event's JSON is encoded
once, when it is recorded, and every consumer passes the same text along; events
committed together travel as one bus payload (:func:`encode_events`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service_kit.clock import rfc3339
from service_kit.db import as_utc


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event about to be recorded: the store adds its id, cursor and time."""

    name: str
    channel_id: str
    seq: int
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ChatEvent:
    """A recorded event. ``cursor`` is its position in the event log.

    The data is kept as JSON text (``data_text``), encoded once when the event is
    recorded: publishing, routing and streaming pass that text along untouched, and
    :attr:`data` parses it only for the few who look inside. ``traceparent`` is the trace
    context of the span that published it (bus payloads only, never stored; "" when
    tracing is off).
    """

    cursor: int
    event_id: str
    tenant_id: str
    channel_id: str
    seq: int
    name: str
    data_text: str
    created_at: datetime
    traceparent: str = ""

    @classmethod
    def of(
        cls,
        *,
        cursor: int,
        event_id: str,
        tenant_id: str,
        channel_id: str,
        seq: int,
        name: str,
        data: Mapping[str, Any],
        created_at: datetime,
    ) -> ChatEvent:
        return cls(
            cursor, event_id, tenant_id, channel_id, seq, name, encode_data(data), created_at
        )

    @property
    def data(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.data_text)
        return parsed

    def encode(self) -> bytes:
        """The bus payload: a JSON header line, a newline, then the data's JSON text."""
        fields = {
            "cursor": self.cursor,
            "event_id": self.event_id,
            "tenant_id": self.tenant_id,
            "channel_id": self.channel_id,
            "seq": self.seq,
            "event": self.name,
            "created_at": rfc3339(self.created_at),
        }
        if self.traceparent:
            fields["traceparent"] = self.traceparent
        header = json.dumps(fields, separators=(",", ":"))
        return f"{header}\n{self.data_text}".encode()

    @classmethod
    def decode(cls, payload: bytes) -> ChatEvent:
        """The event of a payload holding one (:meth:`encode`; see :func:`decode_events`)."""
        events = decode_events(payload)
        if len(events) != 1:
            raise ValueError(f"the payload holds {len(events)} events, not one")
        return events[0]

    @classmethod
    def _decode(cls, header_bytes: bytes, data: bytes) -> ChatEvent:
        raw = json.loads(header_bytes)
        return cls(
            cursor=int(raw["cursor"]),
            event_id=raw["event_id"],
            tenant_id=raw["tenant_id"],
            channel_id=raw["channel_id"],
            seq=int(raw["seq"]),
            name=raw["event"],
            data_text=data.decode(),
            created_at=datetime.fromisoformat(raw["created_at"]),
            traceparent=raw.get("traceparent", ""),
        )

    def data_json(self) -> str:
        """Only the ``data`` part, as JSON text."""
        return self.data_text


def encode_events(events: Sequence[ChatEvent]) -> bytes:
    """One bus payload carrying ``events`` in order: each event's :meth:`ChatEvent.encode`,
    one after another, a newline between them. Neither part of an event holds a newline of
    its own (compact JSON escapes the ones in strings), so lines alternate header, data.

    Events committed together are published together: one bus message, one read by each
    gateway, instead of one per event."""
    return b"\n".join(event.encode() for event in events)


def decode_events(payload: bytes) -> tuple[ChatEvent, ...]:
    """The events :func:`encode_events` (or :meth:`ChatEvent.encode`) put in ``payload``,
    their data's text kept, not parsed.

    Every handler of the bus topic gets the same payload object, and each decodes it: the
    last payload decoded is remembered (by identity; both are immutable), so the second
    handler's decode is free."""
    global _last_decoded
    last_payload, last_events = _last_decoded
    if last_payload is payload:
        return last_events
    lines = payload.split(b"\n")
    if len(lines) % 2:
        raise ValueError("a chat events payload has a data line after each header line")
    events = tuple(ChatEvent._decode(lines[i], lines[i + 1]) for i in range(0, len(lines), 2))
    _last_decoded = (payload, events)  # one tuple, replaced whole: safe across threads
    return events


#: ``(payload, events)`` of the last :func:`decode_events` (see there).
_last_decoded: tuple[bytes | None, tuple[ChatEvent, ...]] = (None, ())


def encode_data(data: Mapping[str, Any]) -> str:
    """Event data as compact JSON text."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def chat_event(row: Mapping[Any, Any]) -> ChatEvent:
    """The :class:`ChatEvent` a row of the ``events`` table holds."""
    return ChatEvent.of(
        cursor=int(row["id"]),
        event_id=row["event_id"],
        tenant_id=row["tenant_id"],
        channel_id=row["channel_id"],
        seq=int(row["seq"]),
        name=row["name"],
        data=row["data"],
        created_at=as_utc(row["created_at"]),
    )
