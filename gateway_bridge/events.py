"""Chat events: their names (the seed's), their data, and how they travel.

Every mutation of a channel records an event row in the same transaction as
the change (a transactional outbox). After commit the gateway publishes it on
the bus topic :data:`CHAT_EVENTS_TOPIC`; :class:`EventRelay` also drains rows a
crash left unpublished, so none is lost. An event's JSON is encoded once, when
it is published, and every consumer passes the same bytes along.

Event data uses the field names of ``keel.channels.v1`` messages (snake_case),
times in RFC 3339, channel types and roles as the seed's words.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from gateway_bridge.models import Channel, Member, Message

log = logging.getLogger(__name__)

CHAT_EVENTS_TOPIC: Final = "chat.events"

CHANNEL_CREATED: Final = "channel:created"
CHANNEL_UPDATED: Final = "channel:updated"
CHANNEL_DELETED: Final = "channel:deleted"
MESSAGE_CREATED: Final = "message:created"
MESSAGE_UPDATED: Final = "message:updated"
MESSAGE_DELETED: Final = "message:deleted"
REACTION_ADDED: Final = "reaction:added"
REACTION_REMOVED: Final = "reaction:removed"
USER_JOINED: Final = "user:joined"
USER_LEFT: Final = "user:left"

EVENT_NAMES: Final = frozenset(
    {
        CHANNEL_CREATED,
        CHANNEL_UPDATED,
        CHANNEL_DELETED,
        MESSAGE_CREATED,
        MESSAGE_UPDATED,
        MESSAGE_DELETED,
        REACTION_ADDED,
        REACTION_REMOVED,
        USER_JOINED,
        USER_LEFT,
    }
)


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
    :attr:`data` parses it only for the few who look inside.
    """

    cursor: int
    event_id: str
    tenant_id: str
    channel_id: str
    seq: int
    name: str
    data_text: str
    created_at: datetime

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
        header = json.dumps(
            {
                "cursor": self.cursor,
                "event_id": self.event_id,
                "tenant_id": self.tenant_id,
                "channel_id": self.channel_id,
                "seq": self.seq,
                "event": self.name,
                "created_at": _time(self.created_at),
            },
            separators=(",", ":"),
        )
        return f"{header}\n{self.data_text}".encode()

    @classmethod
    def decode(cls, payload: bytes) -> ChatEvent:
        """The event :meth:`encode` wrote (the data's text is kept, not parsed)."""
        header_bytes, _, data = payload.partition(b"\n")
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
        )

    def data_json(self) -> str:
        """Only the ``data`` part, as JSON text."""
        return self.data_text


def encode_data(data: Mapping[str, Any]) -> str:
    """Event data as compact JSON text."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def channel_data(channel: Channel) -> dict[str, Any]:
    return {
        "id": channel.id,
        "name": channel.name,
        "type": channel.type.value,
        "metadata": dict(channel.metadata),
        "created_by": channel.created_by,
        "create_time": _time(channel.created_at),
        "update_time": _time(channel.updated_at),
        "last_seq": channel.last_seq,
        "member_count": channel.member_count,
    }


def member_data(member: Member) -> dict[str, Any]:
    return {
        "channel_id": member.channel_id,
        "user_id": member.user_id,
        "role": member.role.value,
        "join_time": _time(member.joined_at),
        "last_read_seq": member.last_read_seq,
    }


def message_data(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "channel_id": message.channel_id,
        "user_id": message.user_id,
        "content": message.content,
        "message_type": message.message_type,
        "reply_to": message.reply_to,
        "attachment_ids": list(message.attachment_ids),
        "seq": message.seq,
        "created_at": _time(message.created_at),
        "updated_at": _time(message.updated_at),
        "edited": message.edited,
        "deleted": message.deleted,
        "reaction_counts": [{"emoji": e, "count": c} for e, c in message.reaction_counts],
    }


def channel_event(name: str, channel: Channel) -> EventDraft:
    return EventDraft(name, channel.id, channel.last_seq, {"channel": channel_data(channel)})


def channel_deleted(channel: Channel) -> EventDraft:
    return EventDraft(CHANNEL_DELETED, channel.id, channel.last_seq, {"channel_id": channel.id})


def message_event(name: str, message: Message) -> EventDraft:
    return EventDraft(name, message.channel_id, message.seq, {"message": message_data(message)})


def joined(member: Member, last_seq: int) -> EventDraft:
    return EventDraft(USER_JOINED, member.channel_id, last_seq, {"member": member_data(member)})


def left(channel_id: str, user_id: str, last_seq: int) -> EventDraft:
    return EventDraft(
        USER_LEFT, channel_id, last_seq, {"channel_id": channel_id, "user_id": user_id}
    )


def reaction_event(name: str, message: Message, user_id: str, emoji: str, count: int) -> EventDraft:
    return EventDraft(
        name,
        message.channel_id,
        message.seq,
        {
            "channel_id": message.channel_id,
            "message_id": message.id,
            "user_id": user_id,
            "emoji": emoji,
            "count": count,
        },
    )
