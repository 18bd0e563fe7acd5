"""The channel service's operations: input rules, then the store, then publishing.

:class:`ChatService` is what the gRPC servicer (and, later, the WebSocket
bridge) calls. It checks what can be checked without the database (lengths,
types, shapes), asks the store to do the change in one transaction, and hands
the events the transaction recorded to the relay once it has committed, so
an answer always means the change is durable.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from gateway_bridge.gateway.channels.errors import InvalidChat, UserNotFound, UsersNotFound
from gateway_bridge.gateway.channels.models import (
    DEFAULT_TOKEN_TTL_SECONDS,
    MAX_ATTACHMENTS,
    MAX_AVATAR,
    MAX_EMAIL,
    MAX_EMOJI,
    MAX_IDEMPOTENCY_KEY,
    MAX_MEMBERS_AT_CREATION,
    MAX_MESSAGE_TYPE,
    MAX_METADATA_BYTES,
    MAX_NAME,
    MAX_TOKEN_TTL_SECONDS,
    MAX_USER_ID,
    Channel,
    ChannelType,
    Member,
    Message,
    MessageQuery,
    NewMessage,
    Role,
    UnreadCount,
    User,
    UserId,
)
from gateway_bridge.gateway.channels.store import ChatStore
from gateway_bridge.gateway.relay import EventRelay
from service_kit.auth import TenantId
from service_kit.client_tokens import ClientTokens
from service_kit.validation import Violations, is_uuid

#: How many users one BatchGetUsers may ask for.
MAX_BATCH_USERS = 1000

#: Message types Keel knows; applications may add their own as ``x-<name>``.
MESSAGE_TYPES = frozenset({"text", "markdown", "image", "file", "audio", "video", "system"})


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Operator limits on chat input."""

    max_message_bytes: int = 64 * 1024


def check_user_id(v: Violations, field: str, user_id: str, *, required: bool = True) -> None:
    """User ids are chosen by the tenant's app: 1 to 128 printable characters."""
    if not user_id:
        v.check(not required, field, "is required")
    elif len(user_id) > MAX_USER_ID or not user_id.isprintable() or user_id != user_id.strip():
        v.add(field, f"must be 1 to {MAX_USER_ID} printable characters without surrounding spaces")


def check_metadata(v: Violations, field: str, metadata: Mapping[str, Any]) -> None:
    size = len(json.dumps(metadata, default=str))
    v.check(
        size <= MAX_METADATA_BYTES,
        field,
        f"is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}",
    )


def check_message_type(v: Violations, message_type: str) -> None:
    known = message_type in MESSAGE_TYPES
    custom = message_type.startswith("x-") and 2 < len(message_type) <= MAX_MESSAGE_TYPE
    v.check(
        known or custom,
        "message_type",
        f"{message_type[:60]!r} is not a message type: use one of"
        f" {', '.join(sorted(MESSAGE_TYPES))}, or x-<name> for your own",
    )


def check_attachment_ids(v: Violations, file_ids: Sequence[str]) -> tuple[str, ...]:
    """At most :data:`MAX_ATTACHMENTS` file ids, each a UUID, none repeated; the ids in
    lower case (as the file service writes them). Whether each is a ready file of the
    tenant is the store's check, in the sending transaction."""
    if not v.check(
        len(file_ids) <= MAX_ATTACHMENTS, "attachment_ids", f"at most {MAX_ATTACHMENTS} files"
    ):
        return tuple(file_ids)
    first: dict[str, int] = {}
    for index, file_id in enumerate(file_ids):
        field = f"attachment_ids[{index}]"
        if not is_uuid(file_id):
            v.add(field, f"{file_id[:40]!r} is not a file id (a UUID)")
        elif file_id.lower() in first:
            v.add(field, f"repeats attachment_ids[{first[file_id.lower()]}]")
        else:
            first[file_id.lower()] = index
    return tuple(file_id.lower() for file_id in file_ids)


