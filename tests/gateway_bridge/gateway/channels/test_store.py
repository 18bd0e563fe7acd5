"""The chat store and service on SQLite and PostgreSQL: ordering, idempotency, outbox, rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway_bridge import vocabulary as vocab
from gateway_bridge.gateway import outbox as ev
from gateway_bridge.gateway.channels.errors import (
    ChannelNotFound,
    InvalidChat,
    NotAllowed,
    WrongState,
)
from gateway_bridge.gateway.channels.models import (
    Channel,
    ChannelId,
    ChannelType,
    MessageQuery,
    NewMessage,
    Role,
)
from gateway_bridge.gateway.channels.service import ChatService
from gateway_bridge.gateway.channels.store import SqlChatStore
from gateway_bridge.gateway.events.store import SqlEventStore
from gateway_bridge.gateway.events.webhooks import WebhookState
from gateway_bridge.gateway.relay import EventRelay
from service_kit.auth import TenantId
from service_kit.bus import InProcessEventBus
from service_kit.client_tokens import ClientTokens
from service_kit.config import load_settings
from service_kit.db import create_engine, migrate
from service_kit.schema import events, messages
from service_kit.validation import new_id


class Recorder:
    """Everything published on the chat events topic, decoded."""

    def __init__(self) -> None:
        self.events: list[ev.ChatEvent] = []

    def __call__(self, payload: bytes) -> None:
        self.events.extend(ev.decode_events(payload))

    def names(self) -> list[str]:
        return [e.name for e in self.events]


class BrokenBus(InProcessEventBus):
    """A bus that refuses every publish (Redis is down)."""

    async def publish(self, topic: str, payload: bytes) -> None:
        raise ConnectionError("redis is down")


@pytest.fixture
async def bus() -> InProcessEventBus:
    return InProcessEventBus()


@pytest.fixture
async def published(bus: InProcessEventBus) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    subscription = await bus.subscribe(vocab.CHAT_EVENTS_TOPIC, recorder)
    yield recorder
    await subscription.close()


@pytest.fixture
def store(engine: AsyncEngine) -> SqlChatStore:
    return SqlChatStore(engine)


@pytest.fixture
def chat(store: SqlChatStore, bus: InProcessEventBus) -> ChatService:
    relay = EventRelay(store, bus)
    return ChatService(store, relay, ClientTokens("x" * 32))


def tenant() -> TenantId:
    return TenantId(new_id())


def send_conflicts() -> float:
    """Sends that have hit a unique constraint so far (``keel_send_conflicts_total``)."""
    value = REGISTRY.get_sample_value("keel_send_conflicts_total")
    assert value is not None, "keel_send_conflicts_total is not registered"
    return value


@pytest.fixture
async def two_engines(pg_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines (two pools) on the PostgreSQL test database, as two gateways have."""
    url = load_settings({"DATABASE_URL": pg_url}).database_url
    first, second = create_engine(url), create_engine(url)
    await migrate(first)
    yield first, second
    await first.dispose()
    await second.dispose()


async def group(chat: ChatService, tenant_id: TenantId, *members: str) -> ChannelId:
    channel = await chat.create_channel(
        tenant_id,
        name="general",
        type=ChannelType.GROUP,
        metadata={},
        created_by=members[0] if members else "",
        member_ids=list(members[1:]),
        request_id="",
    )
    return channel.id


async def stored_channel(
    store: SqlChatStore, tenant_id: TenantId, type: ChannelType, *members: str
) -> tuple[Channel, list[ev.ChatEvent]]:
    """A channel made by the store alone (nobody publishes its events), with ``members``
    (the first one creates it); the channel and the events it recorded."""
    return await store.create_channel(
        tenant_id,
        name="c",
        type=type,
        metadata={},
        created_by=members[0] if members else "",
        member_ids=list(members[1:]),
        request_id="",
    )


