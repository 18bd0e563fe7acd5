"""ChannelService through a real grpc.aio server on port 0, called with the generated stubs.

Each test runs on SQLite and on PostgreSQL (``database_url``) against one
server per module, and makes its own tenant, so tests never see each other's
rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.channels.v1 import channels_pb2 as pb

from gateway_bridge.vocabulary import MESSAGE_CREATED
from service_kit.bus import EventBus, Subscription
from service_kit.client_tokens import ClientTokens
from service_kit.validation import is_uuid
from tests.gateway_bridge.conftest import (
    Keel,
    Tenant,
    connect,
    field_violations,
    rpc_error,
    running_keel,
)

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

MISSING_ID = "00000000-0000-4000-8000-000000000000"


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return OK


async def all_pages(fetch: Callable[[str], Awaitable[Any]], items: str) -> list[list[Any]]:
    """Follow ``next_page_token`` from the first page to the last; the pages' items."""
    pages: list[list[Any]] = []
    token = ""
    while True:
        page = await fetch(token)
        pages.append(list(getattr(page, items)))
        token = page.next_page_token
        if not token:
            return pages
        assert len(pages) < 100, "paging never ends"


async def channel_ids(tenant: Tenant, **fields: Any) -> list[str]:
    pages = await all_pages(
        lambda token: tenant.stub.ListChannels(
            pb.ListChannelsRequest(page_size=2, page_token=token, **fields), metadata=tenant.md
        ),
        "channels",
    )
    return [c.id for page in pages for c in page]


async def user_ids(tenant: Tenant) -> list[str]:
    pages = await all_pages(
        lambda token: tenant.stub.ListUsers(
            pb.ListUsersRequest(page_size=2, page_token=token), metadata=tenant.md
        ),
        "users",
    )
    return [u.id for page in pages for u in page]


def seqs(messages: Any) -> list[int]:
    return [m.seq for m in messages]


# -- the public contract --------------------------------------------------------------------


async def test_create_send_list_and_token_use_the_public_names(keel: Keel, tenant: Tenant) -> None:
    created = await tenant.stub.CreateChannel(
        pb.CreateChannelRequest(
            name="general",
            type=pb.CHANNEL_TYPE_GROUP,
            metadata=struct(topic="launch"),
            created_by="alice",
        ),
        metadata=tenant.md,
    )
    channel = created.channel
    assert is_uuid(channel.id)
    assert (channel.name, channel.type, channel.created_by) == (
        "general",
        pb.CHANNEL_TYPE_GROUP,
        "alice",
    )
    assert dict(channel.metadata) == {"topic": "launch"}
    assert (channel.last_seq, channel.member_count) == (0, 1)

    first = (
        await tenant.stub.SendMessage(
            pb.SendMessageRequest(
                channel_id=channel.id,
                user_id="alice",
                content="hello",
                message_type="text",
                idempotency_key="first-hello",
            ),
            metadata=tenant.md,
        )
    ).message
    reply = (
        await tenant.stub.SendMessage(
            pb.SendMessageRequest(
                channel_id=channel.id,
                user_id="alice",
                content="*hello* again",
                message_type="markdown",
                reply_to=first.id,
            ),
            metadata=tenant.md,
        )
    ).message
    assert is_uuid(first.id) and is_uuid(reply.id) and first.id != reply.id
    assert (first.channel_id, first.user_id, first.content, first.message_type, first.seq) == (
        channel.id,
        "alice",
        "hello",
        "text",
        1,
    )
    assert (reply.reply_to, reply.message_type, reply.seq) == (first.id, "markdown", 2)
    assert first.HasField("created_at") and first.created_at.seconds > 0
    assert reply.created_at.ToDatetime() >= first.created_at.ToDatetime()

    page = await tenant.stub.ListMessages(
        pb.ListMessagesRequest(channel_id=channel.id, page_size=1), metadata=tenant.md
    )
    assert [m.id for m in page.messages] == [reply.id] and page.next_page_token
    last = await tenant.stub.ListMessages(
        pb.ListMessagesRequest(channel_id=channel.id, page_size=1, page_token=page.next_page_token),
        metadata=tenant.md,
    )
    assert list(last.messages) == [first] and last.next_page_token == ""
    assert (await tenant.channel(channel.id)).last_seq == 2

    issued = await tenant.stub.IssueClientToken(
        pb.IssueClientTokenRequest(user_id="browser-user", ttl_seconds=600), metadata=tenant.md
    )
    assert keel.settings.token_secret is not None
    claims = ClientTokens(keel.settings.token_secret).verify(issued.token)
    assert (claims.tenant_id, claims.user_id) == (tenant.id, "browser-user")
    assert issued.expire_time.ToDatetime(tzinfo=UTC) == claims.expires_at
    # A user the tenant had not seen is created on first use.
    user = await tenant.stub.GetUser(pb.GetUserRequest(id="browser-user"), metadata=tenant.md)
    assert user.user.id == "browser-user"


async def test_channels_get_list_filter_page_update_delete(tenant: Tenant) -> None:
    group = await tenant.group("alice", "bob", metadata=struct(topic="ops"))
    public = await tenant.public("carol")
    direct = (
        await tenant.stub.CreateChannel(
            pb.CreateChannelRequest(
                name="dm", type=pb.CHANNEL_TYPE_DIRECT, created_by="alice", member_ids=["dave"]
            ),
            metadata=tenant.md,
        )
    ).channel.id

    got = await tenant.channel(group)
    assert (got.type, got.member_count, dict(got.metadata)) == (
        pb.CHANNEL_TYPE_GROUP,
        2,
        {"topic": "ops"},
    )
    assert await channel_ids(tenant) == [group, public, direct]  # creation order, page of 2
    assert await channel_ids(tenant, type=pb.CHANNEL_TYPE_PUBLIC) == [public]
    assert await channel_ids(tenant, member_id="alice") == [group, direct]
    assert await channel_ids(tenant, member_id="bob", type=pb.CHANNEL_TYPE_GROUP) == [group]
    assert await channel_ids(tenant, member_id="nobody") == []

    renamed = await tenant.stub.UpdateChannel(
        pb.UpdateChannelRequest(
            channel=pb.Channel(id=group, name="ops-room", metadata=struct(ignored=True)),
            update_mask=mask("name"),
        ),
        metadata=tenant.md,
    )
    assert renamed.channel.name == "ops-room" and dict(renamed.channel.metadata) == {"topic": "ops"}
    retagged = await tenant.stub.UpdateChannel(
        pb.UpdateChannelRequest(
            channel=pb.Channel(id=group, name="ignored", metadata=struct(topic="infra")),
            update_mask=mask("metadata"),
        ),
        metadata=tenant.md,
    )
    assert retagged.channel.name == "ops-room"
    assert dict(retagged.channel.metadata) == {"topic": "infra"}
    assert await tenant.channel(group) == retagged.channel

    message = await tenant.send(group, "soon gone")
    await tenant.stub.DeleteChannel(pb.DeleteChannelRequest(id=group), metadata=tenant.md)
    assert await code_of(tenant.channel(group)) == NOT_FOUND
    assert (
        await code_of(
            tenant.stub.GetMessage(
                pb.GetMessageRequest(channel_id=group, message_id=message.id), metadata=tenant.md
            )
        )
        == NOT_FOUND
    )
    assert await channel_ids(tenant) == [public, direct]
    assert await channel_ids(tenant, member_id="alice") == [direct]