class ChatService:
    """Users, channels, members, messages, reactions, read state and client tokens."""

    def __init__(
        self,
        store: ChatStore,
        relay: EventRelay,
        tokens: ClientTokens,
        *,
        limits: ChatLimits = ChatLimits(),
    ) -> None:
        self._store = store
        self._relay = relay
        self._tokens = tokens
        self._limits = limits

    # -- users --------------------------------------------------------------------------

    async def upsert_user(self, user: User, fields: Collection[str] | None) -> User:
        v = Violations()
        check_user_id(v, "user.id", user.id)
        v.text("user.username", user.username, max_length=MAX_NAME, required=False)
        v.text("user.email", user.email, max_length=MAX_EMAIL, required=False)
        v.text("user.avatar", user.avatar, max_length=MAX_AVATAR, required=False)
        check_metadata(v, "user.metadata", user.metadata)
        if fields is not None:
            unknown = set(fields) - {"username", "email", "avatar", "metadata"}
            v.check(not unknown, "update_mask", f"unknown fields: {', '.join(sorted(unknown))}")
        v.raise_if_any(InvalidChat)
        return await self._store.upsert_user(user, fields)

    async def get_user(self, tenant_id: TenantId, user_id: str) -> User:
        user = await self._store.get_user(tenant_id, user_id)
        if user is None:
            raise UserNotFound(user_id)
        return user

    async def list_users(
        self, tenant_id: TenantId, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[User]:
        return await self._store.list_users(tenant_id, limit=limit, after=after)

    async def batch_get_users(self, tenant_id: TenantId, user_ids: Sequence[str]) -> list[User]:
        """The users ``user_ids`` (1 to 1000) name, in that order; raises
        :class:`UsersNotFound` naming every id the tenant has no user for."""
        v = Violations()
        if v.check(0 < len(user_ids) <= MAX_BATCH_USERS, "ids", f"give 1 to {MAX_BATCH_USERS} ids"):
            for index, user_id in enumerate(user_ids):
                check_user_id(v, f"ids[{index}]", user_id)
        v.raise_if_any(InvalidChat)
        found = {u.id: u for u in await self._store.batch_get_users(tenant_id, user_ids)}
        missing = list(dict.fromkeys(u for u in user_ids if u not in found))
        if missing:
            raise UsersNotFound(missing)
        return [found[UserId(u)] for u in user_ids]

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
    ) -> Channel:
        v = Violations()
        v.text("name", name, max_length=MAX_NAME, required=type is not ChannelType.DIRECT)
        check_metadata(v, "metadata", metadata)
        check_user_id(v, "created_by", created_by, required=False)
        v.check(
            len(member_ids) <= MAX_MEMBERS_AT_CREATION,
            "member_ids",
            f"at most {MAX_MEMBERS_AT_CREATION} members at creation",
        )
        for i, member_id in enumerate(member_ids[:MAX_MEMBERS_AT_CREATION]):
            check_user_id(v, f"member_ids[{i}]", member_id)
        v.text("request_id", request_id, max_length=128, required=False)
        if type is ChannelType.DIRECT:
            pair = {u for u in [created_by, *member_ids] if u}
            v.check(
                len(pair) == 2,
                "member_ids",
                "a direct channel is between exactly two different users"
                " (created_by and member_ids together)",
            )
        v.raise_if_any(InvalidChat)
        channel, events = await self._store.create_channel(
            tenant_id,
            name=name,
            type=type,
            metadata=metadata,
            created_by=created_by,
            member_ids=member_ids,
            request_id=request_id,
        )
        await self._relay.publish(events)
        return channel

    async def get_channel(self, tenant_id: TenantId, channel_id: str) -> Channel:
        return await self._store.get_channel(tenant_id, channel_id)

    async def list_channels(
        self,
        tenant_id: TenantId,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
        type: ChannelType | None,
        member_id: str,
    ) -> list[Channel]:
        return await self._store.list_channels(
            tenant_id, limit=limit, after=after, type=type, member_id=member_id
        )

    async def update_channel(
        self,
        tenant_id: TenantId,
        channel_id: str,
        *,
        name: str,
        metadata: dict[str, Any],
        fields: Collection[str],
    ) -> Channel:
        v = Violations()
        unknown = set(fields) - {"name", "metadata"}
        v.check(bool(fields), "update_mask", "list the fields to change: name and/or metadata")
        v.check(not unknown, "update_mask", f"cannot change: {', '.join(sorted(unknown))}")
        if "name" in fields:
            v.text("channel.name", name, max_length=MAX_NAME)
        if "metadata" in fields:
            check_metadata(v, "channel.metadata", metadata)
        v.raise_if_any(InvalidChat)
        channel, events = await self._store.update_channel(
            tenant_id,
            channel_id,
            name=name if "name" in fields else None,
            metadata=metadata if "metadata" in fields else None,
        )
        await self._relay.publish(events)
        return channel

    async def delete_channel(self, tenant_id: TenantId, channel_id: str) -> None:
        await self._relay.publish(await self._store.delete_channel(tenant_id, channel_id))

    # -- members ------------------------------------------------------------------------

    async def add_member(
        self, tenant_id: TenantId, channel_id: str, user_id: str, role: Role
    ) -> Member:
        v = Violations()
        check_user_id(v, "user_id", user_id)
        v.raise_if_any(InvalidChat)
        member, events = await self._store.add_member(tenant_id, channel_id, user_id, role)
        await self._relay.publish(events)
        return member

    async def remove_member(self, tenant_id: TenantId, channel_id: str, user_id: str) -> None:
        v = Violations()
        check_user_id(v, "user_id", user_id)
        v.raise_if_any(InvalidChat)
        await self._relay.publish(await self._store.remove_member(tenant_id, channel_id, user_id))

    async def list_members(
        self,
        tenant_id: TenantId,
        channel_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Member]:
        return await self._store.list_members(tenant_id, channel_id, limit=limit, after=after)

    async def get_member(self, tenant_id: TenantId, channel_id: str, user_id: str) -> Member | None:
        return await self._store.get_member(tenant_id, channel_id, user_id)

    # -- messages -----------------------------------------------------------------------

    async def send_message(self, tenant_id: TenantId, new: NewMessage) -> Message:
        """Store and publish ``new``; answers only after commit. See ``SendMessage``."""
        v = Violations()
        check_user_id(v, "user_id", new.user_id, required=False)
        self._check_content(v, new.content, required=not new.attachment_ids)
        check_message_type(v, new.message_type)
        if new.attachment_ids:
            new = replace(new, attachment_ids=check_attachment_ids(v, new.attachment_ids))
        v.text(
            "idempotency_key", new.idempotency_key, max_length=MAX_IDEMPOTENCY_KEY, required=False
        )
        v.raise_if_any(InvalidChat)
        message, events = await self._store.send_message(tenant_id, new)
        await self._relay.publish(events)
        return message

    def _check_content(self, v: Violations, content: str, *, required: bool) -> None:
        if not content.strip():
            v.check(not required, "content", "is required (or attach a file)")
            return
        size = len(content.encode())
        limit = self._limits.max_message_bytes
        v.check(
            size <= limit,
            "content",
            f"is {size} bytes; the limit is {limit} (KEEL_MAX_MESSAGE_BYTES)",
        )

    async def edit_message(
        self, tenant_id: TenantId, channel_id: str, message_id: str, user_id: str, content: str
    ) -> Message:
        v = Violations()
        check_user_id(v, "user_id", user_id, required=False)
        self._check_content(v, content, required=True)
        v.raise_if_any(InvalidChat)
        message, events = await self._store.edit_message(
            tenant_id, channel_id, message_id, user_id, content
        )
        await self._relay.publish(events)
        return message

    async def delete_message(
        self, tenant_id: TenantId, channel_id: str, message_id: str, user_id: str
    ) -> Message:
        message, events = await self._store.delete_message(
            tenant_id, channel_id, message_id, user_id
        )
        await self._relay.publish(events)
        return message

    async def get_message(self, tenant_id: TenantId, channel_id: str, message_id: str) -> Message:
        return await self._store.get_message(tenant_id, channel_id, message_id)

    async def list_messages(self, tenant_id: TenantId, query: MessageQuery) -> list[Message]:
        return await self._store.list_messages(tenant_id, query)

    # -- reactions, read state, tokens --------------------------------------------------

    def _check_reaction(self, user_id: str, emoji: str) -> None:
        v = Violations()
        check_user_id(v, "user_id", user_id)
        v.text("emoji", emoji, max_length=MAX_EMOJI)
        v.raise_if_any(InvalidChat)

    async def add_reaction(
        self, tenant_id: TenantId, channel_id: str, message_id: str, user_id: str, emoji: str
    ) -> Message:
        self._check_reaction(user_id, emoji)
        message, events = await self._store.add_reaction(
            tenant_id, channel_id, message_id, user_id, emoji
        )
        await self._relay.publish(events)
        return message

    async def remove_reaction(
        self, tenant_id: TenantId, channel_id: str, message_id: str, user_id: str, emoji: str
    ) -> Message:
        self._check_reaction(user_id, emoji)
        message, events = await self._store.remove_reaction(
            tenant_id, channel_id, message_id, user_id, emoji
        )
        await self._relay.publish(events)
        return message

    async def mark_read(
        self, tenant_id: TenantId, channel_id: str, user_id: str, seq: int
    ) -> Member:
        v = Violations()
        check_user_id(v, "user_id", user_id)
        v.check(seq >= 0, "seq", "must not be negative")
        v.raise_if_any(InvalidChat)
        return await self._store.mark_read(tenant_id, channel_id, user_id, seq)

    async def unread_counts(self, tenant_id: TenantId, user_id: str) -> list[UnreadCount]:
        v = Violations()
        check_user_id(v, "user_id", user_id)
        v.raise_if_any(InvalidChat)
        return await self._store.unread_counts(tenant_id, user_id)

    async def issue_client_token(
        self, tenant_id: TenantId, user_id: str, ttl_seconds: int
    ) -> tuple[str, datetime]:
        """A browser token for ``user_id`` (created if new), valid ``ttl_seconds``."""
        v = Violations()
        check_user_id(v, "user_id", user_id)
        v.check(
            0 <= ttl_seconds <= MAX_TOKEN_TTL_SECONDS,
            "ttl_seconds",
            f"must be between 0 (meaning {DEFAULT_TOKEN_TTL_SECONDS}) and {MAX_TOKEN_TTL_SECONDS}",
        )
        v.raise_if_any(InvalidChat)
        await self._store.ensure_user(tenant_id, user_id)
        return self._tokens.issue(tenant_id, user_id, ttl_seconds or DEFAULT_TOKEN_TTL_SECONDS)
