"""What each chat change records: the event drafts of channels, members, messages and
reactions, and their data.

Event data uses the field names of ``keel.channels.v1`` messages (snake_case),
times in RFC 3339, channel types and roles as the seed's words.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway_bridge.gateway.channels.models import Attachment, Channel, Member, Message
from gateway_bridge.gateway.outbox import EventDraft
from gateway_bridge.vocabulary import CHANNEL_DELETED, USER_JOINED, USER_LEFT
from service_kit.clock import rfc3339


def _time(value: datetime | None) -> str | None:
    return rfc3339(value) if value is not None else None


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
        "attachments": [attachment_data(a) for a in message.attachments],
    }


def attachment_data(attachment: Attachment) -> dict[str, Any]:
    """An attachment's metadata, as events carry it and ``messages.attachments`` keeps it
    (the signed URLs are added on the way out, never stored)."""
    return {
        "file_id": attachment.file_id,
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size_bytes": attachment.size_bytes,
        "thumbnail_width": attachment.thumbnail_width,
        "thumbnail_height": attachment.thumbnail_height,
    }


def attachment_of(document: Mapping[str, Any]) -> Attachment:
    """The attachment :func:`attachment_data` wrote (URL fields, if any, are ignored)."""
    return Attachment(
        file_id=str(document["file_id"]),
        filename=str(document["filename"]),
        content_type=str(document["content_type"]),
        size_bytes=int(document["size_bytes"]),
        thumbnail_width=int(document.get("thumbnail_width") or 0),
        thumbnail_height=int(document.get("thumbnail_height") or 0),
    )


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