async def test_users_upsert_get_and_list(tenant: Tenant) -> None:
    stored = (
        await tenant.stub.UpsertUser(
            pb.UpsertUserRequest(
                user=pb.User(
                    id="u-ann",
                    username="Ann",
                    email="ann@example.com",
                    avatar="https://example.com/ann.png",
                    metadata=struct(plan="pro"),
                )
            ),
            metadata=tenant.md,
        )
    ).user
    assert (stored.id, stored.username, stored.email, stored.avatar) == (
        "u-ann",
        "Ann",
        "ann@example.com",
        "https://example.com/ann.png",
    )
    assert dict(stored.metadata) == {"plan": "pro"} and stored.create_time.seconds > 0

    changed = (
        await tenant.stub.UpsertUser(
            pb.UpsertUserRequest(
                user=pb.User(id="u-ann", username="Annie", email="other@example.com"),
                update_mask=mask("username"),
            ),
            metadata=tenant.md,
        )
    ).user
    assert (changed.username, changed.email, dict(changed.metadata)) == (
        "Annie",
        "ann@example.com",
        {"plan": "pro"},
    )
    assert changed.create_time == stored.create_time
    got = await tenant.stub.GetUser(pb.GetUserRequest(id="u-ann"), metadata=tenant.md)
    assert got.user == changed

    for user_id in ("u-bob", "u-cid"):
        await tenant.stub.UpsertUser(
            pb.UpsertUserRequest(user=pb.User(id=user_id)), metadata=tenant.md
        )
    assert await user_ids(tenant) == ["u-ann", "u-bob", "u-cid"]
    assert (
        await code_of(tenant.stub.GetUser(pb.GetUserRequest(id="u-nobody"), metadata=tenant.md))
        == NOT_FOUND
    )


def missing_users(error: grpc.aio.AioRpcError) -> list[str]:
    """The user ids the ResourceInfo details of a NOT_FOUND name."""
    status = rpc_status.from_call(error)
    named = []
    for detail in status.details if status else ():
        info = error_details_pb2.ResourceInfo()
        if detail.Unpack(info):
            assert info.resource_type == "keel.channels.v1.User"
            named.append(info.resource_name)
    return named


async def test_batch_get_users_answers_in_the_order_asked(tenant: Tenant) -> None:
    for user_id, name in (("u-1", "One"), ("u-2", "Two"), ("u-3", "Three")):
        await tenant.stub.UpsertUser(
            pb.UpsertUserRequest(user=pb.User(id=user_id, username=name)), metadata=tenant.md
        )
    found = await tenant.stub.BatchGetUsers(
        pb.BatchGetUsersRequest(ids=["u-3", "u-1", "u-3", "u-2"]), metadata=tenant.md
    )
    assert [(u.id, u.username) for u in found.users] == [
        ("u-3", "Three"),
        ("u-1", "One"),
        ("u-3", "Three"),
        ("u-2", "Two"),
    ]


async def test_batch_get_users_names_every_missing_id_and_another_tenants_users(
    keel: Keel,
) -> None:
    a, b = await keel.tenant(), await keel.tenant()
    await a.stub.UpsertUser(pb.UpsertUserRequest(user=pb.User(id="ann")), metadata=a.md)
    await b.stub.UpsertUser(pb.UpsertUserRequest(user=pb.User(id="bea")), metadata=b.md)
    error = await rpc_error(
        a.stub.BatchGetUsers(
            pb.BatchGetUsersRequest(ids=["ann", "bea", "nobody", "bea"]), metadata=a.md
        )
    )
    assert error.code() == NOT_FOUND
    assert missing_users(error) == ["bea", "nobody"]
    assert "'bea'" in (error.details() or "") and "'nobody'" in (error.details() or "")


@pytest.mark.parametrize(
    ("ids", "field"),
    [([], "ids"), (["ok", " padded"], "ids[1]"), (["tab\there"], "ids[0]")],
)
async def test_batch_get_users_refuses_malformed_ids(
    tenant: Tenant, ids: list[str], field: str
) -> None:
    error = await rpc_error(
        tenant.stub.BatchGetUsers(pb.BatchGetUsersRequest(ids=ids), metadata=tenant.md)
    )
    assert error.code() == INVALID
    assert field_violations(error) == [field]


async def test_batch_get_users_needs_only_chat_read(keel: Keel) -> None:
    reader = await keel.tenant("chat:read")
    error = await rpc_error(
        reader.stub.BatchGetUsers(pb.BatchGetUsersRequest(ids=["x"]), metadata=reader.md)
    )
    assert error.code() == NOT_FOUND  # past the scope check: the user does not exist
    nothing = await keel.tenant("send:*")
    error = await rpc_error(
        nothing.stub.BatchGetUsers(pb.BatchGetUsersRequest(ids=["x"]), metadata=nothing.md)
    )
    assert error.code() == DENIED


async def test_group_creator_is_its_owner_and_members_join_and_leave(tenant: Tenant) -> None:
    channel = await tenant.group("zoe", "adam", "bob")
    roles = {m.user_id: m.role for m in await tenant.members(channel)}
    assert roles == {
        "zoe": pb.MEMBER_ROLE_OWNER,
        "adam": pb.MEMBER_ROLE_MEMBER,
        "bob": pb.MEMBER_ROLE_MEMBER,
    }

    solo = await tenant.group("alice")
    added = (
        await tenant.stub.AddMember(
            pb.AddMemberRequest(channel_id=solo, user_id="bob"), metadata=tenant.md
        )
    ).member
    assert (added.channel_id, added.user_id, added.role, added.last_read_seq) == (
        solo,
        "bob",
        pb.MEMBER_ROLE_MEMBER,
        0,
    )
    again = await tenant.stub.AddMember(
        pb.AddMemberRequest(channel_id=solo, user_id="bob", role=pb.MEMBER_ROLE_OWNER),
        metadata=tenant.md,
    )
    assert again.member == added  # a current member is returned unchanged
    await tenant.stub.AddMember(
        pb.AddMemberRequest(channel_id=solo, user_id="carol", role=pb.MEMBER_ROLE_OWNER),
        metadata=tenant.md,
    )
    members = await tenant.members(solo)
    assert [(m.user_id, m.role) for m in members] == [
        ("alice", pb.MEMBER_ROLE_OWNER),
        ("bob", pb.MEMBER_ROLE_MEMBER),
        ("carol", pb.MEMBER_ROLE_OWNER),
    ]
    paged = await all_pages(
        lambda token: tenant.stub.ListMembers(
            pb.ListMembersRequest(channel_id=solo, page_size=1, page_token=token),
            metadata=tenant.md,
        ),
        "members",
    )
    assert [m.user_id for page in paged for m in page] == ["alice", "bob", "carol"]
    assert (await tenant.channel(solo)).member_count == 3
    assert (await tenant.stub.GetUser(pb.GetUserRequest(id="carol"), metadata=tenant.md)).user

    await tenant.stub.RemoveMember(
        pb.RemoveMemberRequest(channel_id=solo, user_id="bob"), metadata=tenant.md
    )
    assert [m.user_id for m in await tenant.members(solo)] == ["alice", "carol"]
    assert await code_of(tenant.send(solo, "let me back in", user_id="bob")) == DENIED


