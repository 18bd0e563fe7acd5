"""The statements of a group-commit batch of sends: few round trips, prepared once.

A batch (:meth:`.messages.SqlMessages._insert_batch`) reads the state its plan needs
and writes the plan, inside one ``write_transaction``:

- :func:`lock_channels` locks the batch's channel rows (in id order, so batches never
  deadlock each other) and reads which senders are members of them, in one statement;
- :func:`store_placed` writes the plan: the channels' new ``last_seq``, the messages and
  their ``message:created`` events.

On PostgreSQL each is one statement whose text never changes (the rows travel as arrays,
unnested by the server), so asyncpg prepares it once per connection and a batch costs
four round trips (``BEGIN``, lock, write, ``COMMIT``) whatever its size. On SQLite,
whose statements cost no round trip, they are SQLAlchemy Core statements (compiled once,
from SQLAlchemy's cache) run with ``executemany``.

Both record an event with ``webhooks_done`` already set when its tenant has no active
webhook (:func:`.base.without_webhooks`), so the webhook dispatcher never touches the
events of tenants without webhooks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway_bridge import vocabulary as vocab
from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels import drafts
from gateway_bridge.gateway.channels.drafts import attachment_data
from gateway_bridge.gateway.channels.models import ChannelType
from gateway_bridge.gateway.channels.store.base import ACTIVE_WEBHOOK, without_webhooks
from gateway_bridge.gateway.channels.store.group_commit import LockedChannel, Placed
from gateway_bridge.gateway.channels.store.rows import message_row
from service_kit.schema import channel_members, channels, events, messages
from service_kit.validation import new_id

_PG_LOCK = """
SELECT c.id, c.tenant_id, c.type, c.last_seq,
       ARRAY(SELECT m.user_id FROM channel_members m
             WHERE m.channel_id = c.id AND m.user_id = ANY($2::varchar[])) AS members
FROM channels c
WHERE c.id = ANY($1::varchar[])
ORDER BY c.id
FOR UPDATE OF c
"""

# One statement: the channels' new last_seq, the messages, and their events (returned
# with their cursors). Data-modifying CTEs all run, whatever the outer query reads.
_PG_STORE = """
WITH taken AS (
    UPDATE channels SET last_seq = t.last_seq
    FROM unnest($1::varchar[], $2::bigint[]) AS t(id, last_seq)
    WHERE channels.id = t.id
), stored AS (
    INSERT INTO messages (id, tenant_id, channel_id, user_id, content, message_type,
                          attachment_ids, attachments, seq, idempotency_key, edited, deleted,
                          created_at, updated_at)
    SELECT m.id, m.tenant_id, m.channel_id, m.user_id, m.content, m.message_type,
           m.attachment_ids::jsonb, m.attachments::jsonb, m.seq, NULLIF(m.idempotency_key, ''),
           false, false, $3, $3
    FROM unnest($4::varchar[], $5::varchar[], $6::varchar[], $7::varchar[], $8::text[],
                $9::varchar[], $10::text[], $11::text[], $12::bigint[], $13::varchar[])
         AS m(id, tenant_id, channel_id, user_id, content, message_type, attachment_ids,
              attachments, seq, idempotency_key)
)
INSERT INTO events (event_id, tenant_id, channel_id, seq, name, data, created_at, webhooks_done)
SELECT e.event_id, e.tenant_id, e.channel_id, e.seq, $14, e.data::jsonb, $3,
       NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.tenant_id = e.tenant_id AND w.state = $15)
FROM unnest($17::varchar[], $5::varchar[], $6::varchar[], $12::bigint[], $16::text[])
     WITH ORDINALITY AS e(event_id, tenant_id, channel_id, seq, data, n)