async def test_concurrent_senders_get_gap_free_seqs(chat: ChatService) -> None:
    t = tenant()
    senders = [f"u{i}" for i in range(8)]
    channel_id = await group(chat, t, *senders)

    async def send_all(user: str) -> list[int]:
        seqs = []
        for n in range(200):
            message = await chat.send_message(t, NewMessage(channel_id, user, f"{user} #{n}"))
            seqs.append(message.seq)
        return seqs

    per_sender = await asyncio.gather(*(send_all(u) for u in senders))
    for seqs in per_sender:
        assert seqs == sorted(seqs)  # each sender sees its own messages in order
    assert sorted(s for seqs in per_sender for s in seqs) == list(range(1, 1601))
    stored = await chat.list_messages(t, MessageQuery(channel_id, limit=2000, newest_first=False))
    assert [m.seq for m in stored] == list(range(1, 1601))
    assert len({m.content for m in stored}) == 1600
    assert (await chat.get_channel(t, channel_id)).last_seq == 1600


async def test_sends_stored_together_are_each_answered_on_their_own(
    chat: ChatService, published: Recorder
) -> None:
    """Concurrent sends share a transaction (group commit); one refused send neither
    fails the others nor takes a seq."""
    t, other = tenant(), tenant()
    private = await group(chat, t, "alice", "bob")
    theirs = await group(chat, other, "alice")
    public = await chat.create_channel(
        t,
        name="town square",
        type=ChannelType.PUBLIC,
        metadata={},
        created_by="alice",
        member_ids=[],
        request_id="",
    )
    sends = [
        NewMessage(private, "alice", "one"),
        NewMessage(private, "mallory", "not a member"),
        NewMessage(theirs, "alice", "another tenant's channel"),
        NewMessage(ChannelId("no-such-channel"), "alice", "nowhere"),
        NewMessage(public.id, "carol", "first words here"),  # joins the public channel
        NewMessage(private, "bob", "two", idempotency_key="k"),
        NewMessage(private, "bob", "two", idempotency_key="k"),
        NewMessage(private, "", "a system message"),
    ]
    results = await asyncio.gather(
        *(chat.send_message(t, new) for new in sends), return_exceptions=True
    )
    ok, stranger, foreign, missing, joined, keyed, again, system = results
    assert isinstance(stranger, NotAllowed), stranger
    assert "not a member of this group channel" in stranger.message
    assert isinstance(foreign, ChannelNotFound) and isinstance(missing, ChannelNotFound)
    assert not isinstance(keyed, BaseException) and not isinstance(again, BaseException)
    assert keyed.id == again.id
    sent = [ok, keyed, system]
    assert all(not isinstance(m, BaseException) for m in sent), sent
    assert sorted(m.seq for m in sent if not isinstance(m, BaseException)) == [1, 2, 3]
    assert (await chat.get_channel(t, private)).last_seq == 3
    assert (await chat.get_channel(other, theirs)).last_seq == 0
    assert not isinstance(joined, BaseException) and joined.seq == 1
    assert await chat.get_member(t, public.id, "carol") is not None
    await asyncio.sleep(0.05)
    created = [e for e in published.events if e.name == vocab.MESSAGE_CREATED]
    assert sorted((e.channel_id, e.seq) for e in created) == sorted(
        [(private, 1), (private, 2), (private, 3), (public.id, 1)]
    )


async def test_two_gateways_sending_to_the_same_channels_never_deadlock_or_skip(
    engine: AsyncEngine, bus: InProcessEventBus
) -> None:
    """Two stores on one database (two gateway processes) batch sends to overlapping
    channels in every order; each channel's seqs stay exactly 1..n."""
    gateways = [
        ChatService(store, EventRelay(store, bus), ClientTokens("x" * 32))
        for store in (SqlChatStore(engine), SqlChatStore(engine))
    ]
    t = tenant()
    channel_ids = [await group(gateways[0], t, "u0", "u1", "u2") for _ in range(3)]

    async def sender(n: int) -> None:
        chat = gateways[n % 2]
        for k in range(30):
            order = channel_ids if (n + k) % 2 else channel_ids[::-1]
            await asyncio.gather(
                *(chat.send_message(t, NewMessage(c, f"u{n % 3}", f"{n}/{k}")) for c in order)
            )

    async with asyncio.timeout(60):
        await asyncio.gather(*(sender(n) for n in range(6)))
    for channel_id in channel_ids:
        stored = await gateways[1].list_messages(
            t, MessageQuery(channel_id, limit=500, newest_first=False)
        )
        assert [m.seq for m in stored] == list(range(1, 181))