async def test_group_creator_is_listed_as_the_first_member(tenant: Tenant) -> None:
    channel = await tenant.group("zoe", "adam")
    first = (await tenant.members(channel))[0]
    assert (first.user_id, first.role) == ("zoe", pb.MEMBER_ROLE_OWNER)


async def test_a_direct_channel_is_one_per_pair_with_two_members(tenant: Tenant) -> None:
    async def direct(created_by: str, *member_ids: str) -> pb.Channel:
        response = await tenant.stub.CreateChannel(
            pb.CreateChannelRequest(
                name="dm",
                type=pb.CHANNEL_TYPE_DIRECT,
                created_by=created_by,
                member_ids=list(member_ids),
            ),
            metadata=tenant.md,
        )
        channel: pb.Channel = response.channel
        return channel

    first = await direct("alice", "bob")
    assert (await direct("bob", "alice")).id == first.id
    assert (await direct("alice", "bob")).id == first.id
    assert (await direct("", "bob", "alice")).id == first.id  # the application, for both
    assert first.member_count == 2
    assert sorted(m.user_id for m in await tenant.members(first.id)) == ["alice", "bob"]
    assert await channel_ids(tenant, type=pb.CHANNEL_TYPE_DIRECT) == [first.id]
    assert (await direct("alice", "carol")).id != first.id

    for one_user in [("alice",), ("alice", "alice"), ("alice", "bob", "carol")]:
        error = await rpc_error(direct(*one_user))
        assert error.code() == INVALID and "member_ids" in field_violations(error)
    assert len(await channel_ids(tenant, type=pb.CHANNEL_TYPE_DIRECT)) == 2


async def test_a_direct_channel_needs_no_name(tenant: Tenant) -> None:
    response = await tenant.stub.CreateChannel(
        pb.CreateChannelRequest(
            type=pb.CHANNEL_TYPE_DIRECT, created_by="alice", member_ids=["bob"]
        ),
        metadata=tenant.md,
    )
    assert response.channel.type == pb.CHANNEL_TYPE_DIRECT
    assert response.channel.member_count == 2


async def test_sending_to_a_public_channel_joins_the_sender(tenant: Tenant) -> None:
    channel = await tenant.public("alice")
    message = await tenant.send(channel, "hi all", user_id="newcomer")
    assert message.seq == 1 and message.user_id == "newcomer"
    roles = {m.user_id: m.role for m in await tenant.members(channel)}
    assert roles == {"alice": pb.MEMBER_ROLE_OWNER, "newcomer": pb.MEMBER_ROLE_MEMBER}
    assert (await tenant.channel(channel)).member_count == 2
    user = await tenant.stub.GetUser(pb.GetUserRequest(id="newcomer"), metadata=tenant.md)
    assert user.user.username == "newcomer"
    assert await channel_ids(tenant, member_id="newcomer") == [channel]


async def test_messages_are_edited_and_soft_deleted(tenant: Tenant) -> None:
    channel = await tenant.group("alice", "bob")
    draft = await tenant.send(channel, "first draft")
    other = await tenant.send(channel, "bob here", user_id="bob")

    edited = (
        await tenant.stub.EditMessage(
            pb.EditMessageRequest(
                channel_id=channel, message_id=draft.id, content="final", user_id="alice"
            ),
            metadata=tenant.md,
        )
    ).message
    assert (edited.id, edited.seq, edited.content, edited.edited) == (draft.id, 1, "final", True)
    assert edited.created_at == draft.created_at

    deleted = (
        await tenant.stub.DeleteMessage(
            pb.DeleteMessageRequest(channel_id=channel, message_id=draft.id, user_id="alice"),
            metadata=tenant.md,
        )
    ).message
    assert (deleted.id, deleted.seq, deleted.content, deleted.deleted) == (draft.id, 1, "", True)
    got = (
        await tenant.stub.GetMessage(
            pb.GetMessageRequest(channel_id=channel, message_id=draft.id), metadata=tenant.md
        )
    ).message
    assert got == deleted
    listed = await tenant.messages(channel)
    assert [(m.id, m.deleted, m.content) for m in listed] == [
        (draft.id, True, ""),
        (other.id, False, "bob here"),
    ]
    # A channel owner may delete someone else's message.
    removed = await tenant.stub.DeleteMessage(
        pb.DeleteMessageRequest(channel_id=channel, message_id=other.id, user_id="alice"),
        metadata=tenant.md,
    )
    assert removed.message.deleted
    assert (await tenant.channel(channel)).last_seq == 2


async def test_reactions_are_unique_per_message_user_and_emoji(tenant: Tenant) -> None:
    channel = await tenant.group("alice", "bob")
    message = await tenant.send(channel, "ship it?")

    async def react(user_id: str, emoji: str, *, add: bool = True) -> list[tuple[str, int]]:
        if add:
            response = await tenant.stub.AddReaction(
                pb.AddReactionRequest(
                    channel_id=channel, message_id=message.id, user_id=user_id, emoji=emoji
                ),
                metadata=tenant.md,
            )
        else:
            response = await tenant.stub.RemoveReaction(
                pb.RemoveReactionRequest(
                    channel_id=channel, message_id=message.id, user_id=user_id, emoji=emoji
                ),
                metadata=tenant.md,
            )
        return [(r.emoji, r.count) for r in response.message.reaction_counts]

    await react("alice", "👍")
    await react("bob", "👍")
    assert await react("alice", "👍") == [("👍", 2)]  # the same reaction twice counts once
    long_emoji = ":" + "e" * 62 + ":"  # 64 characters, the limit
    assert await react("alice", long_emoji) == [("👍", 2), (long_emoji, 1)]  # most used first
    listed = await tenant.messages(channel)
    assert [(r.emoji, r.count) for r in listed[0].reaction_counts] == [("👍", 2), (long_emoji, 1)]

    assert dict(await react("bob", "👍", add=False)) == {"👍": 1, long_emoji: 1}
    assert dict(await react("bob", "👍", add=False)) == {"👍": 1, long_emoji: 1}  # absent: no-op
    edited = await tenant.stub.EditMessage(
        pb.EditMessageRequest(channel_id=channel, message_id=message.id, content="shipped"),
        metadata=tenant.md,
    )
    assert {r.emoji: r.count for r in edited.message.reaction_counts} == {"👍": 1, long_emoji: 1}
    got = await tenant.stub.GetMessage(
        pb.GetMessageRequest(channel_id=channel, message_id=message.id), metadata=tenant.md
    )
    assert {r.emoji: r.count for r in got.message.reaction_counts} == {"👍": 1, long_emoji: 1}


