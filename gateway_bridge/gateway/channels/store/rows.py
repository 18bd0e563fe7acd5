"""Rows and domain values of the chat store: conversions both ways, and the loads every
entity shares.

A ``to_*`` function turns a selected row (a mapping of its columns) into a domain
value; a ``*_row`` function turns a domain value into the row to insert. The
``load_*`` functions read one channel, member or message inside the caller's
connection (and so its transaction): a missing channel or message raises its
``NotFound`` error, and a channel of another tenant is missing like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Exists

from gateway_bridge.gateway.channels.drafts import attachment_data, attachment_of
from gateway_bridge.gateway.channels.errors import ChannelNotFound, MessageNotFound
from gateway_bridge.gateway.channels.models import (
    Channel,
    ChannelId,
    ChannelType,
    Member,
    Message,
    MessageId,
    Role,
    User,
    UserId,
)
from service_kit.auth import TenantId
from service_kit.db import as_utc, load_one
from service_kit.schema import channel_members, channels, messages, reactions, users

Row = Mapping[Any, Any]

#: The number of members of the channel row being selected (select it with ``channels``).
member_count = (
    select(func.count())
    .where(channel_members.c.channel_id == channels.c.id)
    .correlate(channels)
    .scalar_subquery()
    .label("member_count")
)


def is_member(user_id: str) -> Exists:
    """``user_id`` is a member of the channel of the row (``channels``) being selected."""
    return (
        exists()
        .where(
            channel_members.c.channel_id == channels.c.id,
            channel_members.c.user_id == user_id,
        )
        .correlate(channels)
    )


# -- users ----------------------------------------------------------------------------


def user_query(tenant_id: str, user_id: str) -> Any:
    """The select of one user of the tenant."""
    return select(users).where(users.c.tenant_id == tenant_id, users.c.id == user_id)


def to_user(row: Row) -> User:
    return User(
        tenant_id=TenantId(row["tenant_id"]),
        id=UserId(row["id"]),
        username=row["username"],
        email=row["email"] or "",
        avatar=row["avatar"] or "",
        metadata=row[users.c.metadata_],
        created_at=as_utc(row["created_at"]),
    )


# -- channels -------------------------------------------------------------------------


async def load_channel(conn: AsyncConnection, tenant_id: str, channel_id: str) -> Channel:
    """The tenant's channel with its member count; raises ``ChannelNotFound``."""
    query = select(channels, member_count).where(
        channels.c.tenant_id == tenant_id, channels.c.id == channel_id
    )
    return to_channel(await load_one(conn, query, lambda: ChannelNotFound(channel_id)))


def to_channel(row: Row) -> Channel:
    """The channel of a row selected with :data:`member_count`."""
    return Channel(
        tenant_id=TenantId(row["tenant_id"]),
        id=ChannelId(row["id"]),
        name=row["name"],
        type=ChannelType(row["type"]),
        created_by=row["created_by"] or "",
        metadata=row[channels.c.metadata_],
        last_seq=int(row["last_seq"]),
        member_count=int(row["member_count"]),
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
    )


# -- members --------------------------------------------------------------------------


async def load_member(conn: AsyncConnection, channel_id: str, user_id: str) -> Member | None:
    """The membership of ``user_id`` in the channel; None when not a member."""
    row = (
        await conn.execute(
            select(channel_members).where(
                channel_members.c.channel_id == channel_id, channel_members.c.user_id == user_id
            )
        )
    ).first()
    return to_member(row._mapping) if row else None


def to_member(row: Row) -> Member:
    return Member(
        channel_id=ChannelId(row["channel_id"]),
        user_id=UserId(row["user_id"]),
        role=Role(row["role"]),
        joined_at=as_utc(row["joined_at"]),
        last_read_seq=int(row["last_read_seq"]),
    )


def member_row(tenant_id: str, member: Member) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "channel_id": member.channel_id,
        "user_id": member.user_id,
        "role": member.role.value,
        "last_read_seq": member.last_read_seq,
        "joined_at": member.joined_at,
    }


# -- messages -------------------------------------------------------------------------


async def load_message(conn: AsyncConnection, channel_id: str, message_id: str) -> Message:
    """The channel's message (without reaction counts); raises ``MessageNotFound``."""
    query = select(messages).where(messages.c.id == message_id, messages.c.channel_id == channel_id)
    return to_message(await load_one(conn, query, lambda: MessageNotFound(message_id)))


async def load_channel_message(
    conn: AsyncConnection, tenant_id: str, channel_id: str, message_id: str
) -> Message:
    """The message of the tenant's channel (without reaction counts); raises
    ``ChannelNotFound`` or ``MessageNotFound``."""
    await load_channel(conn, tenant_id, channel_id)
    return await load_message(conn, channel_id, message_id)


def to_message(row: Row) -> Message:
    return Message(
        tenant_id=TenantId(row["tenant_id"]),
        id=MessageId(row["id"]),
        channel_id=ChannelId(row["channel_id"]),
        user_id=row["user_id"],
        content=row["content"],
        message_type=row["message_type"],
        reply_to=row["reply_to"] or "",
        attachment_ids=tuple(row["attachment_ids"]),
        seq=int(row["seq"]),
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
        edited=bool(row["edited"]),
        deleted=bool(row["deleted"]),
        attachments=tuple(attachment_of(a) for a in row["attachments"] or ()),
    )


def message_row(message: Message, idempotency_key: str) -> dict[str, Any]:
    """The row of a new ``message`` (neither edited nor deleted)."""
    return {
        "id": message.id,
        "tenant_id": message.tenant_id,
        "channel_id": message.channel_id,
        "user_id": message.user_id,
        "content": message.content,
        "message_type": message.message_type,
        "reply_to": message.reply_to or None,
        "attachment_ids": list(message.attachment_ids),
        "attachments": [attachment_data(a) for a in message.attachments],
        "seq": message.seq,
        "idempotency_key": idempotency_key or None,
        "edited": False,
        "deleted": False,
        "created_at": message.created_at,
        "updated_at": message.updated_at,
    }


async def with_reactions(conn: AsyncConnection, found: list[Message]) -> list[Message]:
    """``found`` with their reaction counts (most used first), in one query."""
    if not found:
        return found
    count = func.count().label("n")
    rows = (
        await conn.execute(
            select(reactions.c.message_id, reactions.c.emoji, count)
            .where(reactions.c.message_id.in_([m.id for m in found]))
            .group_by(reactions.c.message_id, reactions.c.emoji)
            .order_by(count.desc(), reactions.c.emoji)
        )
    ).all()
    by_message: dict[str, list[tuple[str, int]]] = {}
    for message_id, emoji, n in rows:
        by_message.setdefault(message_id, []).append((emoji, int(n)))
    return [replace(m, reaction_counts=tuple(by_message.get(m.id, ()))) for m in found]