async def test_two_gateways_batching_sends_to_one_channel_wait_for_its_lock(
    two_engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """On PostgreSQL, concurrent batches of two processes take the channel row's lock
    before reading ``last_seq``: every send gets the next seq at the first attempt, and
    none hits ``UNIQUE(channel_id, seq)`` and falls back to sending alone."""
    stores = [SqlChatStore(engine) for engine in two_engines]
    t = tenant()
    senders = [f"u{i}" for i in range(8)]
    channel, _ = await stored_channel(stores[0], t, ChannelType.GROUP, *senders)
    before = send_conflicts()

    async def send_all(n: int) -> list[int]:
        store, user = stores[n % 2], senders[n]
        seqs = []
        for k in range(50):
            message, _ = await store.send_message(t, NewMessage(channel.id, user, f"{user} #{k}"))
            seqs.append(message.seq)
        return seqs

    async with asyncio.timeout(60):
        per_sender = await asyncio.gather(*(send_all(n) for n in range(len(senders))))
    assert sorted(seq for seqs in per_sender for seq in seqs) == list(range(1, 401))
    assert send_conflicts() == before


async def test_one_idempotency_key_stores_one_message(
    chat: ChatService, engine: AsyncEngine, published: Recorder
) -> None:
    t = tenant()
    channel_id = await group(chat, t, "alice")
    new = NewMessage(channel_id, "alice", "hello", idempotency_key="key-1")
    first = await chat.send_message(t, new)
    again = await chat.send_message(t, new)
    concurrent = await asyncio.gather(*(chat.send_message(t, new) for _ in range(10)))
    assert {m.id for m in [first, again, *concurrent]} == {first.id}
    assert {m.seq for m in [first, again, *concurrent]} == {1}
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(messages.c.id).where(messages.c.channel_id == channel_id))
        ).all()
    assert len(rows) == 1
    assert published.names().count(vocab.MESSAGE_CREATED) == 1
    other = await chat.send_message(t, NewMessage(channel_id, "alice", "next"))
    assert other.seq == 2  # the losing concurrent attempts left no gap


async def test_a_retried_send_is_found_before_the_batch_writes(store: SqlChatStore) -> None:
    """A retry's batch looks its idempotency key up first: it answers with the stored
    message and no events, without hitting ``UNIQUE(channel_id, idempotency_key)``."""
    t = tenant()
    channel, _ = await stored_channel(store, t, ChannelType.GROUP, "alice")
    new = NewMessage(channel.id, "alice", "hello", idempotency_key="retried")
    before = send_conflicts()
    first, recorded = await store.send_message(t, new)
    retries = [await store.send_message(t, new)]
    retries += await asyncio.gather(*(store.send_message(t, new) for _ in range(5)))
    assert [e.name for e in recorded] == [vocab.MESSAGE_CREATED]
    assert [(m.id, m.seq, m.content, answered) for m, answered in retries] == [
        (first.id, 1, "hello", [])
    ] * len(retries)
    assert send_conflicts() == before