async def test_mark_read_and_unread_counts(tenant: Tenant) -> None:
    channel = await tenant.group("alice", "bob")
    quiet = await tenant.group("bob")
    for text in ("one", "two", "three"):
        await tenant.send(channel, text, user_id="alice")
    await tenant.send(channel, "mine", user_id="bob")
    await tenant.send(channel, "from the app", user_id="")

    async def unread(user_id: str) -> dict[str, tuple[int, int, int]]:
        response = await tenant.stub.GetUnreadCounts(
            pb.GetUnreadCountsRequest(user_id=user_id), metadata=tenant.md
        )
        return {
            c.channel_id: (c.unread_count, c.last_read_seq, c.last_seq)
            for c in response.unread_counts
        }

    async def mark(seq: int) -> int:
        response = await tenant.stub.MarkRead(
            pb.MarkReadRequest(channel_id=channel, user_id="bob", seq=seq), metadata=tenant.md
        )
        return int(response.member.last_read_seq)

    # Bob's own message does not count as unread for him.
    assert await unread("bob") == {channel: (4, 0, 5), quiet: (0, 0, 0)}
    assert await unread("alice") == {channel: (2, 0, 5)}
    assert await mark(2) == 2
    assert (await unread("bob"))[channel] == (2, 2, 5)
    assert await mark(1) == 2  # never moves back
    assert await mark(0) == 5  # 0 means everything so far
    assert (await unread("bob"))[channel] == (0, 5, 5)

    late = await tenant.send(channel, "late", user_id="alice")
    assert (await unread("bob"))[channel] == (1, 5, 6)
    await tenant.stub.DeleteMessage(
        pb.DeleteMessageRequest(channel_id=channel, message_id=late.id), metadata=tenant.md
    )
    assert (await unread("bob"))[channel] == (0, 5, 6)  # deleted messages are not unread


# -- history --------------------------------------------------------------------------------


@pytest.fixture
async def history(tenant: Tenant) -> tuple[Tenant, str, list[pb.Message]]:
    """A channel with 25 messages; #5, #10 and #15 reply to #1."""
    channel = await tenant.group("alice")
    sent: list[pb.Message] = []
    for n in range(1, 26):
        reply_to = sent[0].id if n in (5, 10, 15) else ""
        sent.append(await tenant.send(channel, f"message {n}", reply_to=reply_to))
    assert seqs(sent) == list(range(1, 26))
    return tenant, channel, sent


async def test_history_orders_and_filters(history: tuple[Tenant, str, list[pb.Message]]) -> None:
    tenant, channel, sent = history

    async def listed(**fields: Any) -> list[int]:
        page = await tenant.stub.ListMessages(
            pb.ListMessagesRequest(channel_id=channel, **fields), metadata=tenant.md
        )
        return seqs(page.messages)

    oldest = pb.MESSAGE_ORDER_OLDEST_FIRST
    assert await listed() == list(range(25, 0, -1))  # newest first by default
    assert await listed(order=pb.MESSAGE_ORDER_NEWEST_FIRST, page_size=3) == [25, 24, 23]
    assert await listed(order=oldest, page_size=3) == [1, 2, 3]
    assert await listed(before_seq=10, page_size=3) == [9, 8, 7]
    assert await listed(after_seq=20, order=oldest) == [21, 22, 23, 24, 25]
    assert await listed(after_seq=20) == [25, 24, 23, 22, 21]
    assert await listed(after_seq=5, before_seq=10, order=oldest) == [6, 7, 8, 9]
    assert await listed(reply_to=sent[0].id, order=oldest) == [5, 10, 15]
    assert await listed(reply_to=sent[0].id) == [15, 10, 5]
    assert await listed(reply_to=sent[1].id) == []
    # The seed's limit + offset.
    assert await listed(page_size=5, offset=10) == [15, 14, 13, 12, 11]
    assert await listed(page_size=5, offset=10, order=oldest) == [11, 12, 13, 14, 15]
    assert await listed(page_size=5, offset=30) == []

    got = await tenant.stub.ListMessages(
        pb.ListMessagesRequest(channel_id=channel, page_size=1, order=oldest), metadata=tenant.md
    )
    assert list(got.messages) == [sent[0]]


@pytest.mark.parametrize(
    ("order", "fields", "expected"),
    [
        (pb.MESSAGE_ORDER_UNSPECIFIED, {}, list(range(25, 0, -1))),
        (pb.MESSAGE_ORDER_OLDEST_FIRST, {}, list(range(1, 26))),
        (pb.MESSAGE_ORDER_UNSPECIFIED, {"offset": 3}, list(range(22, 0, -1))),
        (pb.MESSAGE_ORDER_OLDEST_FIRST, {"after_seq": 2}, list(range(3, 26))),
        (pb.MESSAGE_ORDER_UNSPECIFIED, {"before_seq": 24}, list(range(23, 0, -1))),
    ],
    ids=["newest-first", "oldest-first", "offset", "after-seq", "before-seq"],
)
async def test_paging_returns_each_message_once_in_order(
    history: tuple[Tenant, str, list[pb.Message]],
    order: Any,
    fields: dict[str, Any],
    expected: list[int],
) -> None:
    tenant, channel, sent = history
    pages = await all_pages(
        lambda token: tenant.stub.ListMessages(
            pb.ListMessagesRequest(
                channel_id=channel, page_size=10, page_token=token, order=order, **fields
            ),
            metadata=tenant.md,
        ),
        "messages",
    )
    assert [len(p) for p in pages] == [
        len(expected[i : i + 10]) for i in range(0, len(expected), 10)
    ]
    flat = [m for page in pages for m in page]
    assert seqs(flat) == expected
    by_seq = {m.seq: m for m in sent}
    assert [m.id for m in flat] == [by_seq[s].id for s in expected]


# -- tenant isolation and scopes ------------------------------------------------------------


