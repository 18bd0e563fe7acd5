"""The chat store's reactions: add and remove one user's emoji on a message.

A user reacts with an emoji at most once per message (a unique key); adding it
again or removing one that is not there changes nothing and records no event.
A deleted message takes no reactions. In a public channel, reacting joins it,
as writing does.
"""

from __future__ import annotations

from sqlalchemy import delete

from gateway_bridge import vocabulary as vocab
from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels import drafts, rules
from gateway_bridge.gateway.channels.errors import NotAllowed, WrongState
from gateway_bridge.gateway.channels.models import Message, Role
from gateway_bridge.gateway.channels.store.base import SqlStoreBase
from gateway_bridge.gateway.channels.store.rows import (
    load_channel,
    load_channel_message,
    load_member,
    load_message,
    with_reactions,
)
from service_kit.auth import TenantId
from service_kit.db import insert_ignoring_conflicts, write_transaction
from service_kit.schema import reactions
from service_kit.validation import new_id


class SqlReactions(SqlStoreBase):
    """Reactions of the chat store, in SQL."""

    async def add_reaction(
        self, tenant_id: TenantId, channel_id: str, message_id: str, user_id: str, emoji: str
    ) -> tuple[Message, list[ev.ChatEvent]]:
        """Add ``user_id``'s ``emoji``; the message with its counts after the change."""
        async with write_transaction(self._engine) as conn:
            channel = await load_channel(conn, tenant_id, channel_id)
            message = await load_message(conn, channel_id, message_id)
            if message.deleted:
                raise WrongState("a deleted message cannot take reactions")
            joined: list[ev.ChatEvent] = []
            if await load_member(conn, channel_id, user_id) is None:
                if not rules.joins_by_writing(channel):
                    raise NotAllowed(f"user {user_id!r} is not a member of this channel")
                await self._ensure_users(conn, tenant_id, [user_id])
                _, joined = await self._join(conn, channel, user_id, Role.MEMBER)
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
            message = (await with_reactions(conn, [message]))[0]
            if result.rowcount != 1:
                return message, joined
            count = dict(message.reaction_counts).get(emoji, 0)
            recorded = await self._record(
                conn,
                tenant_id,
                [drafts.reaction_event(vocab.REACTION_ADDED, message, user_id, emoji, count)],
            )
        return message, joined + recorded

    async def remove_reaction(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str, emoji: str
    ) -> tuple[Message, list[ev.ChatEvent]]:
        """Remove ``user_id``'s ``emoji``; the message with its counts after the change."""
        async with write_transaction(self._engine) as conn:
            message = await load_channel_message(conn, tenant_id, channel_id, message_id)
            result = await conn.execute(
                delete(reactions).where(
                    reactions.c.message_id == message_id,
                    reactions.c.user_id == user_id,
                    reactions.c.emoji == emoji,
                )
            )
            message = (await with_reactions(conn, [message]))[0]
            if result.rowcount != 1:
                return message, []
            count = dict(message.reaction_counts).get(emoji, 0)
            recorded = await self._record(
                conn,
                tenant_id,
                [drafts.reaction_event(vocab.REACTION_REMOVED, message, user_id, emoji, count)],
            )
        return message, recorded