async def test_every_mutation_is_logged_and_published_in_order(
    chat: ChatService, engine: AsyncEngine, published: Recorder
) -> None:
    t = tenant()
    channel_id = await group(chat, t, "alice", "bob")
    await chat.update_channel(t, channel_id, name="renamed", metadata={}, fields=["name"])
    message = await chat.send_message(t, NewMessage(channel_id, "alice", "hi"))
    await chat.edit_message(t, channel_id, message.id, "alice", "hi!")
    await chat.add_reaction(t, channel_id, message.id, "bob", "👍")
    await chat.remove_reaction(t, channel_id, message.id, "bob", "👍")
    await chat.add_member(t, channel_id, "carol", Role.MEMBER)
    await chat.remove_member(t, channel_id, "carol")
    await chat.delete_message(t, channel_id, message.id, "alice")
    await chat.delete_channel(t, channel_id)
    expected = [
        vocab.CHANNEL_CREATED,
        vocab.USER_JOINED,
        vocab.USER_JOINED,
        vocab.CHANNEL_UPDATED,
        vocab.MESSAGE_CREATED,
        vocab.MESSAGE_UPDATED,
        vocab.REACTION_ADDED,
        vocab.REACTION_REMOVED,
        vocab.USER_JOINED,
        vocab.USER_LEFT,
        vocab.MESSAGE_DELETED,
        vocab.CHANNEL_DELETED,
    ]
    mine = [e for e in published.events if e.tenant_id == t]
    assert [e.name for e in mine] == expected
    assert all(e.channel_id == channel_id for e in mine)
    created = next(e for e in mine if e.name == vocab.MESSAGE_CREATED)
    assert created.seq == 1 and created.data["message"]["content"] == "hi"
    async with engine.connect() as conn:
        logged = (
            (
                await conn.execute(
                    select(events.c.name).where(events.c.tenant_id == t).order_by(events.c.id)
                )
            )
            .scalars()
            .all()
        )
    assert logged == expected
    assert [e.cursor for e in mine] == sorted(e.cursor for e in mine)


async def test_events_left_unpublished_by_a_crash_are_drained(
    store: SqlChatStore, bus: InProcessEventBus, published: Recorder
) -> None:
    t = tenant()
    # The store commits but nobody publishes: the process "died" after commit.
    channel, _ = await stored_channel(store, t, ChannelType.PUBLIC)
    message, _ = await store.send_message(t, NewMessage(channel.id, "dora", "lost?"))
    assert published.events == []
    relay = EventRelay(store, bus, grace=0.0)
    await relay.flush()
    names = [e.name for e in published.events if e.tenant_id == t]
    assert names == [vocab.CHANNEL_CREATED, vocab.USER_JOINED, vocab.MESSAGE_CREATED]
    assert published.events[-1].data["message"]["id"] == message.id
    await relay.flush()  # marked published: not sent twice
    assert len([e for e in published.events if e.tenant_id == t]) == 3


async def test_events_a_relay_published_are_marked_and_never_drained_again(
    store: SqlChatStore, bus: InProcessEventBus, published: Recorder
) -> None:
    """What a relay put on the bus is marked published at its next flush (all of a
    batch's cursors in one statement), so no relay drains it again."""
    t = tenant()
    channel, recorded = await stored_channel(store, t, ChannelType.PUBLIC)
    sent = [await store.send_message(t, NewMessage(channel.id, "dora", f"m{i}")) for i in range(5)]
    recorded += [event for _, events in sent for event in events]
    relay = EventRelay(store, bus)
    await relay.publish(recorded)
    await relay.flush()
    drainer = EventRelay(store, bus, grace=0.0)
    await drainer.flush()
    mine = [e.cursor for e in published.events if e.tenant_id == t]
    assert mine == [e.cursor for e in recorded]  # each once: none drained again