async def test_another_tenants_ids_answer_not_found_and_change_nothing(keel: Keel) -> None:
    a, b = await keel.tenant(), await keel.tenant()
    channel = await a.group("alice", "bob")
    message = await a.send(channel, "for tenant A only")
    await a.stub.UpsertUser(pb.UpsertUserRequest(user=pb.User(id="a-only")), metadata=a.md)
    own = await b.group("alice")
    before = await a.snapshot(channel)

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "GetChannel": lambda: b.stub.GetChannel(pb.GetChannelRequest(id=channel), metadata=b.md),
        "GetMessage": lambda: b.stub.GetMessage(
            pb.GetMessageRequest(channel_id=channel, message_id=message.id), metadata=b.md
        ),
        "GetMessage in B's channel": lambda: b.stub.GetMessage(
            pb.GetMessageRequest(channel_id=own, message_id=message.id), metadata=b.md
        ),
        "ListMessages": lambda: b.stub.ListMessages(
            pb.ListMessagesRequest(channel_id=channel), metadata=b.md
        ),
        "ListMembers": lambda: b.stub.ListMembers(
            pb.ListMembersRequest(channel_id=channel), metadata=b.md
        ),
        "SendMessage": lambda: b.send(channel, "intruder", user_id="alice"),
        "SendMessage as the app": lambda: b.send(channel, "intruder", user_id=""),
        "AddMember": lambda: b.stub.AddMember(
            pb.AddMemberRequest(channel_id=channel, user_id="mallory"), metadata=b.md
        ),
        "RemoveMember": lambda: b.stub.RemoveMember(
            pb.RemoveMemberRequest(channel_id=channel, user_id="bob"), metadata=b.md
        ),
        "UpdateChannel": lambda: b.stub.UpdateChannel(
            pb.UpdateChannelRequest(
                channel=pb.Channel(id=channel, name="x"), update_mask=mask("name")
            ),
            metadata=b.md,
        ),
        "EditMessage": lambda: b.stub.EditMessage(
            pb.EditMessageRequest(channel_id=channel, message_id=message.id, content="x"),
            metadata=b.md,
        ),
        "DeleteMessage": lambda: b.stub.DeleteMessage(
            pb.DeleteMessageRequest(channel_id=channel, message_id=message.id), metadata=b.md
        ),
        "AddReaction": lambda: b.stub.AddReaction(
            pb.AddReactionRequest(
                channel_id=channel, message_id=message.id, user_id="alice", emoji="👀"
            ),
            metadata=b.md,
        ),
        "MarkRead": lambda: b.stub.MarkRead(
            pb.MarkReadRequest(channel_id=channel, user_id="bob"), metadata=b.md
        ),
        "GetUser": lambda: b.stub.GetUser(pb.GetUserRequest(id="a-only"), metadata=b.md),
        "DeleteChannel": lambda: b.stub.DeleteChannel(
            pb.DeleteChannelRequest(id=channel), metadata=b.md
        ),
    }
    codes = {name: await code_of(call()) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, NOT_FOUND)
    assert await a.snapshot(channel) == before

    assert await channel_ids(b) == [own]
    assert await channel_ids(b, member_id="bob") == []
    assert await user_ids(b) == ["alice"]
    unread = await b.stub.GetUnreadCounts(pb.GetUnreadCountsRequest(user_id="alice"), metadata=b.md)
    assert [c.channel_id for c in unread.unread_counts] == [own]
    assert channel in await channel_ids(a)


async def test_request_ids_and_direct_pairs_are_per_tenant(keel: Keel) -> None:
    """Two tenants using one request_id, or one pair of user ids, each get a channel of
    their own; a retry in each tenant returns that tenant's channel."""
    a, b = await keel.tenant(), await keel.tenant()

    async def create(tenant: Tenant, **fields: Any) -> tuple[str, str]:
        response = await tenant.stub.CreateChannel(
            pb.CreateChannelRequest(created_by="alice", **fields), metadata=tenant.md
        )
        return response.channel.id, response.channel.name

    group = {"type": pb.CHANNEL_TYPE_GROUP, "request_id": "create-general-1"}
    a_group = await create(a, name="tenant A's", **group)
    b_group = await create(b, name="tenant B's", **group)
    assert a_group[1] == "tenant A's" and b_group[1] == "tenant B's"
    assert await create(a, name="A, retried", **group) == a_group
    assert await create(b, name="B, retried", **group) == b_group

    direct = {"type": pb.CHANNEL_TYPE_DIRECT, "member_ids": ["bob"]}
    a_direct = await create(a, name="A's dm", **direct)
    b_direct = await create(b, name="B's dm", **direct)
    assert a_direct[1] == "A's dm" and b_direct[1] == "B's dm"
    assert await create(a, name="again", **direct) == a_direct
    assert await create(b, name="again", **direct) == b_direct

    assert sorted(await channel_ids(a)) == sorted([a_group[0], a_direct[0]])
    assert sorted(await channel_ids(b)) == sorted([b_group[0], b_direct[0]])


async def test_read_scope_may_read_but_not_write(keel: Keel) -> None:
    tenant = await keel.tenant("chat:*")
    channel = await tenant.group("alice")
    message = await tenant.send(channel, "readable")
    await keel.set_permissions(tenant, "chat:read")
    before = await tenant.snapshot(channel)  # GetChannel, ListMessages, ListMembers all allowed

    got = await tenant.stub.GetMessage(
        pb.GetMessageRequest(channel_id=channel, message_id=message.id), metadata=tenant.md
    )
    assert got.message.content == "readable"
    assert await channel_ids(tenant) == [channel]
    writes: list[Callable[[], Awaitable[object]]] = [
        lambda: tenant.send(channel, "not allowed"),
        lambda: tenant.group("alice"),
        lambda: tenant.stub.AddReaction(
            pb.AddReactionRequest(
                channel_id=channel, message_id=message.id, user_id="alice", emoji="👍"
            ),
            metadata=tenant.md,
        ),
        lambda: tenant.stub.IssueClientToken(
            pb.IssueClientTokenRequest(user_id="alice"), metadata=tenant.md
        ),
    ]
    assert [await code_of(write()) for write in writes] == [DENIED] * len(writes)
    assert await tenant.snapshot(channel) == before
    assert await channel_ids(tenant) == [channel]

    reader = await keel.tenant("chat:read")
    assert await code_of(reader.group("alice")) == DENIED
    assert await channel_ids(reader) == []


# -- bad input ------------------------------------------------------------------------------


@dataclass
class Room:
    """A tenant with a group channel (alice owns, bob is a member) holding two messages,
    a second channel with two messages, and a direct channel."""

    tenant: Tenant
    group: str
    alices: pb.Message
    deleted: pb.Message
    other: str
    elsewhere: pb.Message
    direct: str
    foreign_token: str
    newest_token: str

    async def snapshot(self) -> tuple[object, ...]:
        t = self.tenant
        return (
            await t.snapshot(self.group),
            await t.snapshot(self.other),
            await t.snapshot(self.direct),
            await channel_ids(t),
            await user_ids(t),
        )


@pytest.fixture
async def room(tenant: Tenant) -> Room:
    group = await tenant.group("alice", "bob")
    alices = await tenant.send(group, "alice's words")
    deleted = await tenant.send(group, "regretted")
    await tenant.stub.DeleteMessage(
        pb.DeleteMessageRequest(channel_id=group, message_id=deleted.id), metadata=tenant.md
    )
    other = await tenant.group("alice")
    elsewhere = await tenant.send(other, "in another channel")
    await tenant.send(other, "and another")
    direct = (
        await tenant.stub.CreateChannel(
            pb.CreateChannelRequest(
                name="dm", type=pb.CHANNEL_TYPE_DIRECT, created_by="alice", member_ids=["bob"]
            ),
            metadata=tenant.md,
        )
    ).channel.id
    foreign = await tenant.stub.ListMessages(
        pb.ListMessagesRequest(channel_id=other, page_size=1), metadata=tenant.md
    )
    newest = await tenant.stub.ListMessages(
        pb.ListMessagesRequest(channel_id=group, page_size=1), metadata=tenant.md
    )
    assert foreign.next_page_token and newest.next_page_token
    return Room(
        tenant,
        group,
        alices,
        deleted,
        other,
        elsewhere,
        direct,
        foreign.next_page_token,
        newest.next_page_token,
    )


Call = Callable[[Room], Awaitable[object]]


