"""The chat store's members and read state: join, leave, who may read, read positions.

The members of a direct channel never change. A member's ``last_read_seq``
only moves forward and never past the channel's ``last_seq``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update

from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels import drafts
from gateway_bridge.gateway.channels.errors import ChannelNotFound, NotAllowed, WrongState
from gateway_bridge.gateway.channels.models import (
    ChannelId,
    ChannelType,
    Member,
    Role,
    UnreadCount,
)
from gateway_bridge.gateway.channels.store.base import SqlStoreBase
from gateway_bridge.gateway.channels.store.rows import (
    is_member,
    load_channel,
    load_member,
    to_member,
)
from service_kit.db import keyset_page, load_one, write_transaction
from service_kit.schema import channel_members, channels, messages


class SqlMembers(SqlStoreBase):
    """Members and read state of the chat store, in SQL."""

    async def add_member(
        self, tenant_id: str, channel_id: str, user_id: str, role: Role
    ) -> tuple[Member, list[ev.ChatEvent]]:
        """Add ``user_id`` (created if new); a current member is returned unchanged."""
        async with write_transaction(self._engine) as conn:
            channel = await load_channel(conn, tenant_id, channel_id)
            current = await load_member(conn, channel_id, user_id)
            if current is not None:
                return current, []
            if channel.type is ChannelType.DIRECT:
                raise WrongState("the members of a direct channel never change")
            await self._ensure_users(conn, tenant_id, [user_id])
            return await self._join(conn, channel, user_id, role)

    async def remove_member(
        self, tenant_id: str, channel_id: str, user_id: str
    ) -> list[ev.ChatEvent]:
        """Remove ``user_id``; raises ``NotAllowed`` when it is not a member."""
        async with write_transaction(self._engine) as conn:
            channel = await load_channel(conn, tenant_id, channel_id)
            if channel.type is ChannelType.DIRECT:
                raise WrongState("the members of a direct channel never change")
            result = await conn.execute(
                delete(channel_members).where(
                    channel_members.c.channel_id == channel_id,
                    channel_members.c.user_id == user_id,
                )
            )
            if result.rowcount != 1:
                raise NotAllowed(f"user {user_id!r} is not a member of this channel")
            return await self._record(
                conn, tenant_id, [drafts.left(channel_id, user_id, channel.last_seq)]
            )

    async def read_access(
        self, tenant_id: str, channel_id: str, user_id: str
    ) -> tuple[ChannelType, int, bool]:
        """What a reader subscribing to a channel needs, in one query: its type, its
        ``last_seq`` and whether ``user_id`` is a member. Raises ``ChannelNotFound``."""
        query = select(
            channels.c.type, channels.c.last_seq, is_member(user_id).label("is_member")
        ).where(channels.c.tenant_id == tenant_id, channels.c.id == channel_id)
        async with self._engine.connect() as conn:
            row = await load_one(conn, query, lambda: ChannelNotFound(channel_id))
        return ChannelType(row["type"]), int(row["last_seq"]), bool(row["is_member"])

    async def get_member(self, tenant_id: str, channel_id: str, user_id: str) -> Member | None:
        """The membership of ``user_id``, None when not a member; raises ``ChannelNotFound``."""
        async with self._engine.connect() as conn:
            await load_channel(conn, tenant_id, channel_id)
            return await load_member(conn, channel_id, user_id)

    async def list_members(
        self, tenant_id: str, channel_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[Member]:
        """Up to ``limit`` members in join order after the ``(joined_at, user_id)``
        position ``after``; raises ``ChannelNotFound``."""
        query = keyset_page(
            select(channel_members).where(channel_members.c.channel_id == channel_id),
            channel_members.c.joined_at,
            channel_members.c.user_id,
            limit=limit,
            after=after,
        )
        async with self._engine.connect() as conn:
            await load_channel(conn, tenant_id, channel_id)
            rows = (await conn.execute(query)).all()
        return [to_member(r._mapping) for r in rows]

    async def mark_read(self, tenant_id: str, channel_id: str, user_id: str, seq: int) -> Member:
        """Move the member's read position to ``seq`` (0 = the newest); never backwards."""
        async with write_transaction(self._engine) as conn:
            channel = await load_channel(conn, tenant_id, channel_id)
            target = channel.last_seq if seq == 0 else min(seq, channel.last_seq)
            await conn.execute(
                update(channel_members)
                .where(
                    channel_members.c.channel_id == channel_id,
                    channel_members.c.user_id == user_id,
                    channel_members.c.last_read_seq < target,
                )
                .values(last_read_seq=target)
            )
            member = await load_member(conn, channel_id, user_id)
            if member is None:
                raise NotAllowed(f"user {user_id!r} is not a member of this channel")
        return member

    async def unread_counts(self, tenant_id: str, user_id: str) -> list[UnreadCount]:
        """Per channel ``user_id`` belongs to (in creation order): the messages of others
        after its read position that are not deleted, and the positions."""
        member = channel_members
        unread = (
            select(func.count())
            .where(
                messages.c.channel_id == member.c.channel_id,
                messages.c.seq > member.c.last_read_seq,
                messages.c.deleted.is_(False),
                messages.c.user_id != user_id,
            )
            .correlate(member)
            .scalar_subquery()
        )
        query = (
            select(member.c.channel_id, member.c.last_read_seq, channels.c.last_seq, unread)
            .join(channels, channels.c.id == member.c.channel_id)
            .where(member.c.tenant_id == tenant_id, member.c.user_id == user_id)
            .order_by(channels.c.created_at, channels.c.id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [UnreadCount(ChannelId(r[0]), int(r[3]), int(r[1]), int(r[2])) for r in rows]
