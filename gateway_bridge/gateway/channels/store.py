"""Where chat lives: the ``ChatStore`` role and its SQL implementation.

Every method is scoped by ``tenant_id``. Every mutation runs in one
transaction that also records its events in the event log (the outbox) and
returns them, so the caller can publish them after commit. A channel's
message ``seq`` is taken from ``channels.last_seq`` inside the sending
transaction, under the channel row's lock (``UPDATE ... SET last_seq = last_seq
+ 1``, or, for a batch of concurrent sends stored together, ``SELECT ... FOR
UPDATE`` in channel id order and one update per channel): the lock serializes
senders of one channel (PostgreSQL; SQLite serializes all writers), a rollback
gives the numbers back, and so seqs are gap-free.

Rules that need the stored state to decide (membership, who may edit or
delete) are checked here, inside the transaction, with the predicates of
:mod:`gateway_bridge.gateway.channels.rules`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Exists

from gateway_bridge import vocabulary as vocab
from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels import drafts, rules
from gateway_bridge.gateway.channels.errors import (
    ChannelNotFound,
    MessageNotFound,
    NotAllowed,
    WrongState,
)
from gateway_bridge.gateway.channels.models import (
    Channel,
    ChannelId,
    ChannelType,
    Member,
    Message,
    MessageId,
    MessageQuery,
    NewMessage,
    Role,
    UnreadCount,
    User,
    UserId,
)
from service_kit.auth import TenantId
from service_kit.batching import Batcher
from service_kit.db import as_utc, insert_ignoring_conflicts, write_transaction
from service_kit.schema import channel_members, channels, events, messages, reactions, users
from service_kit.validation import new_id

Clock = Callable[[], datetime]

#: What storing a message gives: the message, and the events to publish after commit.
Sent = tuple[Message, list[ev.ChatEvent]]

#: Most sends stored in one transaction (group commit).
SEND_BATCH = 128


def _utcnow() -> datetime:
    return datetime.now(UTC)


_member_count = (
    select(func.count())
    .where(channel_members.c.channel_id == channels.c.id)
    .correlate(channels)
    .scalar_subquery()
    .label("member_count")
)


class SqlChatStore:
    """Users, channels, members, messages, reactions, read state and the event log, in SQL."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = _utcnow) -> None:
        self._engine = engine
        self._clock = clock
        # SQLite has one writer at a time, so one batch at a time; PostgreSQL overlaps a few.
        self._sends: Batcher[tuple[TenantId, NewMessage], Sent] = Batcher(
            self._send_batch,
            max_batch=SEND_BATCH,
            max_in_flight=1 if engine.dialect.name == "sqlite" else 4,
        )

    # -- the event log ------------------------------------------------------------------

    async def _record(
        self, conn: AsyncConnection, tenant_id: str, drafts: Sequence[ev.EventDraft]
    ) -> list[ev.ChatEvent]:
        return await self._record_many(conn, [(tenant_id, d) for d in drafts])

    async def _record_many(
        self, conn: AsyncConnection, drafts: Sequence[tuple[str, ev.EventDraft]]
    ) -> list[ev.ChatEvent]:
        """Append ``(tenant_id, draft)`` events to the log, in order, in one statement."""
        if not drafts:
            return []
        now = self._clock()
        ids = [new_id() for _ in drafts]
        result = await conn.execute(
            insert(events).returning(events.c.id, sort_by_parameter_order=True),
            [
                {
                    "event_id": event_id,
                    "tenant_id": tenant_id,
                    "channel_id": d.channel_id,
                    "seq": d.seq,
                    "name": d.name,
                    "data": dict(d.data),
                    "created_at": now,
                }
                for event_id, (tenant_id, d) in zip(ids, drafts, strict=True)
            ],
        )
        return [
            ev.ChatEvent.of(
                cursor=cursor,
                event_id=event_id,
                tenant_id=tenant_id,
                channel_id=d.channel_id,
                seq=d.seq,
                name=d.name,
                data=d.data,
                created_at=now,
            )
            for cursor, event_id, (tenant_id, d) in zip(
                result.scalars().all(), ids, drafts, strict=True
            )
        ]

    @asynccontextmanager
    async def unpublished_events(
        self, *, older_than: datetime, limit: int
    ) -> AsyncIterator[list[ev.ChatEvent]]:
        """Claim up to ``limit`` events committed before ``older_than`` that nobody has
        published; they are marked published when the block exits without error (and
        stay unpublished if it fails). Other gateways skip the claimed rows."""
        query = (
            select(events)
            .where(events.c.published_at.is_(None), events.c.created_at < older_than)
            .order_by(events.c.id)
            .limit(limit)
        )
        async with write_transaction(self._engine) as conn:
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = (await conn.execute(query)).all()
            yield [ev.chat_event(r._mapping) for r in rows]
            if rows:
                await conn.execute(
                    update(events)
                    .where(events.c.id.in_([r.id for r in rows]))
                    .values(published_at=self._clock())
                )

    async def mark_published(self, cursors: Collection[int]) -> None:
        """Record that the events at ``cursors`` reached the bus."""
        if cursors:
            async with write_transaction(self._engine) as conn:
                await conn.execute(
                    update(events)
                    .where(events.c.id.in_(list(cursors)), events.c.published_at.is_(None))
                    .values(published_at=self._clock())
                )

    # -- users --------------------------------------------------------------------------

    async def _ensure_users(
        self, conn: AsyncConnection, tenant_id: str, user_ids: Collection[str]
    ) -> None:
        """Create the users the tenant has not seen before (username = id)."""
        ids = sorted({u for u in user_ids if u})
        if ids:
            now = self._clock()
            await conn.execute(
                insert_ignoring_conflicts(conn, users),
                [
                    {
                        "tenant_id": tenant_id,
                        "id": u,
                        "username": u,
                        "metadata_": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for u in ids
                ],
            )

    async def ensure_user(self, tenant_id: str, user_id: str) -> None:
        """Create ``user_id`` unless the tenant already has it."""
        async with write_transaction(self._engine) as conn:
            await self._ensure_users(conn, tenant_id, [user_id])

    async def upsert_user(self, user: User, fields: Collection[str] | None) -> User:
        """Create ``user`` or change the ``fields`` (all when None) of the existing one."""
        now = self._clock()
        async with write_transaction(self._engine) as conn:
            await self._ensure_users(conn, user.tenant_id, [user.id])
            values: dict[str, Any] = {
                "username": user.username or user.id,
                "email": user.email or None,
                "avatar": user.avatar or None,
                "metadata_": dict(user.metadata),
            }
            if fields is not None:
                values = {k: v for k, v in values.items() if k.rstrip("_") in fields}
            await conn.execute(
                update(users)
                .where(users.c.tenant_id == user.tenant_id, users.c.id == user.id)
                .values(**values, updated_at=now)
            )
            row = (await conn.execute(_user_query(user.tenant_id, user.id))).one()
        return _user(row._mapping)

    async def get_user(self, tenant_id: str, user_id: str) -> User | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_user_query(tenant_id, user_id))).first()
        return _user(row._mapping) if row else None

    async def list_users(
        self, tenant_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[User]:
        query = (
            select(users)
            .where(users.c.tenant_id == tenant_id)
            .order_by(users.c.created_at, users.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(_after(users.c.created_at, users.c.id, after))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_user(r._mapping) for r in rows]

    # -- channels -----------------------------------------------------------------------

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
                        [_member_row(tenant_id, m) for m in roster],
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
        conditions = []
        if request_id:
            conditions.append(channels.c.request_id == request_id)
        if direct_key is not None:
            conditions.append(channels.c.direct_key == direct_key)
        if not conditions:
            return None
        query = select(channels, _member_count).where(
            channels.c.tenant_id == tenant_id, or_(*conditions)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _channel(row._mapping) if row else None

    async def get_channel(self, tenant_id: str, channel_id: str) -> Channel:
        """The channel; raises ``ChannelNotFound`` (also for another tenant's channel)."""
        async with self._engine.connect() as conn:
            return await _load_channel(conn, tenant_id, channel_id)

    async def list_channels(
        self,
        tenant_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
        type: ChannelType | None = None,
        member_id: str = "",
    ) -> list[Channel]:
        query = (
            select(channels, _member_count)
            .where(channels.c.tenant_id == tenant_id)
            .order_by(channels.c.created_at, channels.c.id)
            .limit(limit)
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
        if after is not None:
            query = query.where(_after(channels.c.created_at, channels.c.id, after))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_channel(r._mapping) for r in rows]

    async def update_channel(
        self, tenant_id: str, channel_id: str, *, name: str | None, metadata: dict[str, Any] | None
    ) -> tuple[Channel, list[ev.ChatEvent]]:
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
            channel = await _load_channel(conn, tenant_id, channel_id)
            recorded = await self._record(
                conn, tenant_id, [drafts.channel_event(vocab.CHANNEL_UPDATED, channel)]
            )
        return channel, recorded

    async def delete_channel(self, tenant_id: str, channel_id: str) -> list[ev.ChatEvent]:
        async with write_transaction(self._engine) as conn:
            channel = await _load_channel(conn, tenant_id, channel_id)
            message_ids = select(messages.c.id).where(messages.c.channel_id == channel_id)
            await conn.execute(delete(reactions).where(reactions.c.message_id.in_(message_ids)))
            await conn.execute(delete(messages).where(messages.c.channel_id == channel_id))
            await conn.execute(
                delete(channel_members).where(channel_members.c.channel_id == channel_id)
            )
            await conn.execute(delete(channels).where(channels.c.id == channel_id))
            return await self._record(conn, tenant_id, [drafts.channel_deleted(channel)])

    # -- members ------------------------------------------------------------------------

    async def add_member(
        self, tenant_id: str, channel_id: str, user_id: str, role: Role
    ) -> tuple[Member, list[ev.ChatEvent]]:
        """Add ``user_id`` (created if new); a current member is returned unchanged."""
        async with write_transaction(self._engine) as conn:
            channel = await _load_channel(conn, tenant_id, channel_id)
            current = await _load_member(conn, channel_id, user_id)
            if current is not None:
                return current, []
            if channel.type is ChannelType.DIRECT:
                raise WrongState("the members of a direct channel never change")
            await self._ensure_users(conn, tenant_id, [user_id])
            return await self._join(conn, channel, user_id, role)

    async def _join(
        self, conn: AsyncConnection, channel: Channel, user_id: str, role: Role
    ) -> tuple[Member, list[ev.ChatEvent]]:
        return await self._join_as(
            conn, channel.tenant_id, channel.id, user_id, role, channel.last_seq
        )

    async def _join_as(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        channel_id: ChannelId,
        user_id: str,
        role: Role,
        last_seq: int,
    ) -> tuple[Member, list[ev.ChatEvent]]:
        member = Member(channel_id, UserId(user_id), role, self._clock())
        await conn.execute(insert(channel_members).values(_member_row(tenant_id, member)))
        recorded = await self._record(conn, tenant_id, [drafts.joined(member, last_seq)])
        return member, recorded

    async def remove_member(
        self, tenant_id: str, channel_id: str, user_id: str
    ) -> list[ev.ChatEvent]:
        async with write_transaction(self._engine) as conn:
            channel = await _load_channel(conn, tenant_id, channel_id)
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
        member = _is_member(user_id)
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(channels.c.type, channels.c.last_seq, member.label("is_member")).where(
                        channels.c.tenant_id == tenant_id, channels.c.id == channel_id
                    )
                )
            ).first()
        if row is None:
            raise ChannelNotFound(channel_id)
        return ChannelType(row.type), int(row.last_seq), bool(row.is_member)

    async def get_member(self, tenant_id: str, channel_id: str, user_id: str) -> Member | None:
        async with self._engine.connect() as conn:
            await _load_channel(conn, tenant_id, channel_id)
            return await _load_member(conn, channel_id, user_id)

    async def list_members(
        self, tenant_id: str, channel_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[Member]:
        query = (
            select(channel_members)
            .where(channel_members.c.channel_id == channel_id)
            .order_by(channel_members.c.joined_at, channel_members.c.user_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(
                _after(channel_members.c.joined_at, channel_members.c.user_id, after)
            )
        async with self._engine.connect() as conn:
            await _load_channel(conn, tenant_id, channel_id)
            rows = (await conn.execute(query)).all()
        return [_member(r._mapping) for r in rows]

    # -- messages -----------------------------------------------------------------------

    async def send_message(self, tenant_id: TenantId, new: NewMessage) -> Sent:
        """Store ``new`` with the channel's next seq, or return the message an earlier send
        with the same idempotency key stored (and no events).

        Concurrent sends share transactions (group commit, :meth:`_send_batch`); a reply
        runs in a transaction of its own."""
        if new.reply_to:
            return await self._send_alone(tenant_id, new)
        return await self._sends.submit((tenant_id, new))

    async def _send_alone(self, tenant_id: TenantId, new: NewMessage) -> Sent:
        if new.idempotency_key:
            earlier = await self._by_idempotency_key(tenant_id, new)
            if earlier is not None:
                return earlier, []
        try:
            async with write_transaction(self._engine) as conn:
                return await self._insert_message(conn, tenant_id, new)
        except IntegrityError:
            earlier = (
                await self._by_idempotency_key(tenant_id, new) if new.idempotency_key else None
            )
            if earlier is None:
                raise
            return earlier, []

    async def _insert_message(
        self, conn: AsyncConnection, tenant_id: TenantId, new: NewMessage
    ) -> Sent:
        # Take the next seq if the channel is the tenant's and the sender may write there
        # (a member, or anyone in a public channel) in one statement.
        member = _is_member(new.user_id)
        allowed = [channels.c.id == new.channel_id, channels.c.tenant_id == tenant_id]
        if new.user_id:
            allowed.append(or_(member, channels.c.type == ChannelType.PUBLIC.value))
        taken = (
            await conn.execute(
                update(channels)
                .where(*allowed)
                .values(last_seq=channels.c.last_seq + 1)
                .returning(channels.c.last_seq, member.label("is_member"))
            )
        ).first()
        if taken is None:
            # Why not: say so precisely (ChannelNotFound, or not a member).
            channel = await _load_channel(conn, tenant_id, new.channel_id)
            raise _not_a_member(new, channel.type)
        seq = int(taken.last_seq)
        channel_id = ChannelId(new.channel_id)
        recorded: list[ev.ChatEvent] = []
        if new.user_id and not taken.is_member:  # a public channel: writing joins it
            await self._ensure_users(conn, tenant_id, [new.user_id])
            _, recorded = await self._join_as(
                conn, tenant_id, channel_id, new.user_id, Role.MEMBER, seq - 1
            )
        if new.reply_to:
            parent = await conn.execute(
                select(messages.c.id).where(
                    messages.c.id == new.reply_to, messages.c.channel_id == channel_id
                )
            )
            if parent.first() is None:
                raise WrongState(f"reply_to: message {new.reply_to!r} is not in this channel")
        message = _new_message(tenant_id, new, seq, self._clock())
        await conn.execute(insert(messages).values(_message_row(message, new.idempotency_key)))
        created = drafts.message_event(vocab.MESSAGE_CREATED, message)
        return message, recorded + await self._record(conn, tenant_id, [created])

    async def _send_batch(
        self, batch: list[tuple[TenantId, NewMessage]]
    ) -> list[Sent | BaseException]:
        """Group commit: store many sends in one transaction, each answered on its own."""
        try:
            async with write_transaction(self._engine) as conn:
                outcomes, alone = await self._insert_batch(conn, batch)
        except IntegrityError:
            # Another process stored one of these idempotency keys first: one at a time.
            return [await self._outcome_alone(*item) for item in batch]
        for index in alone:
            outcomes[index] = await self._outcome_alone(*batch[index])
        return [_answered(outcome) for outcome in outcomes]

    async def _outcome_alone(self, tenant_id: TenantId, new: NewMessage) -> Sent | BaseException:
        try:
            return await self._send_alone(tenant_id, new)
        except Exception as exc:
            return exc

    async def _insert_batch(
        self, conn: AsyncConnection, batch: list[tuple[TenantId, NewMessage]]
    ) -> tuple[list[Sent | BaseException | None], list[int]]:
        """Store the sends of ``batch`` that need nothing but a seq and a row; answer the
        others with their error, and list those that must run alone (a first write to a
        public channel, which joins it)."""
        outcomes: list[Sent | BaseException | None] = [None] * len(batch)
        alone: list[int] = []
        channel_ids = sorted({new.channel_id for _, new in batch})
        # The channels' rows are locked in id order, so batches never deadlock each other.
        locked = {
            row.id: row
            for row in await conn.execute(
                select(channels.c.id, channels.c.tenant_id, channels.c.type, channels.c.last_seq)
                .where(channels.c.id.in_(channel_ids))
                .order_by(channels.c.id)
                .with_for_update()
            )
        }
        senders = sorted({new.user_id for _, new in batch if new.user_id})
        members: set[tuple[str, str]] = set()
        if senders:
            found = await conn.execute(
                select(channel_members.c.channel_id, channel_members.c.user_id).where(
                    channel_members.c.channel_id.in_(channel_ids),
                    channel_members.c.user_id.in_(senders),
                )
            )
            members = {(row.channel_id, row.user_id) for row in found}
        stored = await _by_idempotency_keys(conn, channel_ids, [new for _, new in batch])
        last_seq = {channel_id: int(row.last_seq) for channel_id, row in locked.items()}
        now = self._clock()
        placed: list[tuple[int, Message, str]] = []
        first_with_key: dict[tuple[str, str], int] = {}
        repeats: list[tuple[int, int]] = []
        for index, (tenant_id, new) in enumerate(batch):
            channel = locked.get(new.channel_id)
            key = (new.channel_id, new.idempotency_key)
            if channel is None or channel.tenant_id != tenant_id:
                outcomes[index] = ChannelNotFound(new.channel_id)
            elif new.idempotency_key and key in stored:
                outcomes[index] = (stored[key], [])
            elif new.idempotency_key and key in first_with_key:
                repeats.append((index, first_with_key[key]))
            elif new.user_id and (new.channel_id, new.user_id) not in members:
                if channel.type == ChannelType.PUBLIC.value:
                    alone.append(index)
                else:
                    outcomes[index] = _not_a_member(new, ChannelType(channel.type))
            else:
                if new.idempotency_key:
                    first_with_key[key] = index
                last_seq[new.channel_id] += 1
                message = _new_message(tenant_id, new, last_seq[new.channel_id], now)
                placed.append((index, message, new.idempotency_key))
        if placed:
            await conn.execute(
                update(channels)
                .where(channels.c.id == bindparam("taken_id"))
                .values(last_seq=bindparam("taken_seq")),
                [
                    {"taken_id": channel_id, "taken_seq": seq}
                    for channel_id, seq in last_seq.items()
                    if seq != locked[channel_id].last_seq
                ],
            )
            await conn.execute(
                insert(messages), [_message_row(message, key) for _, message, key in placed]
            )
            recorded = await self._record_many(
                conn,
                [
                    (m.tenant_id, drafts.message_event(vocab.MESSAGE_CREATED, m))
                    for _, m, _ in placed
                ],
            )
            for (index, message, _), event in zip(placed, recorded, strict=True):
                outcomes[index] = (message, [event])
        for index, first in repeats:
            outcome = outcomes[first]
            assert isinstance(outcome, tuple)
            outcomes[index] = (outcome[0], [])
        return outcomes, alone

    async def _by_idempotency_key(self, tenant_id: str, new: NewMessage) -> Message | None:
        async with self._engine.connect() as conn:
            await _load_channel(conn, tenant_id, new.channel_id)
            stored = await _by_idempotency_keys(conn, [new.channel_id], [new])
            return stored.get((new.channel_id, new.idempotency_key))

    async def edit_message(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str, content: str
    ) -> tuple[Message, list[ev.ChatEvent]]:
        async with write_transaction(self._engine) as conn:
            await _load_channel(conn, tenant_id, channel_id)
            message = await _load_message(conn, channel_id, message_id)
            if message.deleted:
                raise WrongState("a deleted message cannot be edited")
            if not rules.may_edit(message, user_id):
                raise NotAllowed("only the sender may edit a message")
            now = self._clock()
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(content=content, edited=True, updated_at=now)
            )
            message = replace(message, content=content, edited=True, updated_at=now)
            message = (await _with_reactions(conn, [message]))[0]
            recorded = await self._record(
                conn, tenant_id, [drafts.message_event(vocab.MESSAGE_UPDATED, message)]
            )
        return message, recorded

    async def delete_message(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str
    ) -> tuple[Message, list[ev.ChatEvent]]:
        async with write_transaction(self._engine) as conn:
            await _load_channel(conn, tenant_id, channel_id)
            message = await _load_message(conn, channel_id, message_id)
            if message.deleted:
                return message, []
            member = await _load_member(conn, channel_id, user_id) if user_id else None
            if not rules.may_delete(message, user_id, member):
                raise NotAllowed("only the sender or a channel owner may delete a message")
            now = self._clock()
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(content="", attachment_ids=[], deleted=True, updated_at=now)
            )
            await conn.execute(delete(reactions).where(reactions.c.message_id == message_id))
            message = replace(
                message,
                content="",
                attachment_ids=(),
                deleted=True,
                updated_at=now,
                reaction_counts=(),
            )
            recorded = await self._record(
                conn, tenant_id, [drafts.message_event(vocab.MESSAGE_DELETED, message)]
            )
        return message, recorded

    async def get_message(self, tenant_id: str, channel_id: str, message_id: str) -> Message:
        async with self._engine.connect() as conn:
            await _load_channel(conn, tenant_id, channel_id)
            message = await _load_message(conn, channel_id, message_id)
            return (await _with_reactions(conn, [message]))[0]

    async def list_messages(self, tenant_id: str, query: MessageQuery) -> list[Message]:
        """A page of the channel's messages (tombstones included), per ``query``."""
        seq = messages.c.seq
        statement = (
            select(messages)
            .where(messages.c.channel_id == query.channel_id)
            .order_by(seq.desc() if query.newest_first else seq)
            .limit(query.limit)
            .offset(query.offset)
        )
        if query.before_seq:
            statement = statement.where(seq < query.before_seq)
        if query.after_seq:
            statement = statement.where(seq > query.after_seq)
        if query.reply_to:
            statement = statement.where(messages.c.reply_to == query.reply_to)
        async with self._engine.connect() as conn:
            await _load_channel(conn, tenant_id, query.channel_id)
            rows = (await conn.execute(statement)).all()
            return await _with_reactions(conn, [_message(r._mapping) for r in rows])

    # -- reactions and read state -------------------------------------------------------

    async def add_reaction(
        self, tenant_id: TenantId, channel_id: str, message_id: str, user_id: str, emoji: str
    ) -> tuple[Message, list[ev.ChatEvent]]:
        async with write_transaction(self._engine) as conn:
            channel = await _load_channel(conn, tenant_id, channel_id)
            message = await _load_message(conn, channel_id, message_id)
            if message.deleted:
                raise WrongState("a deleted message cannot take reactions")
            drafts_before: list[ev.ChatEvent] = []
            if await _load_member(conn, channel_id, user_id) is None:
                if not rules.joins_by_writing(channel):
                    raise NotAllowed(f"user {user_id!r} is not a member of this channel")
                await self._ensure_users(conn, tenant_id, [user_id])
                _, drafts_before = await self._join(conn, channel, user_id, Role.MEMBER)
            result = await conn.execute(
                insert_ignoring_conflicts(conn, reactions).values(
                    id=new_id(),
                    tenant_id=tenant_id,
                    message_id=message_id,
                    user_id=user_id,
                    emoji=emoji,
                    created_at=self._clock(),
                )
            )
            message = (await _with_reactions(conn, [message]))[0]
            if result.rowcount != 1:
                return message, drafts_before
            count = dict(message.reaction_counts).get(emoji, 0)
            recorded = await self._record(
                conn,
                tenant_id,
                [drafts.reaction_event(vocab.REACTION_ADDED, message, user_id, emoji, count)],
            )
        return message, drafts_before + recorded

    async def remove_reaction(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str, emoji: str
    ) -> tuple[Message, list[ev.ChatEvent]]:
        async with write_transaction(self._engine) as conn:
            await _load_channel(conn, tenant_id, channel_id)
            message = await _load_message(conn, channel_id, message_id)
            result = await conn.execute(
                delete(reactions).where(
                    reactions.c.message_id == message_id,
                    reactions.c.user_id == user_id,
                    reactions.c.emoji == emoji,
                )
            )
            message = (await _with_reactions(conn, [message]))[0]
            if result.rowcount != 1:
                return message, []
            count = dict(message.reaction_counts).get(emoji, 0)
            recorded = await self._record(
                conn,
                tenant_id,
                [drafts.reaction_event(vocab.REACTION_REMOVED, message, user_id, emoji, count)],
            )
        return message, recorded

    async def mark_read(self, tenant_id: str, channel_id: str, user_id: str, seq: int) -> Member:
        """Move the member's read position to ``seq`` (0 = the newest); never backwards."""
        async with write_transaction(self._engine) as conn:
            channel = await _load_channel(conn, tenant_id, channel_id)
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
            member = await _load_member(conn, channel_id, user_id)
            if member is None:
                raise NotAllowed(f"user {user_id!r} is not a member of this channel")
        return member

    async def unread_counts(self, tenant_id: str, user_id: str) -> list[UnreadCount]:
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


# -- row helpers ----------------------------------------------------------------------


def _after(time_column: Any, id_column: Any, position: tuple[datetime, str]) -> Any:
    time, key = position
    return or_(time_column > time, and_(time_column == time, id_column > key))


def _user_query(tenant_id: str, user_id: str) -> Any:
    return select(users).where(users.c.tenant_id == tenant_id, users.c.id == user_id)


def _user(row: Any) -> User:
    return User(
        tenant_id=TenantId(row["tenant_id"]),
        id=UserId(row["id"]),
        username=row["username"],
        email=row["email"] or "",
        avatar=row["avatar"] or "",
        metadata=row[users.c.metadata_],
        created_at=as_utc(row["created_at"]),
    )


async def _load_channel(conn: AsyncConnection, tenant_id: str, channel_id: str) -> Channel:
    row = (
        await conn.execute(
            select(channels, _member_count).where(
                channels.c.tenant_id == tenant_id, channels.c.id == channel_id
            )
        )
    ).first()
    if row is None:
        raise ChannelNotFound(channel_id)
    return _channel(row._mapping)


def _channel(row: Any) -> Channel:
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


def _member_row(tenant_id: str, member: Member) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "channel_id": member.channel_id,
        "user_id": member.user_id,
        "role": member.role.value,
        "last_read_seq": member.last_read_seq,
        "joined_at": member.joined_at,
    }


async def _load_member(conn: AsyncConnection, channel_id: str, user_id: str) -> Member | None:
    row = (
        await conn.execute(
            select(channel_members).where(
                channel_members.c.channel_id == channel_id, channel_members.c.user_id == user_id
            )
        )
    ).first()
    return _member(row._mapping) if row else None


def _member(row: Any) -> Member:
    return Member(
        channel_id=ChannelId(row["channel_id"]),
        user_id=UserId(row["user_id"]),
        role=Role(row["role"]),
        joined_at=as_utc(row["joined_at"]),
        last_read_seq=int(row["last_read_seq"]),
    )


async def _load_message(conn: AsyncConnection, channel_id: str, message_id: str) -> Message:
    row = (
        await conn.execute(
            select(messages).where(messages.c.id == message_id, messages.c.channel_id == channel_id)
        )
    ).first()
    if row is None:
        raise MessageNotFound(message_id)
    return _message(row._mapping)


def _message(row: Any) -> Message:
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
    )