def send(**fields: Any) -> Call:
    def call(r: Room) -> Any:
        values = {"channel_id": r.group, "user_id": "alice", "content": "hi"} | fields
        values = {k: v(r) if callable(v) else v for k, v in values.items()}
        return r.tenant.stub.SendMessage(pb.SendMessageRequest(**values), metadata=r.tenant.md)

    return call


def list_messages(**fields: Any) -> Call:
    def call(r: Room) -> Any:
        values = {"channel_id": r.group} | fields
        values = {k: v(r) if callable(v) else v for k, v in values.items()}
        return r.tenant.stub.ListMessages(pb.ListMessagesRequest(**values), metadata=r.tenant.md)

    return call


def edit(message: Callable[[Room], pb.Message], user_id: str, content: str = "changed") -> Call:
    def call(r: Room) -> Any:
        return r.tenant.stub.EditMessage(
            pb.EditMessageRequest(
                channel_id=r.group, message_id=message(r).id, user_id=user_id, content=content
            ),
            metadata=r.tenant.md,
        )

    return call


def react(emoji: str, message_id: Callable[[Room], str] = lambda r: r.alices.id) -> Call:
    def call(r: Room) -> Any:
        return r.tenant.stub.AddReaction(
            pb.AddReactionRequest(
                channel_id=r.group, message_id=message_id(r), user_id="bob", emoji=emoji
            ),
            metadata=r.tenant.md,
        )

    return call


BAD_INPUT: list[tuple[str, Call, grpc.StatusCode, str | None]] = [
    ("empty-content", send(content=""), INVALID, "content"),
    ("blank-content", send(content=" \n\t "), INVALID, "content"),
    ("content-over-64KiB", send(content="x" * 65537), INVALID, "content"),
    ("content-over-64KiB-in-utf8", send(content="é" * 32769), INVALID, "content"),
    ("unknown-message-type", send(message_type="banana"), INVALID, "message_type"),
    ("bare-custom-type", send(message_type="x-"), INVALID, "message_type"),
    ("reply-to-another-channel", send(reply_to=lambda r: r.elsewhere.id), PRECONDITION, None),
    ("reply-to-a-missing-message", send(reply_to=MISSING_ID), PRECONDITION, None),
    ("reply-to-malformed", send(reply_to="not-a-uuid"), INVALID, "reply_to"),
    ("non-member-sends-to-group", send(user_id="mallory"), DENIED, None),
    (
        "non-member-sends-to-direct",
        send(channel_id=lambda r: r.direct, user_id="carol"),
        DENIED,
        None,
    ),
    ("send-to-malformed-channel", send(channel_id="not-a-uuid"), INVALID, "channel_id"),
    ("send-to-missing-channel", send(channel_id=MISSING_ID), NOT_FOUND, None),
    ("emoji-over-64-characters", react(":" + "e" * 63 + ":"), INVALID, "emoji"),
    ("empty-emoji", react(""), INVALID, "emoji"),
    ("react-to-malformed-message", react("👍", lambda r: "not-a-uuid"), INVALID, "message_id"),
    ("react-to-missing-message", react("👍", lambda r: MISSING_ID), NOT_FOUND, None),
    (
        "get-malformed-channel",
        lambda r: r.tenant.stub.GetChannel(
            pb.GetChannelRequest(id="not-a-uuid"), metadata=r.tenant.md
        ),
        INVALID,
        "id",
    ),
    (
        "get-malformed-message",
        lambda r: r.tenant.stub.GetMessage(
            pb.GetMessageRequest(channel_id=r.group, message_id="not-a-uuid"), metadata=r.tenant.md
        ),
        INVALID,
        "message_id",
    ),
    (
        "get-message-of-another-channel",
        lambda r: r.tenant.stub.GetMessage(
            pb.GetMessageRequest(channel_id=r.group, message_id=r.elsewhere.id),
            metadata=r.tenant.md,
        ),
        NOT_FOUND,
        None,
    ),
    ("list-malformed-channel", list_messages(channel_id="not-a-uuid"), INVALID, "channel_id"),
    ("page-size-5000", list_messages(page_size=5000), INVALID, "page_size"),
    ("page-size-negative", list_messages(page_size=-1), INVALID, "page_size"),
    (
        "token-of-another-channel",
        list_messages(page_token=lambda r: r.foreign_token),
        INVALID,
        "page_token",
    ),
    (
        "token-of-another-order",
        list_messages(page_token=lambda r: r.newest_token, order=pb.MESSAGE_ORDER_OLDEST_FIRST),
        INVALID,
        "page_token",
    ),
    ("garbage-token", list_messages(page_token="garbage!"), INVALID, "page_token"),
    ("negative-before-seq", list_messages(before_seq=-1), INVALID, "before_seq"),
    (
        "channels-page-size-5000",
        lambda r: r.tenant.stub.ListChannels(
            pb.ListChannelsRequest(page_size=5000), metadata=r.tenant.md
        ),
        INVALID,
        "page_size",
    ),
    (
        "channels-garbage-token",
        lambda r: r.tenant.stub.ListChannels(
            pb.ListChannelsRequest(page_token="garbage!"), metadata=r.tenant.md
        ),
        INVALID,
        "page_token",
    ),
    ("edit-a-deleted-message", edit(lambda r: r.deleted, "alice"), PRECONDITION, None),
    ("edit-someone-elses-message", edit(lambda r: r.alices, "bob"), DENIED, None),
    ("edit-to-empty-content", edit(lambda r: r.alices, "alice", ""), INVALID, "content"),
    (
        "delete-someone-elses-message",
        lambda r: r.tenant.stub.DeleteMessage(
            pb.DeleteMessageRequest(channel_id=r.group, message_id=r.alices.id, user_id="bob"),
            metadata=r.tenant.md,
        ),
        DENIED,
        None,
    ),
    (
        "remove-member-of-direct",
        lambda r: r.tenant.stub.RemoveMember(
            pb.RemoveMemberRequest(channel_id=r.direct, user_id="bob"), metadata=r.tenant.md
        ),
        PRECONDITION,
        None,
    ),
    (
        "add-member-to-direct",
        lambda r: r.tenant.stub.AddMember(
            pb.AddMemberRequest(channel_id=r.direct, user_id="carol"), metadata=r.tenant.md
        ),
        PRECONDITION,
        None,
    ),
    (
        "group-without-name",
        lambda r: r.tenant.stub.CreateChannel(
            pb.CreateChannelRequest(created_by="alice", type=pb.CHANNEL_TYPE_GROUP),
            metadata=r.tenant.md,
        ),
        INVALID,
        "name",
    ),
    (
        "update-unknown-field",
        lambda r: r.tenant.stub.UpdateChannel(
            pb.UpdateChannelRequest(
                channel=pb.Channel(id=r.group, type=pb.CHANNEL_TYPE_PUBLIC),
                update_mask=mask("type"),
            ),
            metadata=r.tenant.md,
        ),
        INVALID,
        "update_mask",
    ),
    (
        "token-ttl-over-a-day",
        lambda r: r.tenant.stub.IssueClientToken(
            pb.IssueClientTokenRequest(user_id="newbie", ttl_seconds=86401), metadata=r.tenant.md
        ),
        INVALID,
        "ttl_seconds",
    ),
]


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
async def test_bad_input_gets_its_status_and_changes_nothing(
    room: Room, call: Call, code: grpc.StatusCode, field: str | None
) -> None:
    before = await room.snapshot()
    error = await rpc_error(call(room))
    assert error.code() == code, error.details()
    if field is not None:
        assert field in field_violations(error), error.details()
    assert await room.snapshot() == before