async def test_events_handed_over_together_go_as_one_bus_message_in_their_order(
    store: SqlChatStore, bus: InProcessEventBus
) -> None:
    """Transactions that commit while a publish is under way are published together: one
    bus message holding their events in the order the relay was handed them."""
    payloads: list[bytes] = []
    subscription = await bus.subscribe(vocab.CHAT_EVENTS_TOPIC, payloads.append)
    t = tenant()
    channel, recorded = await stored_channel(store, t, ChannelType.PUBLIC)
    sent = [await store.send_message(t, NewMessage(channel.id, "dora", f"m{i}")) for i in range(3)]
    handed = [recorded] + [events for _, events in sent]
    relay = EventRelay(store, bus)
    await asyncio.gather(*(relay.publish(events) for events in handed))
    await relay.flush()  # marked published: no other test's drain sends them again
    await subscription.close()
    assert len(payloads) == 1
    together = ev.decode_events(payloads[0])
    assert [e.cursor for e in together] == [e.cursor for events in handed for e in events]
    assert [e.data["message"]["content"] for e in together[-3:]] == ["m0", "m1", "m2"]


async def test_a_failed_publish_is_retried_from_the_log(
    store: SqlChatStore, published: Recorder, bus: InProcessEventBus
) -> None:
    t = tenant()
    chat = ChatService(store, EventRelay(store, BrokenBus()), ClientTokens("x" * 32))
    channel_id = await group(chat, t, "alice")  # answered despite the bus being down
    await EventRelay(store, bus, grace=0.0).flush()
    assert [e.name for e in published.events if e.tenant_id == t] == [
        vocab.CHANNEL_CREATED,
        vocab.USER_JOINED,
    ]
    assert published.events[0].channel_id == channel_id


async def test_a_failed_publish_is_not_marked_published_by_its_own_relay(
    store: SqlChatStore, published: Recorder, bus: InProcessEventBus
) -> None:
    """The relay whose bus refused an event keeps running and flushing; the event stays
    unpublished in the log, and a healthy relay sends it, once."""

    t = tenant()
    channel, recorded = await stored_channel(store, t, ChannelType.PUBLIC)
    broken = EventRelay(store, BrokenBus())  # default grace: it does not drain the new event
    await broken.publish(recorded)
    await broken.flush()
    await EventRelay(store, bus, grace=0.0).flush()
    mine = [e for e in published.events if e.tenant_id == t]
    assert [(e.name, e.cursor) for e in mine] == [(e.name, e.cursor) for e in recorded]
    assert mine[0].channel_id == channel.id
    await EventRelay(store, bus, grace=0.0).flush()  # now marked: not sent again
    assert len([e for e in published.events if e.tenant_id == t]) == len(recorded)


async def test_direct_channels_are_one_per_pair(chat: ChatService) -> None:
    t = tenant()

    async def direct(creator: str, other: str) -> ChannelId:
        channel = await chat.create_channel(
            t,
            name="dm",
            type=ChannelType.DIRECT,
            metadata={},
            created_by=creator,
            member_ids=[other],
            request_id="",
        )
        return channel.id

    first = await direct("alice", "bob")
    assert await direct("bob", "alice") == first
    assert (await chat.get_channel(t, first)).member_count == 2
    with pytest.raises(InvalidChat):
        await chat.create_channel(
            t,
            name="dm",
            type=ChannelType.DIRECT,
            metadata={},
            created_by="alice",
            member_ids=["bob", "carol"],
            request_id="",
        )
    with pytest.raises(WrongState):
        await chat.add_member(t, first, "carol", Role.MEMBER)
    with pytest.raises(NotAllowed):
        await chat.send_message(t, NewMessage(first, "carol", "let me in"))


async def test_who_may_send_where(chat: ChatService) -> None:
    t = tenant()
    private = await group(chat, t, "owner")
    members = await chat.list_members(t, private, limit=10, after=None)
    assert [(m.user_id, m.role) for m in members] == [("owner", Role.OWNER)]
    with pytest.raises(NotAllowed):
        await chat.send_message(t, NewMessage(private, "stranger", "hi"))
    assert (await chat.get_channel(t, private)).last_seq == 0
    public = await chat.create_channel(
        t,
        name="town square",
        type=ChannelType.PUBLIC,
        metadata={},
        created_by="owner",
        member_ids=[],
        request_id="",
    )
    sent = await chat.send_message(t, NewMessage(public.id, "stranger", "hi all"))
    assert sent.seq == 1
    assert await chat.get_member(t, public.id, "stranger") is not None
    assert (await chat.get_user(t, "stranger")).username == "stranger"  # created on first use


