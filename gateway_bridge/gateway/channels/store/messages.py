"""The chat store's messages: send (with group commit), edit, delete, get and list.

A channel's message ``seq`` is taken from ``channels.last_seq`` inside the
sending transaction, under the channel row's lock (``UPDATE ... SET last_seq =
last_seq + 1``, or, for a batch of concurrent sends stored together, ``SELECT
... FOR UPDATE`` in channel id order, then one write of every channel, message and
event of the batch, :mod:`.send_batch`): the lock
serializes senders of one channel (PostgreSQL; SQLite serializes all writers),
a rollback gives the numbers back, and so seqs are gap-free.

A send with an idempotency key the channel already stored returns the stored
message and records nothing. The channel lock and that lookup, both taken before a
batch writes, keep a batch clear of ``UNIQUE(channel_id, seq)`` and
``UNIQUE(channel_id, idempotency_key)``; a send that hits one anyway (its batch is
then retried one send at a time) is counted in ``keel_send_conflicts_total``, so a
slow path taken often shows. Every change records its events in the same
transaction (the outbox) and returns them; a sender is answered only after its
transaction committed. A send's attachments are checked in its transaction
(:mod:`.attachments`), and deleting a message detaches its files in the deleting
one. What a batch decides is :mod:`.group_commit`'s pure
:func:`~.group_commit.plan_batch`; this module reads and writes around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from prometheus_client import Counter
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway_bridge import vocabulary as vocab
from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels import drafts, rules
from gateway_bridge.gateway.channels.errors import NotAllowed, WrongState
from gateway_bridge.gateway.channels.models import (
    ChannelId,
    ChannelType,
    Message,
    MessageQuery,
    NewMessage,
    Role,
)
from gateway_bridge.gateway.channels.store.attachments import (
    detach,
    ready_files,
    record_attachments,
)
from gateway_bridge.gateway.channels.store.base import SqlStoreBase
from gateway_bridge.gateway.channels.store.group_commit import (
    Alone,
    Earlier,
    Placed,
    Plan,
    Refused,
    RepeatOf,
    attachments_for,
    new_message,
    not_a_member,
    plan_batch,
)
from gateway_bridge.gateway.channels.store.interface import Sent
from gateway_bridge.gateway.channels.store.rows import (
    is_member,
    load_channel,
    load_channel_message,
    load_member,
    message_row,
    to_message,
    with_reactions,
)
from gateway_bridge.gateway.channels.store.send_batch import (
    lock_channels,
    lock_channels_pg,
    store_placed,
    store_placed_pg,
)
from service_kit import tracing
from service_kit.auth import TenantId
from service_kit.batching import Batcher
from service_kit.clock import Clock, utcnow
from service_kit.db import driver_transaction, write_transaction
from service_kit.schema import channels, messages, reactions
from service_kit.validation import new_id

#: Most sends stored in one transaction (group commit).
SEND_BATCH = 128

SEND_CONFLICTS = Counter(
    "keel_send_conflicts_total",
    "Sends that hit a unique constraint and were retried one at a time.",
)

#: A send of a batch answered: stored or found (a ``Sent``), its error, or None for a
#: send that runs alone once the batch has committed.
Answer = Sent | BaseException | None


class SqlMessages(SqlStoreBase):
    """Messages of the chat store, in SQL; concurrent sends share transactions."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow) -> None:
        super().__init__(engine, clock=clock)
        self._dialect = engine.dialect.name
        # SQLite has one writer at a time, so one batch at a time. PostgreSQL overlaps two:
        # the second hides the first's round trips, and more would only cut the sends into
        # smaller batches, each paying a batch's fixed cost (with four, the api scenario's
        # batches averaged 3.2 sends: under load the gateway's CPU is the limit, not the
        # database).
        self._sends: Batcher[tuple[TenantId, NewMessage], Sent] = Batcher(
            self._send_batch,
            max_batch=SEND_BATCH,
            max_in_flight=1 if engine.dialect.name == "sqlite" else 2,
        )

    async def send_message(self, tenant_id: TenantId, new: NewMessage) -> Sent:
        """Store ``new`` with the channel's next seq, or return the message an earlier send
        with the same idempotency key stored (and no events).

        Concurrent sends share transactions (group commit, :meth:`_send_batch`); a reply
        runs in a transaction of its own. When tracing is on, in a ``keel.db.send_message``
        span from the submission to the answer (the wait for the batch, its transaction
        and commit)."""
        tracer = tracing.tracer()
        if tracer is None:
            return await self._send(tenant_id, new)
        with tracer.start_as_current_span(
            "keel.db.send_message",
            kind=tracing.SpanKind.CLIENT,
            attributes={"db.system.name": self._dialect, "keel.channel_id": new.channel_id},
        ) as span:
            sent = await self._send(tenant_id, new)
            span.set_attribute("keel.seq", sent[0].seq)
            return sent

    async def _send(self, tenant_id: TenantId, new: NewMessage) -> Sent:
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
            SEND_CONFLICTS.inc()
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
        member = is_member(new.user_id)
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
            channel = await load_channel(conn, tenant_id, new.channel_id)
            raise not_a_member(new, channel.type)
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
        ready = await ready_files(conn, {(tenant_id, f) for f in new.attachment_ids})
        attachments = attachments_for(tenant_id, new.user_id, new.attachment_ids, ready)
        message = new_message(tenant_id, new, seq, self._clock(), new_id(), attachments)
        await conn.execute(insert(messages).values(message_row(message, new.idempotency_key)))
        await record_attachments(conn, [message])
        created = drafts.message_event(vocab.MESSAGE_CREATED, message)
        return message, recorded + await self._record(conn, tenant_id, [created])

    async def _send_batch(
        self, batch: list[tuple[TenantId, NewMessage]]
    ) -> list[Sent | BaseException]:
        """Group commit: store many sends in one transaction, each answered on its own."""
        try:
            if self._dialect == "postgresql" and not any(
                new.idempotency_key or new.attachment_ids for _, new in batch
            ):
                answers = await self._insert_plain_batch(batch)
            else:
                async with write_transaction(self._engine) as conn:
                    answers = await self._insert_batch(conn, batch)
        except IntegrityError:
            # Another process stored one of these idempotency keys first: one at a time.
            SEND_CONFLICTS.inc(len(batch))
            return [await self._outcome_alone(*item) for item in batch]
        return [
            answer if answer is not None else await self._outcome_alone(*item)
            for answer, item in zip(answers, batch, strict=True)
        ]

    async def _outcome_alone(self, tenant_id: TenantId, new: NewMessage) -> Sent | BaseException:
        try:
            return await self._send_alone(tenant_id, new)
        except Exception as exc:
            return exc

    async def _insert_batch(
        self, conn: AsyncConnection, batch: list[tuple[TenantId, NewMessage]]
    ) -> list[Answer]:
        """Lock the batch's channels, read what the plan needs, and store the sends that
        need nothing but a seq and a row; every send answered (None: it runs alone).

        The statements are :mod:`.send_batch`'s: on PostgreSQL a batch without
        idempotency keys or attachments is four round trips (``BEGIN``, lock, write,
        ``COMMIT``) whatever its size (:meth:`_insert_plain_batch`)."""
        sends = [new for _, new in batch]
        channel_ids = sorted({new.channel_id for new in sends})
        senders = sorted({new.user_id for new in sends if new.user_id})
        locked, members = await lock_channels(conn, channel_ids, senders)
        now = self._clock()
        plan = plan_batch(
            batch,
            channels=locked,
            members=members,
            stored=await _by_idempotency_keys(conn, channel_ids, sends),
            ready=await ready_files(
                conn, {(tenant_id, f) for tenant_id, new in batch for f in new.attachment_ids}
            ),
            now=now,
            make_id=new_id,
        )
        placed = plan.placed
        created = await store_placed(conn, placed, dict(plan.last_seq), now)
        await record_attachments(conn, [p.message for p in placed])
        return _answers(plan, created)

    async def _insert_plain_batch(self, batch: list[tuple[TenantId, NewMessage]]) -> list[Answer]:
        """:meth:`_insert_batch` on PostgreSQL for a batch without idempotency keys or
        attachments (nothing to look up but the channels): the same two statements between
        ``BEGIN`` and ``COMMIT``, sent through asyncpg itself
        (:func:`~service_kit.db.driver_transaction`) — the most common batch, and
        SQLAlchemy's own work around four round trips cost more than the statements."""
        channel_ids = sorted({new.channel_id for _, new in batch})
        senders = sorted({new.user_id for _, new in batch if new.user_id})
        async with driver_transaction(self._engine) as driver:
            locked, members = await lock_channels_pg(driver, channel_ids, senders)
            now = self._clock()
            # Nothing stored to find, nothing to attach: the plan needs only the locks.
            plan = plan_batch(batch, channels=locked, members=members, now=now, make_id=new_id)
            created = await store_placed_pg(driver, plan.placed, dict(plan.last_seq), now)
        return _answers(plan, created)

    async def _by_idempotency_key(self, tenant_id: str, new: NewMessage) -> Message | None:
        async with self._engine.connect() as conn:
            await load_channel(conn, tenant_id, new.channel_id)
            stored = await _by_idempotency_keys(conn, [new.channel_id], [new])
            return stored.get((new.channel_id, new.idempotency_key))

    async def edit_message(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str, content: str
    ) -> tuple[Message, list[ev.ChatEvent]]:
        """Replace the content (only the sender, or the backend, may); marks it edited."""
        async with write_transaction(self._engine) as conn:
            message = await load_channel_message(conn, tenant_id, channel_id, message_id)
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
            message = (await with_reactions(conn, [message]))[0]
            recorded = await self._record(
                conn, tenant_id, [drafts.message_event(vocab.MESSAGE_UPDATED, message)]
            )
        return message, recorded

    async def delete_message(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str
    ) -> tuple[Message, list[ev.ChatEvent]]:
        """Leave a tombstone (no content, attachments or reactions; the seq stays); a
        deleted message is returned unchanged."""
        async with write_transaction(self._engine) as conn:
            message = await load_channel_message(conn, tenant_id, channel_id, message_id)
            if message.deleted:
                return message, []
            member = await load_member(conn, channel_id, user_id) if user_id else None
            if not rules.may_delete(message, user_id, member):
                raise NotAllowed("only the sender or a channel owner may delete a message")
            now = self._clock()
            await conn.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(content="", attachment_ids=[], attachments=[], deleted=True, updated_at=now)
            )
            await conn.execute(delete(reactions).where(reactions.c.message_id == message_id))
            await detach(conn, message_id)
            message = replace(
                message,
                content="",
                attachment_ids=(),
                attachments=(),
                deleted=True,
                updated_at=now,
                reaction_counts=(),
            )
            recorded = await self._record(
                conn, tenant_id, [drafts.message_event(vocab.MESSAGE_DELETED, message)]
            )
        return message, recorded

    async def get_message(self, tenant_id: str, channel_id: str, message_id: str) -> Message:
        """The message with its reaction counts; raises ``ChannelNotFound``/``MessageNotFound``."""
        async with self._engine.connect() as conn:
            message = await load_channel_message(conn, tenant_id, channel_id, message_id)
            return (await with_reactions(conn, [message]))[0]

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
            await load_channel(conn, tenant_id, query.channel_id)
            rows = (await conn.execute(statement)).all()
            return await with_reactions(conn, [to_message(r._mapping) for r in rows])


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
    found = await with_reactions(conn, [to_message(row._mapping) for row in rows])
    return {
        (message.channel_id, row._mapping["idempotency_key"]): message
        for row, message in zip(rows, found, strict=True)
    }


def _answers(plan: Plan, created: Sequence[ev.ChatEvent]) -> list[Answer]:
    """Each send of ``plan`` answered: its stored message with its event (``created``
    holds the events of the placed sends, in order), the message an earlier send stored,
    its refusal, or None for one that runs alone."""
    events = iter(created)
    answers: list[Answer] = []
    for outcome in plan.outcomes:
        match outcome:
            case Placed(message=message):
                answers.append((message, [next(events)]))
            case Earlier(message=message) | RepeatOf(message=message):
                answers.append((message, []))
            case Refused(error=error):
                answers.append(error)
            case Alone():
                answers.append(None)
    return answers