async def test_custom_and_default_message_types_are_accepted(tenant: Tenant) -> None:
    channel = await tenant.group("alice")
    custom = await tenant.send(channel, "which one?", message_type="x-poll")
    default = await tenant.send(channel, "plain")
    system = await tenant.send(channel, "alice joined", message_type="system", user_id="")
    assert [(m.message_type, m.seq) for m in (custom, default, system)] == [
        ("x-poll", 1),
        ("text", 2),
        ("system", 3),
    ]
    assert [m.message_type for m in await tenant.messages(channel)] == ["x-poll", "text", "system"]


async def test_content_up_to_the_limit_is_stored_whole(tenant: Tenant) -> None:
    channel = await tenant.group("alice")
    largest = "é" * 32768  # 65536 bytes in UTF-8
    message = await tenant.send(channel, largest)
    assert message.content == largest
    assert [m.content for m in await tenant.messages(channel)] == [largest]


@pytest.fixture
async def small_limit(database_url: str, tmp_path: Path) -> AsyncIterator[Keel]:
    """A server whose operator set a 100-byte message limit."""
    async with running_keel(database_url, tmp_path, max_message_bytes=100) as running:
        yield running


async def test_the_operators_message_limit_counts_utf8_bytes(small_limit: Keel) -> None:
    tenant = await small_limit.tenant()
    channel = await tenant.group("alice")
    fits = await tenant.send(channel, "é" * 50)  # 100 bytes
    await tenant.send(channel, "x" * 100)
    before = await tenant.snapshot(channel)
    for content in ("x" * 101, "é" * 51):
        error = await rpc_error(tenant.send(channel, content))
        assert error.code() == INVALID and field_violations(error) == ["content"]
        assert "100" in (error.details() or "")
    error = await rpc_error(
        tenant.stub.EditMessage(
            pb.EditMessageRequest(channel_id=channel, message_id=fits.id, content="y" * 101),
            metadata=tenant.md,
        )
    )
    assert error.code() == INVALID and field_violations(error) == ["content"]
    assert await tenant.snapshot(channel) == before


# -- idempotency and sequence ---------------------------------------------------------------


async def test_a_retry_with_the_same_idempotency_key_returns_the_first_message(
    tenant: Tenant,
) -> None:
    channel = await tenant.group("alice")
    other = await tenant.group("alice")
    first = await tenant.send(channel, "pay 10", idempotency_key="payment-1")
    retry = await tenant.send(channel, "pay 10", idempotency_key="payment-1")
    assert (retry.id, retry.seq, retry.content) == (first.id, first.seq, "pay 10")
    assert [m.id for m in await tenant.messages(channel)] == [first.id]
    assert (await tenant.channel(channel)).last_seq == 1

    fresh = await tenant.send(channel, "pay 20", idempotency_key="payment-2")
    assert fresh.seq == 2 and fresh.id != first.id
    elsewhere = await tenant.send(other, "pay 10", idempotency_key="payment-1")
    assert elsewhere.id != first.id and elsewhere.seq == 1  # keys are per channel


async def test_concurrent_retries_with_one_key_store_one_message(tenant: Tenant) -> None:
    channel = await tenant.group("alice")
    results = await asyncio.gather(
        *(tenant.send(channel, "once", idempotency_key="burst") for _ in range(10))
    )
    assert {(m.id, m.seq) for m in results} == {(results[0].id, 1)}
    stored = await tenant.messages(channel)
    assert [(m.id, m.seq) for m in stored] == [(results[0].id, 1)]
    assert (await tenant.channel(channel)).last_seq == 1
    assert (await tenant.send(channel, "next")).seq == 2  # no seq was lost to the losers


async def test_concurrent_senders_get_gap_free_sequence_numbers(tenant: Tenant) -> None:
    channel = await tenant.group("alice", "bob")
    results = await asyncio.gather(
        *(tenant.send(channel, f"m{i}", user_id=("alice", "bob")[i % 2]) for i in range(20))
    )
    assert sorted(seqs(results)) == list(range(1, 21))
    stored = await tenant.messages(channel)
    assert seqs(stored) == list(range(1, 21))
    assert {m.id for m in stored} == {m.id for m in results}


# -- the bridge's Connect stream ------------------------------------------------------------


def message_of(item: pb.ConnectResponse) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(item.event.data_json)["message"]
    return data