async def test_edit_delete_and_reactions(chat: ChatService) -> None:
    t = tenant()
    channel_id = await group(chat, t, "alice", "bob")
    message = await chat.send_message(t, NewMessage(channel_id, "alice", "hello"))
    with pytest.raises(NotAllowed):
        await chat.edit_message(t, channel_id, message.id, "bob", "hacked")
    for user in ("alice", "bob", "bob"):
        reacted = await chat.add_reaction(t, channel_id, message.id, user, "👍")
    await chat.add_reaction(t, channel_id, message.id, "bob", "🎉")
    assert reacted.reaction_counts == (("👍", 2),)
    current = await chat.get_message(t, channel_id, message.id)
    assert current.reaction_counts == (("👍", 2), ("🎉", 1))
    removed = await chat.remove_reaction(t, channel_id, message.id, "alice", "👍")
    assert dict(removed.reaction_counts) == {"👍": 1, "🎉": 1}
    with pytest.raises(NotAllowed):
        await chat.delete_message(t, channel_id, message.id, "bob")
    tombstone = await chat.delete_message(t, channel_id, message.id, "alice")
    assert tombstone.deleted and tombstone.content == "" and tombstone.seq == message.seq
    with pytest.raises(WrongState):
        await chat.edit_message(t, channel_id, message.id, "alice", "undo")
    listed = await chat.list_messages(t, MessageQuery(channel_id, limit=10))
    assert [(m.id, m.deleted) for m in listed] == [(message.id, True)]


async def test_owners_may_delete_others_messages(chat: ChatService) -> None:
    t = tenant()
    channel_id = await group(chat, t, "owner", "member")
    message = await chat.send_message(t, NewMessage(channel_id, "member", "oops"))
    assert (await chat.delete_message(t, channel_id, message.id, "owner")).deleted


async def test_history_queries(chat: ChatService) -> None:
    t = tenant()
    channel_id = await group(chat, t, "alice")
    root = await chat.send_message(t, NewMessage(channel_id, "alice", "root"))
    for n in range(2, 11):
        reply_to = root.id if n % 3 == 0 else ""
        await chat.send_message(t, NewMessage(channel_id, "alice", f"m{n}", reply_to=reply_to))

    async def seqs(**kwargs: object) -> list[int]:
        query = MessageQuery(channel_id, **{"limit": 50, **kwargs})  # type: ignore[arg-type]
        return [m.seq for m in await chat.list_messages(t, query)]

    assert await seqs() == list(range(10, 0, -1))
    assert await seqs(newest_first=False, limit=3) == [1, 2, 3]
    assert await seqs(before_seq=5) == [4, 3, 2, 1]
    assert await seqs(after_seq=7, newest_first=False) == [8, 9, 10]
    assert await seqs(reply_to=root.id, newest_first=False) == [3, 6, 9]
    assert await seqs(limit=3, offset=3) == [7, 6, 5]  # the seed's limit/offset


async def test_reply_to_must_be_in_the_same_channel(chat: ChatService) -> None:
    t = tenant()
    a, b = await group(chat, t, "alice"), await group(chat, t, "alice")
    elsewhere = await chat.send_message(t, NewMessage(a, "alice", "in a"))
    with pytest.raises(WrongState):
        await chat.send_message(t, NewMessage(b, "alice", "reply", reply_to=elsewhere.id))
    assert (await chat.get_channel(t, b)).last_seq == 0


