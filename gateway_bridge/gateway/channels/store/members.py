"""The chat store's members and read state: join, leave, who may read, read positions.

The members of a direct channel never change. A member's ``last_read_seq``
only moves forward and never past the channel's ``last_seq``.

Who may read (:meth:`SqlMembers.read_access`, the check of every subscribe) is read for
concurrent callers together: the checks that arrive while one batch is being read go in
the next, one statement for all of them (a reconnecting crowd of browsers costs one read
per batch rather than one transaction each). Each check still reads the database after
its call began, so a membership change committed before a subscribe is always seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
    load_channel,
    load_member,
    to_member,
)
from service_kit.batching import Batcher
from service_kit.clock import Clock, utcnow
from service_kit.db import keyset_page, write_transaction
from service_kit.schema import channel_members, channels, messages

#: What a subscribe's access check asks: (tenant id, channel id, user id).
AccessQuery = tuple[str, str, str]
#: What it answers: the channel's type, its ``last_seq``, whether the user is a member.
Access = tuple[ChannelType, int, bool]

#: Access checks read in one statement at most.
ACCESS_BATCH: Final = 256

# The checks travel as arrays (unnested by the server), so the text never changes and
# asyncpg prepares it once per connection, whatever the batch's size.
_PG_ACCESS = """
SELECT q.n, c.type, c.last_seq,
       EXISTS (SELECT 1 FROM channel_members m
               WHERE m.channel_id = c.id AND m.user_id = q.user_id) AS is_member
FROM unnest($1::varchar[], $2::varchar[], $3::varchar[])
     WITH ORDINALITY AS q(tenant_id, channel_id, user_id, n)
JOIN channels c ON c.id = q.channel_id AND c.tenant_id = q.tenant_id
"""


class SqlMembers(SqlStoreBase):
    """Members and read state of the chat store, in SQL."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow) -> None:
        super().__init__(engine, clock=clock)
        self._access: Batcher[AccessQuery, Access] = Batcher(
            self._read_access_batch, max_batch=ACCESS_BATCH
        )

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
        """What a reader subscribing to a channel needs: its type, its ``last_seq`` and
        whether ``user_id`` is a member, read after this call began (with the checks of
        concurrent callers, in one statement). Raises ``ChannelNotFound`` (also for
        another tenant's channel)."""
        return await self._access.submit((tenant_id, channel_id, user_id))

    async def _read_access_batch(self, queries: list[AccessQuery]) -> list[Access | BaseException]:
        """The access of each query, in order; ``ChannelNotFound`` where it has none."""
        found: dict[int, Access] = {}
        async with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                rows: Sequence[Any] = (
                    await conn.exec_driver_sql(
                        _PG_ACCESS,
                        tuple([q[i] for q in queries] for i in range(3)),
                    )
                ).all()
                for n, type_, last_seq, member in rows:
                    found[int(n) - 1] = (ChannelType(type_), int(last_seq), bool(member))
            else:
                found = await _read_access_sqlite(conn, queries)
        return [found.get(i) or ChannelNotFound(q[1]) for i, q in enumerate(queries)]

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


async def _read_access_sqlite(
    conn: AsyncConnection, queries: list[AccessQuery]
) -> dict[int, Access]:
    """SQLite's side of :meth:`SqlMembers._read_access_batch` (no arrays, no round trips):
    the channels and the memberships asked about, matched here, by index."""
    wanted = {(q[0], q[1]) for q in queries}
    channel_rows = (
        await conn.execute(
            select(channels.c.tenant_id, channels.c.id, channels.c.type, channels.c.last_seq).where(
                channels.c.id.in_({q[1] for q in queries})
            )
        )
    ).all()
    found_channels = {
        (r.tenant_id, r.id): (ChannelType(r.type), int(r.last_seq))
        for r in channel_rows
        if (r.tenant_id, r.id) in wanted
    }
    pairs = {(q[1], q[2]) for q in queries if q[2]}
    members: set[tuple[str, str]] = set()
    if pairs:
        member_rows = (
            await conn.execute(
                select(channel_members.c.channel_id, channel_members.c.user_id).where(
                    tuple_(channel_members.c.channel_id, channel_members.c.user_id).in_(pairs)
                )
            )
        ).all()
        members = {(r.channel_id, r.user_id) for r in member_rows}
    found: dict[int, Access] = {}
    for i, (tenant_id, channel_id, user_id) in enumerate(queries):
        channel = found_channels.get((tenant_id, channel_id))
        if channel is not None:
            found[i] = (channel[0], channel[1], (channel_id, user_id) in members)
    return found
