"""Shared replays (``gateway_bridge.gateway.channels.replays``): keys of one stream that
resume a channel at the same time share its reads, and each still gets every message
after its ``since_seq``, in order, before its answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from keel.channels.v1 import channels_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway_bridge.gateway.channels import hub as hub_module
from gateway_bridge.gateway.channels import replays as replays_module
from gateway_bridge.gateway.channels.hub import ConnectHub
from gateway_bridge.gateway.channels.models import ChannelType, Message, MessageQuery, NewMessage
from gateway_bridge.gateway.channels.replays import SharedReplays
from gateway_bridge.gateway.channels.service import ChatService
from gateway_bridge.gateway.channels.store import SqlChatStore
from gateway_bridge.gateway.channels.streams import END, BridgeStream
from gateway_bridge.gateway.relay import EventRelay
from service_kit.auth import TenantId
from service_kit.bus import InProcessEventBus
from service_kit.client_tokens import ClientTokens
from service_kit.validation import new_id
from tests.gateway_bridge.gateway.channels.test_hub import StreamContext, new_channel


class GatedStore(SqlChatStore):
    """A store whose page reads each say where they start (``entered``) and then wait for
    a go (``gate``), so a test decides what happens while a round reads; ``broken``
    makes them fail the way a lost database connection does."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.entered: asyncio.Queue[int] = asyncio.Queue()
        self.gate: asyncio.Queue[None] = asyncio.Queue()
        self.reads: list[int] = []
        self.broken = False

    async def list_messages(self, tenant_id: str, query: MessageQuery) -> list[Message]:
        self.reads.append(query.after_seq or 0)
        self.entered.put_nowait(query.after_seq or 0)
        await self.gate.get()
        if self.broken:
            raise RuntimeError("connection to the database was lost")
        return await super().list_messages(tenant_id, query)

    def open(self) -> None:
        """Let every read from now on through."""
        for _ in range(1000):
            self.gate.put_nowait(None)


async def channel_with(engine: AsyncEngine, messages: int) -> tuple[GatedStore, tuple[str, str]]:
    store = GatedStore(engine)
    chat = ChatService(store, EventRelay(store, InProcessEventBus()), ClientTokens("x" * 32))
    tenant_id = TenantId(new_id())
    channel = await new_channel(chat, tenant_id, "storm", ChannelType.PUBLIC)
    for n in range(messages):
        await chat.send_message(tenant_id, NewMessage(channel.id, "alice", f"m{n + 1}"))
    return store, (tenant_id, channel.id)


def sent(stream: BridgeStream) -> list[channels_pb2.ConnectResponse]:
    """Everything the stream has queued, taken."""
    items = []
    while not stream.outbox.empty():
        item = stream.taken(stream.outbox.get_nowait())
        assert isinstance(item, channels_pb2.ConnectResponse)
        items.append(item)
    return items


def seqs_by_key(items: list[channels_pb2.ConnectResponse]) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    for item in items:
        if item.HasField("event_batch"):
            seqs = [event.seq for event in item.event_batch.events]
        else:
            seqs = [item.event.seq]
        for key in item.subscription_keys:
            got.setdefault(key, []).extend(seqs)
    return got