async def test_connect_needs_the_operator_token(keel: Keel, tenant: Tenant) -> None:
    for metadata in [(), (("authorization", "Bearer wrong-operator-token-000"),), tenant.md]:
        call = keel.chat.Connect(metadata=metadata)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(call.read(), 10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            call.cancel()


async def test_connect_delivers_live_events_replays_history_and_unsubscribes(
    keel: Keel, tenant: Tenant
) -> None:
    channel = await tenant.group("alice", "bob")
    earlier = await tenant.send(channel, "before anyone listened")
    async with connect(keel.chat) as bridge:
        await bridge.subscribe("conn-live", tenant.id, channel, user_id="bob")
        result = await bridge.result()
        assert (result.subscription_key, result.channel_id, result.code, result.last_seq) == (
            "conn-live",
            channel,
            0,
            1,
        )

        sent = [await tenant.send(channel, f"live {n}") for n in range(3)]
        for message in sent:
            item = await bridge.event()
            event = item.event
            assert (event.tenant_id, event.channel_id, event.event, event.seq) == (
                tenant.id,
                channel,
                "message:created",
                message.seq,
            )
            assert event.event_id and event.create_time.seconds > 0
            data = message_of(item)
            assert (data["id"], data["content"], data["seq"], data["user_id"]) == (
                message.id,
                message.content,
                message.seq,
                "alice",
            )
        edited = await tenant.stub.EditMessage(
            pb.EditMessageRequest(channel_id=channel, message_id=sent[0].id, content="edited"),
            metadata=tenant.md,
        )
        item = await bridge.event()
        assert (item.event.event, item.event.seq) == ("message:updated", sent[0].seq)
        assert message_of(item)["content"] == edited.message.content == "edited"

        # A late subscriber replays from the database, to its key only, in order.
        await bridge.subscribe("conn-late", tenant.id, channel, user_id="alice", since_seq=0)
        expected = [earlier.id, *(m.id for m in sent)]
        replayed = [await bridge.event() for _ in expected]
        assert [r.event.seq for r in replayed] == [1, 2, 3, 4]
        assert [message_of(r)["id"] for r in replayed] == expected
        assert message_of(replayed[1])["content"] == "edited"  # the stored state
        assert all(list(r.subscription_keys) == ["conn-late"] for r in replayed)
        assert {r.event.event for r in replayed} == {"message:created"}
        result = await bridge.result()
        assert (result.subscription_key, result.code, result.last_seq) == ("conn-late", 0, 4)

        await bridge.subscribe("conn-resume", tenant.id, channel, since_seq=2)
        resumed = [await bridge.event() for _ in range(2)]
        assert [r.event.seq for r in resumed] == [3, 4]
        assert all(list(r.subscription_keys) == ["conn-resume"] for r in resumed)
        assert (await bridge.result()).last_seq == 4

        # Once every key has left the channel, its events stop; a second channel shows it.
        for key in ("conn-live", "conn-late"):
            await bridge.unsubscribe(key, channel)
        await bridge.unsubscribe("conn-resume")
        marker_channel = await tenant.group("alice")
        await bridge.subscribe("conn-marker", tenant.id, marker_channel, user_id="alice")
        assert (await bridge.result()).code == 0  # the unsubscriptions were handled before it
        await tenant.send(channel, "nobody listens")
        marker = await tenant.send(marker_channel, "marker")
        item = await bridge.event()
        assert (item.event.channel_id, item.event.seq) == (marker_channel, marker.seq)


async def test_connect_handles_many_keys_at_once_and_each_keys_commands_in_order(
    keel: Keel, tenant: Tenant
) -> None:
    """A burst of subscribes (a bridge after a restart) is answered for every key; a key
    subscribed and unsubscribed back to back ends unsubscribed."""
    channels = [await tenant.group("alice") for _ in range(3)]
    async with connect(keel.chat) as bridge:
        for n in range(150):
            await bridge.subscribe(f"burst-{n}", tenant.id, channels[n % 3], user_id="alice")
        results = [await bridge.result() for _ in range(150)]
        assert sorted(r.subscription_key for r in results) == sorted(
            f"burst-{n}" for n in range(150)
        )
        assert {(r.code, r.last_seq) for r in results} == {(0, 0)}
        for n in range(150):  # every key leaves again, right after asking once more
            await bridge.subscribe(f"burst-{n}", tenant.id, channels[n % 3], user_id="alice")
            await bridge.unsubscribe(f"burst-{n}")
        for _ in range(150):
            assert (await bridge.result()).code == 0
        marker_channel = await tenant.group("alice")
        await bridge.subscribe("marker", tenant.id, marker_channel, user_id="alice")
        assert (await bridge.result()).subscription_key == "marker"
        for channel in channels:
            await tenant.send(channel, "nobody listens any more")
        marker = await tenant.send(marker_channel, "marker")
        item = await bridge.event()
        assert (item.event.channel_id, item.event.seq) == (marker_channel, marker.seq)


async def test_connect_refuses_non_members_and_other_tenants_channels(keel: Keel) -> None:
    a, b = await keel.tenant(), await keel.tenant()
    group = await a.group("alice")
    public = await a.public("alice")
    async with connect(keel.chat) as bridge:
        await bridge.subscribe("k-outsider", a.id, group, user_id="mallory", since_seq=0)
        refused = await bridge.result()
        assert (refused.subscription_key, refused.channel_id, refused.code) == (
            "k-outsider",
            group,
            grpc.StatusCode.PERMISSION_DENIED.value[0],
        )
        await bridge.subscribe("k-tenant-b", b.id, group, user_id="alice", since_seq=0)
        assert (await bridge.result()).code == grpc.StatusCode.NOT_FOUND.value[0]
        await bridge.subscribe("k-bad", a.id, "not-a-uuid", user_id="alice")
        assert (await bridge.result()).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        # Anyone in the tenant may read a public channel.
        await bridge.subscribe("k-reader", a.id, public, user_id="mallory")
        assert (await bridge.result()).code == 0

        # The refused subscriptions deliver nothing.
        await a.send(group, "members only")
        heard = await a.send(public, "for everyone")
        item = await bridge.event()
        assert (item.event.channel_id, item.event.seq) == (public, heard.seq)
    members = [m.user_id for m in await a.members(public)]
    assert members == ["alice"]  # reading does not join


async def test_connect_drops_the_subscription_of_a_user_who_left(
    keel: Keel, tenant: Tenant
) -> None:
    channel = await tenant.group("alice", "bob")
    marker_channel = await tenant.group("alice")
    async with connect(keel.chat) as bridge:
        await bridge.subscribe("k-bob", tenant.id, channel, user_id="bob")
        assert (await bridge.result()).code == 0
        await bridge.subscribe("k-marker", tenant.id, marker_channel, user_id="alice")
        assert (await bridge.result()).code == 0
        await tenant.stub.RemoveMember(
            pb.RemoveMemberRequest(channel_id=channel, user_id="bob"), metadata=tenant.md
        )
        left = await bridge.event()
        assert left.event.event == "user:left"
        assert json.loads(left.event.data_json)["user_id"] == "bob"
        await tenant.send(channel, "bob must not see this")
        marker = await tenant.send(marker_channel, "marker")
        item = await bridge.event()
        assert (item.event.channel_id, item.event.seq) == (marker_channel, marker.seq)


class LatePublishBus:
    """An event bus on which the publish of a channel's first message takes until a later
    message's publish went out, as when Redis answers one connection late."""

    def __init__(self, inner: EventBus) -> None:
        self._inner = inner
        self.channel_id = ""
        self.holding = asyncio.Event()
        self._released = asyncio.Event()

    async def publish(self, topic: str, payload: bytes) -> None:
        event = json.loads(payload.partition(b"\n")[0])  # the header line (see ChatEvent)
        ours = event.get("channel_id") == self.channel_id and event.get("event") == MESSAGE_CREATED
        if ours and event["seq"] == 1:
            self.holding.set()
            # Bounded: a gateway that publishes in commit order would wait for this one.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), 5)
        await self._inner.publish(topic, payload)
        if ours and event["seq"] > 1:
            self._released.set()

    async def subscribe(self, topic: str, handler: Callable[[bytes], None]) -> Subscription:
        return await self._inner.subscribe(topic, handler)

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # the rest of the bus, unchanged


async def test_live_events_keep_seq_order_when_publishes_finish_out_of_order(
    database_url: str, tmp_path: Path
) -> None:
    """Two commits' publishes can cross (two coroutines, two processes); the Connect
    stream still delivers the channel's messages in seq order."""
    buses: list[LatePublishBus] = []

    def late(inner: EventBus) -> EventBus:
        buses.append(LatePublishBus(inner))
        return buses[-1]

    async with running_keel(database_url, tmp_path, wrap_bus=late) as keel:
        (bus,) = buses
        tenant = await keel.tenant()
        channel = await tenant.group("alice", "bob")
        bus.channel_id = channel
        async with connect(keel.chat) as bridge:
            await bridge.subscribe("k-order", tenant.id, channel, user_id="alice")
            assert (await bridge.result()).code == 0
            first = asyncio.create_task(tenant.send(channel, "one"))
            await asyncio.wait_for(bus.holding.wait(), 10)  # seq 1 committed, publish pending
            second = await tenant.send(channel, "two", user_id="bob")
            assert ((await first).seq, second.seq) == (1, 2)
            delivered = [(await bridge.event()).event.seq for _ in range(2)]
            assert delivered == [1, 2]
