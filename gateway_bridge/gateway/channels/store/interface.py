"""The ``ChatStore`` role: what the chat service and the Connect hub need from storage.

Written by its callers (:class:`~gateway_bridge.gateway.channels.service.ChatService`
and :class:`~gateway_bridge.gateway.channels.hub.ConnectHub`); the relay needs
only the event log, its own ``EventLog`` role in :mod:`gateway_bridge.gateway.relay`.
:class:`~gateway_bridge.gateway.channels.store.sql.SqlChatStore` plays both.

Every method is scoped by ``tenant_id``: another tenant's channel is
``ChannelNotFound`` like one that does not exist. A method that changes
something does it in one transaction and returns the events that transaction
recorded, for the caller to publish once it has committed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Protocol

from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels.models import (
    Channel,
    ChannelType,
    Member,
    Message,
    MessageQuery,
    NewMessage,
    Role,
    UnreadCount,
    User,
)
from service_kit.auth import TenantId

#: What storing a message gives: the message, and the events to publish after commit.
Sent = tuple[Message, list[ev.ChatEvent]]

#: Where a keyset page starts: after the item with this ``(time, id)``.
After = tuple[datetime, str] | None


class ChatStore(Protocol):
    """Users, channels, members, messages, reactions and read state of every tenant."""

    # -- users: created on first sight (username = id) ------------------------------------

    async def ensure_user(self, tenant_id: str, user_id: str) -> None: ...

    async def upsert_user(self, user: User, fields: Collection[str] | None) -> User: ...

    async def get_user(self, tenant_id: str, user_id: str) -> User | None: ...

    async def batch_get_users(self, tenant_id: str, user_ids: Collection[str]) -> list[User]:
        """Those of ``user_ids`` the tenant has, in no particular order."""
        ...

    async def list_users(self, tenant_id: str, *, limit: int, after: After) -> list[User]: ...

    # -- channels: created once per request id, a direct channel once per pair ----------

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
    ) -> tuple[Channel, list[ev.ChatEvent]]: ...

    async def get_channel(self, tenant_id: str, channel_id: str) -> Channel: ...

    async def list_channels(
        self,
        tenant_id: str,
        *,
        limit: int,
        after: After,
        type: ChannelType | None = None,
        member_id: str = "",
    ) -> list[Channel]: ...

    async def update_channel(
        self, tenant_id: str, channel_id: str, *, name: str | None, metadata: dict[str, Any] | None
    ) -> tuple[Channel, list[ev.ChatEvent]]: ...

    async def delete_channel(self, tenant_id: str, channel_id: str) -> list[ev.ChatEvent]: ...

    # -- members and read state ---------------------------------------------------------

    async def add_member(
        self, tenant_id: str, channel_id: str, user_id: str, role: Role
    ) -> tuple[Member, list[ev.ChatEvent]]: ...

    async def remove_member(
        self, tenant_id: str, channel_id: str, user_id: str
    ) -> list[ev.ChatEvent]: ...

    async def read_access(
        self, tenant_id: str, channel_id: str, user_id: str
    ) -> tuple[ChannelType, int, bool]:
        """The channel's type and ``last_seq``, and whether ``user_id`` is a member."""
        ...

    async def get_member(self, tenant_id: str, channel_id: str, user_id: str) -> Member | None: ...

    async def list_members(
        self, tenant_id: str, channel_id: str, *, limit: int, after: After
    ) -> list[Member]: ...

    async def mark_read(
        self, tenant_id: str, channel_id: str, user_id: str, seq: int
    ) -> Member: ...

    async def unread_counts(self, tenant_id: str, user_id: str) -> list[UnreadCount]: ...

    # -- messages: gap-free seq per channel, idempotent sends ---------------------------

    async def send_message(self, tenant_id: TenantId, new: NewMessage) -> Sent:
        """Store ``new`` with the channel's next seq, or return the message an earlier
        send with the same idempotency key stored (and no events)."""
        ...

    async def edit_message(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str, content: str
    ) -> tuple[Message, list[ev.ChatEvent]]: ...

    async def delete_message(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str
    ) -> tuple[Message, list[ev.ChatEvent]]: ...

    async def get_message(self, tenant_id: str, channel_id: str, message_id: str) -> Message: ...

    async def list_messages(self, tenant_id: str, query: MessageQuery) -> list[Message]: ...

    # -- reactions: one per user, emoji and message -------------------------------------

    async def add_reaction(
        self, tenant_id: TenantId, channel_id: str, message_id: str, user_id: str, emoji: str
    ) -> tuple[Message, list[ev.ChatEvent]]: ...

    async def remove_reaction(
        self, tenant_id: str, channel_id: str, message_id: str, user_id: str, emoji: str
    ) -> tuple[Message, list[ev.ChatEvent]]: ...