def _new_message(tenant_id: TenantId, new: NewMessage, seq: int, now: datetime) -> Message:
    return Message(
        tenant_id=tenant_id,
        id=MessageId(new_id()),
        channel_id=ChannelId(new.channel_id),
        user_id=new.user_id,
        content=new.content,
        message_type=new.message_type,
        reply_to=new.reply_to,
        attachment_ids=new.attachment_ids,
        seq=seq,
        created_at=now,
        updated_at=now,
    )


def _message_row(message: Message, idempotency_key: str) -> dict[str, Any]:
    return {
        "id": message.id,
        "tenant_id": message.tenant_id,
        "channel_id": message.channel_id,
        "user_id": message.user_id,
        "content": message.content,
        "message_type": message.message_type,
        "reply_to": message.reply_to or None,
        "attachment_ids": list(message.attachment_ids),
        "seq": message.seq,
        "idempotency_key": idempotency_key or None,
        "edited": False,
        "deleted": False,
        "created_at": message.created_at,
        "updated_at": message.updated_at,
    }


def _is_member(user_id: str) -> Exists:
    """``user_id`` is a member of the channel of the row (``channels``) being selected."""
    return (
        exists()
        .where(
            channel_members.c.channel_id == channels.c.id,
            channel_members.c.user_id == user_id,
        )
        .correlate(channels)
    )


def _not_a_member(new: NewMessage, channel_type: ChannelType) -> NotAllowed:
    return NotAllowed(f"user {new.user_id!r} is not a member of this {channel_type} channel")


def _answered(outcome: Sent | BaseException | None) -> Sent | BaseException:
    assert outcome is not None, "every send of a batch is answered"
    return outcome


async def _by_idempotency_keys(
    conn: AsyncConnection, channel_ids: Sequence[str], sends: Sequence[NewMessage]
) -> dict[tuple[str, str], Message]:
    """The stored messages of ``channel_ids`` that carry one of the idempotency keys of
    ``sends``, by ``(channel_id, key)``."""
    keys = sorted({new.idempotency_key for new in sends if new.idempotency_key})
    if not keys:
        return {}
    rows = (
        await conn.execute(
            select(messages).where(
                messages.c.channel_id.in_(channel_ids), messages.c.idempotency_key.in_(keys)
            )
        )
    ).all()
    found = await _with_reactions(conn, [_message(row._mapping) for row in rows])
    return {
        (message.channel_id, row._mapping["idempotency_key"]): message
        for row, message in zip(rows, found, strict=True)
    }


async def _with_reactions(conn: AsyncConnection, found: list[Message]) -> list[Message]:
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