async def test_read_state_and_unread_counts(chat: ChatService) -> None:
    t = tenant()
    channel_id = await group(chat, t, "alice", "bob")
    for n in range(5):
        await chat.send_message(t, NewMessage(channel_id, "alice", f"m{n}"))
    await chat.send_message(t, NewMessage(channel_id, "bob", "mine"))
    (count,) = await chat.unread_counts(t, "bob")
    assert (count.unread_count, count.last_read_seq, count.last_seq) == (5, 0, 6)
    assert (await chat.mark_read(t, channel_id, "bob", 3)).last_read_seq == 3
    assert (await chat.mark_read(t, channel_id, "bob", 2)).last_read_seq == 3  # never back
    (count,) = await chat.unread_counts(t, "bob")
    assert count.unread_count == 2
    assert (await chat.mark_read(t, channel_id, "bob", 0)).last_read_seq == 6
    assert (await chat.unread_counts(t, "bob"))[0].unread_count == 0
    with pytest.raises(NotAllowed):
        await chat.mark_read(t, channel_id, "stranger", 1)


async def test_tenants_never_see_each_other(chat: ChatService) -> None:
    a, b = tenant(), tenant()
    channel_id = await group(chat, a, "alice")
    message = await chat.send_message(a, NewMessage(channel_id, "alice", "secret"))
    for attempt in (
        chat.get_channel(b, channel_id),
        chat.get_message(b, channel_id, message.id),
        chat.send_message(b, NewMessage(channel_id, "", "intrusion")),
        chat.list_messages(b, MessageQuery(channel_id, limit=10)),
        chat.add_member(b, channel_id, "mallory", Role.MEMBER),
        chat.delete_channel(b, channel_id),
    ):
        with pytest.raises(ChannelNotFound):
            await attempt
    assert await chat.list_channels(b, limit=10, after=None, type=None, member_id="") == []
    assert await chat.list_users(b, limit=10, after=None) == []
    assert (await chat.get_channel(a, channel_id)).last_seq == 1


@pytest.mark.parametrize(
    ("new", "field"),
    [
        (NewMessage(ChannelId(""), "u", ""), "content"),
        (NewMessage(ChannelId(""), "u", "   "), "content"),
        (NewMessage(ChannelId(""), "u", "x" * 70_000), "content"),
        (NewMessage(ChannelId(""), "u", "hi", message_type="banana"), "message_type"),
        (NewMessage(ChannelId(""), "u" * 200, "hi"), "user_id"),
        (NewMessage(ChannelId(""), "u", "hi", idempotency_key="k" * 200), "idempotency_key"),
    ],
)
async def test_bad_messages_are_refused_and_store_nothing(
    chat: ChatService, new: NewMessage, field: str
) -> None:
    t = tenant()
    channel_id = await group(chat, t, "u")
    with pytest.raises(InvalidChat) as caught:
        await chat.send_message(
            t,
            NewMessage(
                channel_id,
                **{
                    k: getattr(new, k)
                    for k in ("user_id", "content", "message_type", "idempotency_key")
                },
            ),
        )
    assert field in [v.field for v in caught.value.violations]
    assert (await chat.get_channel(t, channel_id)).last_seq == 0


async def test_custom_message_types_and_long_emoji(chat: ChatService) -> None:
    t = tenant()
    channel_id = await group(chat, t, "u")
    sent = await chat.send_message(t, NewMessage(channel_id, "u", "poll", message_type="x-poll"))
    assert sent.message_type == "x-poll"
    with pytest.raises(InvalidChat) as caught:
        await chat.add_reaction(t, channel_id, sent.id, "u", "🙂" * 65)
    assert caught.value.violations[0].field == "emoji"
    assert (await chat.get_message(t, channel_id, sent.id)).reaction_counts == ()


