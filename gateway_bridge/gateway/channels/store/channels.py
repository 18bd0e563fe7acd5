"""The chat store's channels: create (idempotent), read, list, update, delete.

A channel is created at most once per ``request_id``, and a direct channel at
most once per pair of users (``direct_key``); the unique keys decide a race
between two creating transactions, and the loser returns the winner's channel.
Deleting a channel deletes its messages, reactions and members with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway_bridge import vocabulary as vocab
from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels import drafts
from gateway_bridge.gateway.channels.errors import ChannelNotFound
from gateway_bridge.gateway.channels.models import (
    Channel,
    ChannelId,
    ChannelType,
    Member,
    Role,
    UserId,
)
from gateway_bridge.gateway.channels.store.base import SqlStoreBase
from gateway_bridge.gateway.channels.store.rows import (
    load_channel,
    member_count,
    member_row,
    to_channel,
)
from service_kit.auth import TenantId
from service_kit.db import keyset_page, write_transaction
from service_kit.schema import (
    channel_members,
    channels,
    message_attachments,
    messages,
    reactions,
)
from service_kit.validation import new_id


class SqlChannels(SqlStoreBase):
    """Channels of the chat store, in SQL."""

    async def create_channel(
        self,
        tenant_id: TenantId,
        *,
        name: str,
        type: ChannelType,
        metadata: dict[str, Any],
        created_by: str,
        member_ids: Sequence[str],
        request_id: str,
    ) -> tuple[Channel, list[ev.ChatEvent]]:
        """Create a channel with its first members, or return the one that already exists
        (the same ``request_id``, or a direct channel between the same two users)."""
        members = list(dict.fromkeys(u for u in [created_by, *member_ids] if u))
        direct_key = "\x1f".join(sorted(members)) if type is ChannelType.DIRECT else None
        existing = await self._existing_channel(tenant_id, request_id, direct_key)
        if existing is not None:
            return existing, []
        now = self._clock()
        channel_id = ChannelId(new_id())
        try:
            async with write_transaction(self._engine) as conn:
                await self._ensure_users(conn, tenant_id, members)
                await conn.execute(
                    insert(channels).values(
                        id=channel_id,
                        tenant_id=tenant_id,
                        name=name,
                        type=type.value,
                        created_by=created_by or None,
                        metadata_=metadata,
                        direct_key=direct_key,
                        last_seq=0,
                        request_id=request_id or None,
                        created_at=now,
                        updated_at=now,
                    )
                )
                # The creator joins first (members are listed in join order).
                roster = [
                    Member(
                        channel_id,
                        UserId(u),
                        Role.OWNER
                        if u == created_by and type is not ChannelType.DIRECT
                        else Role.MEMBER,
                        now + timedelta(microseconds=position),
                    )
                    for position, u in enumerate(members)
                ]
                if roster:
                    await conn.execute(
                        insert(channel_members),
                        [member_row(tenant_id, m) for m in roster],
                    )
                channel = Channel(
                    tenant_id,
                    channel_id,
                    name,
                    type,
                    created_by,
                    metadata,
                    0,
                    len(roster),
                    now,
                    now,
                )
                recorded = await self._record(
                    conn,
                    tenant_id,
                    [drafts.channel_event(vocab.CHANNEL_CREATED, channel)]
                    + [drafts.joined(m, 0) for m in roster],
                )
        except IntegrityError:
            # A concurrent twin (same request id or direct pair) won the race.
            existing = await self._existing_channel(tenant_id, request_id, direct_key)
            if existing is None:
                raise
            return existing, []
        return channel, recorded

    async def _existing_channel(
        self, tenant_id: str, request_id: str, direct_key: str | None
    ) -> Channel | None:
        """The channel created with ``request_id``, or the direct channel of ``direct_key``."""
        conditions = []
        if request_id:
            conditions.append(channels.c.request_id == request_id)
        if direct_key is not None:
            conditions.append(channels.c.direct_key == direct_key)
        if not conditions:
            return None
        query = select(channels, member_count).where(
            channels.c.tenant_id == tenant_id, or_(*conditions)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return to_channel(row._mapping) if row else None

    async def get_channel(self, tenant_id: str, channel_id: str) -> Channel:
        """The channel; raises ``ChannelNotFound`` (also for another tenant's channel)."""
        async with self._engine.connect() as conn:
            return await load_channel(conn, tenant_id, channel_id)

    async def list_channels(
        self,
        tenant_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
        type: ChannelType | None = None,
        member_id: str = "",
    ) -> list[Channel]:
        """Up to ``limit`` of the tenant's channels in creation order after the position
        ``after``; only those of ``type`` and those ``member_id`` belongs to, when given."""
        query = keyset_page(
            select(channels, member_count).where(channels.c.tenant_id == tenant_id),
            channels.c.created_at,
            channels.c.id,
            limit=limit,
            after=after,
        )
        if type is not None:
            query = query.where(channels.c.type == type.value)
        if member_id:
            query = query.where(
                channels.c.id.in_(
                    select(channel_members.c.channel_id).where(
                        channel_members.c.tenant_id == tenant_id,
                        channel_members.c.user_id == member_id,
                    )
                )
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [to_channel(r._mapping) for r in rows]

    async def update_channel(
        self, tenant_id: str, channel_id: str, *, name: str | None, metadata: dict[str, Any] | None
    ) -> tuple[Channel, list[ev.ChatEvent]]:
        """Change the name and/or metadata (those not None); raises ``ChannelNotFound``."""
        values: dict[str, Any] = {"updated_at": self._clock()}
        if name is not None:
            values["name"] = name
        if metadata is not None:
            values["metadata_"] = metadata
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                update(channels)
                .where(channels.c.tenant_id == tenant_id, channels.c.id == channel_id)
                .values(values)
            )
            if result.rowcount != 1:
                raise ChannelNotFound(channel_id)
            channel = await load_channel(conn, tenant_id, channel_id)
            recorded = await self._record(
                conn, tenant_id, [drafts.channel_event(vocab.CHANNEL_UPDATED, channel)]
            )
        return channel, recorded

    async def delete_channel(self, tenant_id: str, channel_id: str) -> list[ev.ChatEvent]:
        """Delete the channel with its messages, reactions, attachments and members."""
        async with write_transaction(self._engine) as conn:
            channel = await load_channel(conn, tenant_id, channel_id)
            message_ids = select(messages.c.id).where(messages.c.channel_id == channel_id)
            await conn.execute(delete(reactions).where(reactions.c.message_id.in_(message_ids)))
            await conn.execute(
                delete(message_attachments).where(message_attachments.c.message_id.in_(message_ids))
            )
            await conn.execute(delete(messages).where(messages.c.channel_id == channel_id))
            await conn.execute(
                delete(channel_members).where(channel_members.c.channel_id == channel_id)
            )
            await conn.execute(delete(channels).where(channels.c.id == channel_id))
            return await self._record(conn, tenant_id, [drafts.channel_deleted(channel)])
