"""What every part of the SQL chat store shares: the engine, the clock, recording events
in the event log (the outbox), and creating users and members on first sight.

Each entity's class (:mod:`.users`, :mod:`.channels`, :mod:`.members`,
:mod:`.messages`, :mod:`.reactions`, :mod:`.outbox`) extends
:class:`SqlStoreBase`, and :class:`~.sql.SqlChatStore` combines them. The
helpers here run inside the caller's transaction and never commit: an event is
recorded by the transaction that makes its change, so it exists exactly when
the change committed, and it is returned so the caller can publish it after
commit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels import drafts
from gateway_bridge.gateway.channels.models import Channel, ChannelId, Member, Role, UserId
from gateway_bridge.gateway.channels.store.rows import member_row
from service_kit.clock import Clock, utcnow
from service_kit.db import insert_ignoring_conflicts
from service_kit.schema import channel_members, events, users, webhooks
from service_kit.validation import new_id

#: ``webhooks.state`` of a webhook that receives deliveries (``WebhookState.ACTIVE``; the
#: chat store does not import the event store).
ACTIVE_WEBHOOK = "active"


async def without_webhooks(conn: AsyncConnection, tenant_ids: Collection[str]) -> set[str]:
    """The tenants among ``tenant_ids`` that have no active webhook. Their events are
    recorded with ``webhooks_done`` set, so the dispatcher never touches them (it would
    find no webhook to deliver them to). Read in the recording transaction, so a webhook
    whose creation committed before it gets the events."""
    with_hooks = await conn.execute(
        select(webhooks.c.tenant_id)
        .where(webhooks.c.tenant_id.in_(sorted(tenant_ids)), webhooks.c.state == ACTIVE_WEBHOOK)
        .distinct()
    )
    return set(tenant_ids) - set(with_hooks.scalars())


class SqlStoreBase:
    """The engine and clock of a SQL chat store, and the writes its entities share."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    async def _record(
        self, conn: AsyncConnection, tenant_id: str, event_drafts: Sequence[ev.EventDraft]
    ) -> list[ev.ChatEvent]:
        """Append the tenant's ``event_drafts`` to the log, in order (see :meth:`_record_many`)."""
        return await self._record_many(conn, [(tenant_id, d) for d in event_drafts])

    async def _record_many(
        self, conn: AsyncConnection, event_drafts: Sequence[tuple[str, ev.EventDraft]]
    ) -> list[ev.ChatEvent]:
        """Append ``(tenant_id, draft)`` events to the log, in order, in one statement; the
        events as recorded (with their cursors), in the same order.

        The rows are one multi-row ``INSERT``, which numbers them in order; their cursors
        are matched back by ``event_id`` (asking SQLAlchemy to sort ``RETURNING`` instead
        makes it insert one row per statement on SQLite)."""
        if not event_drafts:
            return []
        now = self._clock()
        ids = [new_id() for _ in event_drafts]
        quiet = await without_webhooks(conn, {tenant_id for tenant_id, _ in event_drafts})
        result = await conn.execute(
            insert(events).returning(events.c.id, events.c.event_id),
            [
                {
                    "event_id": event_id,
                    "tenant_id": tenant_id,
                    "webhooks_done": tenant_id in quiet,
                    "channel_id": d.channel_id,
                    "seq": d.seq,
                    "name": d.name,
                    "data": dict(d.data),
                    "created_at": now,
                }
                for event_id, (tenant_id, d) in zip(ids, event_drafts, strict=True)
            ],
        )
        cursors = {row.event_id: int(row.id) for row in result.all()}
        return [
            ev.ChatEvent.of(
                cursor=cursors[event_id],
                event_id=event_id,
                tenant_id=tenant_id,
                channel_id=d.channel_id,
                seq=d.seq,
                name=d.name,
                data=d.data,
                created_at=now,
            )
            for event_id, (tenant_id, d) in zip(ids, event_drafts, strict=True)
        ]

    async def _ensure_users(
        self, conn: AsyncConnection, tenant_id: str, user_ids: Collection[str]
    ) -> None:
        """Create the users the tenant has not seen before (username = id); the empty
        user id (the tenant's backend itself) is never a user."""
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

    async def _join(
        self, conn: AsyncConnection, channel: Channel, user_id: str, role: Role
    ) -> tuple[Member, list[ev.ChatEvent]]:
        """Make ``user_id`` (an existing user, not yet a member) a member of ``channel``."""
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
        """Insert the membership and record ``user:joined`` at the channel's ``last_seq``."""
        member = Member(channel_id, UserId(user_id), role, self._clock())
        await conn.execute(insert(channel_members).values(member_row(tenant_id, member)))
        recorded = await self._record(conn, tenant_id, [drafts.joined(member, last_seq)])
        return member, recorded