class StatementCounter:
    """The statements an engine runs and the transactions it commits, from now on."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.statements: list[str] = []
        self.commits = 0
        self._engine = engine
        event.listen(engine.sync_engine, "before_cursor_execute", self._statement)
        event.listen(engine.sync_engine, "commit", self._commit)

    def _statement(self, _conn: object, _cursor: object, statement: str, *_: object) -> None:
        self.statements.append(statement)

    def _commit(self, _conn: object) -> None:
        self.commits += 1

    def close(self) -> None:
        event.remove(self._engine.sync_engine, "before_cursor_execute", self._statement)
        event.remove(self._engine.sync_engine, "commit", self._commit)


async def test_a_batch_of_sends_costs_the_same_statements_whatever_its_size(
    engine: AsyncEngine, store: SqlChatStore
) -> None:
    """Group commit: a batch is a fixed number of statements (lock and write on
    PostgreSQL, each prepared once: four round trips with BEGIN and COMMIT; on SQLite,
    BEGIN IMMEDIATE, the lock, the webhook check and three multi-row writes), never one
    per send; each send gets its own message and event, with the cursor its event row has."""
    t = tenant()
    channels = [(await stored_channel(store, t, ChannelType.GROUP, "alice"))[0] for _ in range(40)]
    counter = StatementCounter(engine)
    try:
        sent = await asyncio.gather(
            *(store.send_message(t, NewMessage(c.id, "alice", f"to {c.id}")) for c in channels * 2)
        )
    finally:
        counter.close()
    per_batch = 2 if engine.dialect.name == "postgresql" else 6
    assert len(counter.statements) == per_batch * counter.commits
    assert counter.commits < len(sent) // 4  # batched, not one transaction per send
    async with engine.connect() as conn:
        rows = {
            row.id: row
            for row in await conn.execute(
                select(events).where(events.c.id.in_([e.cursor for _, es in sent for e in es]))
            )
        }
    for message, recorded in sent:
        (created,) = recorded
        row = rows[created.cursor]
        assert (row.event_id, row.channel_id, row.seq) == (
            created.event_id,
            message.channel_id,
            message.seq,
        )
        assert created.data["message"]["id"] == message.id
    for channel in channels:
        assert sorted(m.seq for m, _ in sent if m.channel_id == channel.id) == [1, 2]
        # the log holds a channel's events in seq order (a batch numbers its rows in order)
        logged = sorted(
            (e for _, es in sent for e in es if e.channel_id == channel.id), key=lambda e: e.cursor
        )
        assert [e.seq for e in logged] == [1, 2]


async def webhooks_done(engine: AsyncEngine, recorded: list[ev.ChatEvent]) -> set[bool]:
    async with engine.connect() as conn:
        return {
            bool(done)
            for (done,) in await conn.execute(
                select(events.c.webhooks_done).where(events.c.id.in_([e.cursor for e in recorded]))
            )
        }


async def test_events_of_a_tenant_without_an_active_webhook_need_no_fan_out(
    engine: AsyncEngine, store: SqlChatStore
) -> None:
    """Events are recorded as already fanned out (``webhooks_done``) while their tenant
    has no active webhook, so the dispatcher never touches them; once it has one, they
    wait for the fan-out, which delivers them."""
    t = tenant()
    channel, created = await stored_channel(store, t, ChannelType.GROUP, "alice", "bob")
    sends = [NewMessage(channel.id, "alice", f"#{n}") for n in range(5)]
    sent = await asyncio.gather(*(store.send_message(t, new) for new in sends))
    assert await webhooks_done(engine, created + [e for _, es in sent for e in es]) == {True}

    hooks = SqlEventStore(engine)
    hook = await hooks.create_webhook(
        t,
        url="https://example.com/hook",
        events_filter=[],
        channel_ids=[],
        description="",
        secret="s" * 32,
    )
    sent = await asyncio.gather(*(store.send_message(t, new) for new in sends))
    _, joined = await store.add_member(t, channel.id, "carol", Role.MEMBER)
    assert await webhooks_done(engine, joined + [e for _, es in sent for e in es]) == {False}

    await hooks.update_webhook(t, hook.id, {"state": WebhookState.PAUSED.value})
    sent = await asyncio.gather(*(store.send_message(t, new) for new in sends))
    assert await webhooks_done(engine, [e for _, es in sent for e in es]) == {True}