async def test_keys_resuming_a_channel_at_once_share_its_reads(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three keys ask while the first read of a round is on its way: they join it. Then,
    with the round past seq 50, a key from 60 joins it and a key from 10 starts a round
    of its own. Six page reads instead of fourteen, and every key gets every message
    after its since_seq once, in order (a shared page may start before it)."""
    monkeypatch.setattr(replays_module, "REPLAY_PAGE", 50)
    store, channel = await channel_with(engine, 140)
    replays = SharedReplays(store, asyncio.Semaphore(16), None)
    stream = BridgeStream(max_backlog=50_000)

    def replay(key: str, since: int, batches: bool = True) -> asyncio.Task[int]:
        return asyncio.create_task(replays.replay(stream, channel, key, since, batches=batches))

    first = replay("k1", 0)
    assert await store.entered.get() == 0  # the round reads its first page
    riders = [replay("k2", 0), replay("plain", 0, batches=False)]
    await asyncio.sleep(0)  # they run up to their wait
    store.gate.put_nowait(None)
    assert await store.entered.get() == 50  # the first page went out
    later, rider = replay("from-10", 10), replay("from-60", 60)
    assert await store.entered.get() == 10  # its own round, at once
    store.open()
    async with asyncio.timeout(10):
        answers = await asyncio.gather(first, *riders, later, rider)

    assert answers == [140] * 5
    assert sorted(store.reads) == [0, 10, 50, 60, 100, 110]
    items = sent(stream)
    got = seqs_by_key(items)
    for key, since in [("k1", 0), ("k2", 0), ("plain", 0), ("from-10", 10), ("from-60", 60)]:
        assert got[key] == sorted(set(got[key])), key  # in order, once
        assert [s for s in got[key] if s > since] == list(range(since + 1, 141)), key
    assert got["from-60"][0] == 51  # the rest of the round it joined
    for item in items:  # batches for keys that take them, one by one for the other
        assert item.HasField("event_batch") is ("plain" not in item.subscription_keys)
    assert not replays._rounds  # nothing left behind


async def test_a_key_far_ahead_of_a_running_round_does_not_wait_for_it(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key more than a page past where a round is would wait for pages it does not
    need: it reads the channel from its own since_seq while the other round still waits."""
    monkeypatch.setattr(replays_module, "REPLAY_PAGE", 50)
    store, channel = await channel_with(engine, 140)
    replays = SharedReplays(store, asyncio.Semaphore(16), None)
    stream = BridgeStream(max_backlog=50_000)
    behind = asyncio.create_task(replays.replay(stream, channel, "behind", 0, batches=True))
    assert await store.entered.get() == 0
    ahead = asyncio.create_task(replays.replay(stream, channel, "ahead", 120, batches=True))
    assert await store.entered.get() == 120  # the first round has not read a page yet
    store.open()
    async with asyncio.timeout(10):
        assert await asyncio.gather(behind, ahead) == [140, 140]
    got = seqs_by_key(sent(stream))
    assert got == {"behind": list(range(1, 141)), "ahead": list(range(121, 141))}


async def test_a_round_that_cannot_read_fails_every_key_it_serves(engine: AsyncEngine) -> None:
    """Each key's subscribe fails as its own replay would have (the hub then ends the
    stream, and the bridge resubscribes); the next round reads afresh."""
    store, channel = await channel_with(engine, 3)
    replays = SharedReplays(store, asyncio.Semaphore(16), None)
    stream = BridgeStream(max_backlog=100)
    first = asyncio.create_task(replays.replay(stream, channel, "k1", 0, batches=True))
    await store.entered.get()
    second = asyncio.create_task(replays.replay(stream, channel, "k2", 1, batches=True))
    await asyncio.sleep(0)
    store.broken = True
    store.gate.put_nowait(None)
    for task in (first, second):
        with pytest.raises(RuntimeError, match="lost"):
            await task
    store.broken = False
    store.open()
    async with asyncio.timeout(10):
        assert await replays.replay(stream, channel, "k3", 1, batches=True) == 3
    assert seqs_by_key(sent(stream)) == {"k3": [2, 3]}


async def test_a_stream_that_ends_stops_its_rounds_and_leaves_nothing_behind(
    engine: AsyncEngine,
) -> None:
    store, channel = await channel_with(engine, 3)
    replays = SharedReplays(store, asyncio.Semaphore(16), None)
    stream = BridgeStream(max_backlog=100)
    waiting = asyncio.create_task(replays.replay(stream, channel, "k1", 0, batches=True))
    await store.entered.get()
    replays.close(stream)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not replays._rounds
    assert sent(stream) == []


async def test_a_batch_counts_as_its_events_in_the_backlog_replays_wait_for() -> None:
    """Replays pause at a quarter of the backlog: a batch of 60 events in a stream of
    200 fills that quarter on its own, until the stream takes it."""
    stream = BridgeStream(max_backlog=200)
    stream.send(channels_pb2.ConnectResponse(), weight=60)
    waiting = asyncio.create_task(stream.room_to_replay())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert stream.taken(stream.outbox.get_nowait()) == channels_pb2.ConnectResponse()
    async with asyncio.timeout(10):
        await waiting
    assert stream.batched == 0


async def test_a_stream_that_overflows_forgets_its_batches() -> None:
    stream = BridgeStream(max_backlog=2)
    stream.send(channels_pb2.ConnectResponse(), weight=30)
    stream.send(channels_pb2.ConnectResponse())
    stream.send(channels_pb2.ConnectResponse())  # one too many: the stream ends
    assert stream.overflowed and stream.batched == 0
    assert stream.outbox.get_nowait() is END


async def test_a_since_seq_more_than_max_replay_behind_is_out_of_range(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "MAX_REPLAY", 5)
    store, (tenant_id, channel_id) = await channel_with(engine, 8)
    store.open()
    hub = ConnectHub(store, InProcessEventBus())
    await hub.start()
    stop = asyncio.Event()

    async def commands() -> AsyncIterator[channels_pb2.ConnectRequest]:
        for key, since in [("far", 2), ("near", 3)]:
            yield channels_pb2.ConnectRequest(
                subscribe=channels_pb2.ConnectSubscribe(
                    subscription_key=key,
                    tenant_id=tenant_id,
                    user_id="alice",
                    channels=[channels_pb2.ChannelPosition(channel_id=channel_id, since_seq=since)],
                    batch_replays=True,
                )
            )
        await stop.wait()

    results: dict[str, Any] = {}
    responses = hub.serve(commands(), StreamContext())  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        async for item in responses:
            if item.HasField("subscribe_result"):
                results[item.subscribe_result.subscription_key] = item.subscribe_result
                if len(results) == 2:
                    break
    stop.set()
    await responses.aclose()
    await hub.close()
    assert results["far"].code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    assert "6 messages were missed" in results["far"].message
    assert (results["near"].code, results["near"].last_seq) == (0, 8)
