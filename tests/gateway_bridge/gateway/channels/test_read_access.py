"""The subscribe's access check (``read_access``) on SQLite and PostgreSQL: what it answers,
and that concurrent checks are read together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway_bridge.gateway.channels.errors import ChannelNotFound
from gateway_bridge.gateway.channels.models import ChannelType, NewMessage, Role
from gateway_bridge.gateway.channels.store import SqlChatStore
from service_kit.auth import TenantId
from service_kit.validation import new_id
from tests.gateway_bridge.gateway.channels.test_store import stored_channel


@pytest.fixture
def store(engine: AsyncEngine) -> SqlChatStore:
    return SqlChatStore(engine)


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements the engine runs from now on (BEGIN and ROLLBACK are not among them)."""
    ran: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        ran.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    yield ran
    event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_each_concurrent_check_gets_its_own_answer_from_few_statements(
    store: SqlChatStore, statements: list[str]
) -> None:
    """Members and non-members, a public channel, another tenant's channel and no channel at
    all, asked at once: each caller gets its own answer (not_found for the other tenant's
    channel), and the 40 checks cost far fewer than 40 statements (one per check fails)."""
    mine, theirs = TenantId(new_id()), TenantId(new_id())
    group, _ = await stored_channel(store, mine, ChannelType.GROUP, "alice", "bob")
    public, _ = await stored_channel(store, mine, ChannelType.PUBLIC, "alice")
    other, _ = await stored_channel(store, theirs, ChannelType.GROUP, "alice")
    await store.send_message(mine, NewMessage(group.id, "alice", "hi"))
    statements.clear()
    asked = [
        (mine, group.id, "alice", (ChannelType.GROUP, 1, True)),
        (mine, group.id, "bob", (ChannelType.GROUP, 1, True)),
        (mine, group.id, "carol", (ChannelType.GROUP, 1, False)),
        (mine, public.id, "carol", (ChannelType.PUBLIC, 0, False)),
        (mine, public.id, "", (ChannelType.PUBLIC, 0, False)),
        (mine, other.id, "alice", ChannelNotFound),
        (mine, new_id(), "alice", ChannelNotFound),
        (theirs, other.id, "alice", (ChannelType.GROUP, 0, True)),
    ] * 5
    answers = await asyncio.gather(
        *(store.read_access(t, c, u) for t, c, u, _ in asked), return_exceptions=True
    )
    for (_, channel_id, _, expected), answer in zip(asked, answers, strict=True):
        if expected is ChannelNotFound:
            assert isinstance(answer, ChannelNotFound)
            assert channel_id in answer.message
        else:
            assert answer == expected
    assert len(statements) <= 6


async def test_a_membership_change_is_seen_by_the_next_check(store: SqlChatStore) -> None:
    t = TenantId(new_id())
    group, _ = await stored_channel(store, t, ChannelType.GROUP, "alice")
    assert (await store.read_access(t, group.id, "bob"))[2] is False
    await store.add_member(t, group.id, "bob", Role.MEMBER)
    assert (await store.read_access(t, group.id, "bob"))[2] is True
    await store.remove_member(t, group.id, "bob")
    assert (await store.read_access(t, group.id, "bob"))[2] is False
