"""The chat domain: users, channels, members, messages, reactions, and their limits.

Plain frozen dataclasses; nothing here imports grpc or SQLAlchemy.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NewType

from service_kit.auth import TenantId

ChannelId = NewType("ChannelId", str)
MessageId = NewType("MessageId", str)
UserId = NewType("UserId", str)

MAX_USER_ID = 128
MAX_NAME = 255
MAX_EMAIL = 255
MAX_AVATAR = 2048
MAX_MESSAGE_TYPE = 50
MAX_EMOJI = 64
MAX_IDEMPOTENCY_KEY = 128
MAX_ATTACHMENTS = 20
MAX_MEMBERS_AT_CREATION = 1000
MAX_METADATA_BYTES = 16 * 1024
MAX_TOKEN_TTL_SECONDS = 86_400
DEFAULT_TOKEN_TTL_SECONDS = 3_600


class ChannelType(enum.StrEnum):
    """Who may see and join a channel (the seed's ``type``)."""

    DIRECT = "direct"
    GROUP = "group"
    PUBLIC = "public"


class Role(enum.StrEnum):
    """What a member may do: owners may delete others' messages and manage members."""

    OWNER = "owner"
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class User:
    tenant_id: TenantId
    id: UserId
    username: str
    email: str = ""
    avatar: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Channel:
    tenant_id: TenantId
    id: ChannelId
    name: str
    type: ChannelType
    created_by: str
    metadata: Mapping[str, Any]
    last_seq: int
    member_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    channel_id: ChannelId
    user_id: UserId
    role: Role
    joined_at: datetime
    last_read_seq: int = 0


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to a message, as the file was when attached (a ready file of the
    message's tenant); a thumbnail size of 0 means the file has no thumbnail."""

    file_id: str
    filename: str
    content_type: str
    size_bytes: int
    thumbnail_width: int = 0
    thumbnail_height: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    tenant_id: TenantId
    id: MessageId
    channel_id: ChannelId
    user_id: str
    content: str
    message_type: str
    reply_to: str
    attachment_ids: tuple[str, ...]
    seq: int
    created_at: datetime
    updated_at: datetime
    edited: bool = False
    deleted: bool = False
    reaction_counts: tuple[tuple[str, int], ...] = ()
    #: The attached files, in ``attachment_ids`` order.
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class UnreadCount:
    channel_id: ChannelId
    unread_count: int
    last_read_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What a sender asks to store; the store adds id, seq and times."""

    channel_id: ChannelId
    user_id: str
    content: str
    message_type: str = "text"
    reply_to: str = ""
    attachment_ids: tuple[str, ...] = ()
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """Which messages of a channel ListMessages returns, and in which order."""

    channel_id: ChannelId
    limit: int
    newest_first: bool = True
    before_seq: int = 0
    after_seq: int = 0
    reply_to: str = ""
    offset: int = 0