ORDER BY e.n
RETURNING id, event_id
"""


async def lock_channels(
    conn: AsyncConnection, channel_ids: Sequence[str], senders: Sequence[str]
) -> tuple[list[LockedChannel], set[tuple[str, str]]]:
    """The rows of ``channel_ids`` that exist, locked until the transaction ends (in id
    order), and the ``(channel_id, user_id)`` memberships of ``senders`` in them."""
    if conn.dialect.name == "postgresql":
        return _locked(
            (await conn.exec_driver_sql(_PG_LOCK, (list(channel_ids), list(senders)))).all()
        )
    # SQLite: the transaction's BEGIN IMMEDIATE already holds the one write lock.
    member_ids = (
        select(func.json_group_array(channel_members.c.user_id))
        .where(
            channel_members.c.channel_id == channels.c.id,
            channel_members.c.user_id.in_(senders),
        )
        .correlate(channels)
        .scalar_subquery()
    )
    rows = (
        await conn.execute(
            select(
                channels.c.id,
                channels.c.tenant_id,
                channels.c.type,
                channels.c.last_seq,
                member_ids.label("members"),
            )
            .where(channels.c.id.in_(channel_ids))
            .order_by(channels.c.id)
        )
    ).all()
    return _locked([(*r[:4], json.loads(r.members or "[]")) for r in rows])


async def lock_channels_pg(
    driver: asyncpg.Connection, channel_ids: Sequence[str], senders: Sequence[str]
) -> tuple[list[LockedChannel], set[tuple[str, str]]]:
    """:func:`lock_channels` on PostgreSQL through the driver itself (``driver`` in a
    transaction, :func:`service_kit.db.driver_transaction`)."""
    return _locked(await driver.fetch(_PG_LOCK, list(channel_ids), list(senders)))


def _locked(
    rows: Sequence[Sequence[Any]],
) -> tuple[list[LockedChannel], set[tuple[str, str]]]:
    """The locked channels and memberships of ``(id, tenant_id, type, last_seq, members)``
    rows."""
    locked = [LockedChannel(r[0], r[1], ChannelType(r[2]), int(r[3])) for r in rows]
    return locked, {(r[0], user_id) for r in rows for user_id in r[4]}


async def store_placed(
    conn: AsyncConnection,
    placed: Sequence[Placed],
    last_seq: dict[str, int],
    now: datetime,
) -> list[ev.ChatEvent]:
    """Write the channels' new ``last_seq``, the ``placed`` messages (all stored at
    ``now``) and their ``message:created`` events; the events as recorded, in order."""
    if not placed:
        return []
    created = _created_events(placed, now)
    if conn.dialect.name == "postgresql":
        rows = await conn.exec_driver_sql(_PG_STORE, _pg_store_args(placed, last_seq, created))
        return _recorded(created, rows.all())
    return _recorded(created, await _store_sqlite(conn, placed, last_seq, created))


async def store_placed_pg(
    driver: asyncpg.Connection,
    placed: Sequence[Placed],
    last_seq: dict[str, int],
    now: datetime,
) -> list[ev.ChatEvent]:
    """:func:`store_placed` on PostgreSQL through the driver itself (``driver`` in a
    transaction, :func:`service_kit.db.driver_transaction`)."""
    if not placed:
        return []
    created = _created_events(placed, now)
    return _recorded(
        created, await driver.fetch(_PG_STORE, *_pg_store_args(placed, last_seq, created))
    )


def _created_events(placed: Sequence[Placed], now: datetime) -> list[ev.ChatEvent]:
    """The ``message:created`` events of ``placed``, before they are recorded (cursor 0)."""
    return [
        ev.ChatEvent(
            0,  # its cursor, once recorded
            new_id(),
            p.message.tenant_id,
            p.message.channel_id,
            p.message.seq,
            vocab.MESSAGE_CREATED,
            ev.encode_data(drafts.message_event(vocab.MESSAGE_CREATED, p.message).data),
            now,
        )
        for p in placed
    ]


def _recorded(created: Sequence[ev.ChatEvent], rows: Sequence[Sequence[Any]]) -> list[ev.ChatEvent]:
    """``created`` with the cursors of the ``(id, event_id)`` rows that recorded them."""
    cursors = {row[1]: int(row[0]) for row in rows}
    return [replace(e, cursor=cursors[e.event_id]) for e in created]


def _pg_store_args(
    placed: Sequence[Placed], last_seq: dict[str, int], created: Sequence[ev.ChatEvent]
) -> tuple[Any, ...]:
    """The parameters of ``_PG_STORE``: one array per column."""
    sent = [p.message for p in placed]
    return (
        list(last_seq),
        list(last_seq.values()),
        created[0].created_at,
        [m.id for m in sent],
        [m.tenant_id for m in sent],
        [m.channel_id for m in sent],
        [m.user_id for m in sent],
        [m.content for m in sent],
        [m.message_type for m in sent],
        [_json(list(m.attachment_ids)) if m.attachment_ids else "[]" for m in sent],
        [
            _json([attachment_data(a) for a in m.attachments]) if m.attachments else "[]"
            for m in sent
        ],
        [m.seq for m in sent],
        [p.idempotency_key for p in placed],
        vocab.MESSAGE_CREATED,
        ACTIVE_WEBHOOK,
        [e.data_text for e in created],
        [e.event_id for e in created],
    )


async def _store_sqlite(
    conn: AsyncConnection,
    placed: Sequence[Placed],
    last_seq: dict[str, int],
    created: Sequence[ev.ChatEvent],
) -> Sequence[Any]:
    await conn.execute(
        update(channels)
        .where(channels.c.id == bindparam("taken_id"))
        .values(last_seq=bindparam("taken_seq")),
        [{"taken_id": channel_id, "taken_seq": seq} for channel_id, seq in last_seq.items()],
    )
    await conn.execute(
        insert(messages), [message_row(p.message, p.idempotency_key) for p in placed]
    )
    quiet = await without_webhooks(conn, {e.tenant_id for e in created})
    result = await conn.execute(
        insert(events).returning(events.c.id, events.c.event_id),
        [
            {
                "event_id": e.event_id,
                "tenant_id": e.tenant_id,
                "webhooks_done": e.tenant_id in quiet,
                "channel_id": e.channel_id,
                "seq": e.seq,
                "name": e.name,
                "data": e.data,
                "created_at": e.created_at,
            }
            for e in created
        ],
    )
    return result.all()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
