"""The Connect hub on its own: concurrent replays into a small backlog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from keel.channels.v1 import channels_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway_bridge.gateway.channels.hub import ConnectHub
from gateway_bridge.gateway.channels.models import ChannelType, NewMessage
from gateway_bridge.gateway.channels.service import ChatService
from gateway_bridge.gateway.channels.store import SqlChatStore
from gateway_bridge.gateway.relay import EventRelay
from service_kit.auth import TenantId
from service_kit.bus import InProcessEventBus
from service_kit.client_tokens import ClientTokens
from service_kit.validation import new_id


class StreamContext:
    """What the hub uses of the Connect call's context: it sends the initial metadata
    (which tells the bridge the stream was accepted)."""

    def __init__(self) -> None:
        self.initial_metadata_sent = False

    async def send_initial_metadata(self, metadata: object) -> None:
        self.initial_metadata_sent = True


async def new_channel(chat: ChatService, tenant_id: TenantId, name: str, type: ChannelType) -> Any:
    """A channel created by alice, with no other member."""
    return await chat.create_channel(
        tenant_id,
        name=name,
        type=type,
        metadata={},
        created_by="alice",
        member_ids=[],
        request_id="",
    )


def replayed_seqs(item: channels_pb2.ConnectResponse) -> list[int]:
    """The seqs a replayed event or batch carries."""
    if item.HasField("event_batch"):
        return [event.seq for event in item.event_batch.events]
    return [item.event.seq]


@pytest.mark.parametrize("batches", [False, True], ids=["one-per-response", "batches"])
async def test_concurrent_replays_wait_for_room_instead_of_overflowing_the_backlog(
    engine: AsyncEngine, batches: bool
) -> None:
    """Eight keys resume at once, 150 messages each, through a backlog of 200 responses:
    the replays wait for the reader, and every key gets its messages in order."""
    store, bus = SqlChatStore(engine), InProcessEventBus()
    chat = ChatService(store, EventRelay(store, bus), ClientTokens("x" * 32))
    hub = ConnectHub(store, bus, max_backlog=200)
    await hub.start()
    tenant_id = TenantId(new_id())
    channel = await new_channel(chat, tenant_id, "busy", ChannelType.GROUP)
    for n in range(150):
        await chat.send_message(tenant_id, NewMessage(channel.id, "alice", f"m{n}"))
    done = asyncio.Event()

    async def commands() -> AsyncIterator[channels_pb2.ConnectRequest]:
        for k in range(8):
            yield channels_pb2.ConnectRequest(
                subscribe=channels_pb2.ConnectSubscribe(
                    subscription_key=f"k{k}",
                    tenant_id=tenant_id,
                    user_id="alice",
                    channels=[channels_pb2.ChannelPosition(channel_id=channel.id, since_seq=0)],
                    batch_replays=batches,
                )
            )
        await done.wait()

    replayed: dict[str, list[int]] = {f"k{k}": [] for k in range(8)}
    results = []
    responses = hub.serve(commands(), StreamContext())  # type: ignore[arg-type]
    async with asyncio.timeout(30):
        async for item in responses:
            await asyncio.sleep(0)  # a reader no faster than the replays
            if item.HasField("subscribe_result"):
                results.append(item.subscribe_result)
                if len(results) == 8:
                    break
            else:
                assert item.HasField("event_batch") is batches
                for key in item.subscription_keys:
                    replayed[key] += replayed_seqs(item)
    done.set()
    await responses.aclose()
    await hub.close()
    assert [(r.code, r.last_seq) for r in results] == [(0, 150)] * 8
    assert replayed == {f"k{k}": list(range(1, 151)) for k in range(8)}


class BrokenStore(SqlChatStore):
    """A store whose access check fails the way a lost database connection does."""

    async def read_access(
        self, tenant_id: str, channel_id: str, user_id: str
    ) -> tuple[ChannelType, int, bool]:
        raise RuntimeError("connection to the database was lost")


async def test_a_subscribe_that_fails_unexpectedly_ends_the_stream(engine: AsyncEngine) -> None:
    """Not a silent hang: the bridge sees its stream end, reconnects and resubscribes."""
    store, bus = BrokenStore(engine), InProcessEventBus()
    hub = ConnectHub(store, bus)
    await hub.start()
    never = asyncio.Event()

    async def commands() -> AsyncIterator[channels_pb2.ConnectRequest]:
        yield channels_pb2.ConnectRequest(
            subscribe=channels_pb2.ConnectSubscribe(
                subscription_key="k",
                tenant_id=new_id(),
                user_id="alice",
                channels=[channels_pb2.ChannelPosition(channel_id=new_id())],
            )
        )
        await never.wait()

    async with asyncio.timeout(10):
        items = [item async for item in hub.serve(commands(), StreamContext())]  # type: ignore[arg-type]
    await hub.close()
    assert items == []


def _subscribe(key: str, tenant_id: str, channel_id: str, since: int | None = None) -> Any:
    position = channels_pb2.ChannelPosition(channel_id=channel_id)
    if since is not None:
        position.since_seq = since
    return channels_pb2.ConnectRequest(
        subscribe=channels_pb2.ConnectSubscribe(
            subscription_key=key, tenant_id=tenant_id, user_id="alice", channels=[position]
        )
    )


@pytest.mark.parametrize("published", [True, False], ids=["published-late", "never-published"])
async def test_a_subscribe_result_comes_after_every_live_event_up_to_its_last_seq(
    engine: AsyncEngine, published: bool
) -> None:
    """The seam's contract with the bridge: "k1" already follows the channel; three
    messages are stored but their live events are late (or never come: the sender
    died before publishing). "k2" subscribes and its replay reads all three. Its result
    must come after the live events of 1..3 on the stream — published meanwhile, or
    read from the database after ``gap_wait`` — so the bridge has them in the room's
    order before it puts "k2" live."""
    store, bus = SqlChatStore(engine), InProcessEventBus()
    relay = EventRelay(store, bus)
    chat = ChatService(store, relay, ClientTokens("x" * 32))
    hub = ConnectHub(store, bus, gap_wait=0.2)
    await hub.start()
    tenant_id = TenantId(new_id())
    channel = await new_channel(chat, tenant_id, "late", ChannelType.PUBLIC)
    commands: asyncio.Queue[channels_pb2.ConnectRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[channels_pb2.ConnectRequest]:
        while (request := await commands.get()) is not None:
            yield request

    responses = hub.serve(requests(), StreamContext())  # type: ignore[arg-type]
    log: list[tuple[str, int]] = []
    async with asyncio.timeout(10):
        await commands.put(_subscribe("k1", tenant_id, channel.id))
        first = await anext(responses)
        assert first.subscribe_result.subscription_key == "k1"
        unpublished = []
        for n in range(3):  # stored, events recorded, not (yet) on the bus
            _, events = await store.send_message(tenant_id, NewMessage(channel.id, "alice", f"{n}"))
            unpublished += events
        await commands.put(_subscribe("k2", tenant_id, channel.id, since=0))
        if published:
            await asyncio.sleep(0.05)
            await relay.publish(unpublished)
        while True:
            item = await anext(responses)
            if item.HasField("subscribe_result"):
                log.append(("result", item.subscribe_result.last_seq))
                break
            kind = "replay" if item.subscription_keys else "live"
            log.append((kind, item.event.seq))
    await commands.put(None)
    await responses.aclose()
    await hub.close()
    live = [seq for kind, seq in log if kind == "live"]
    assert live == [1, 2, 3], log
    assert [seq for kind, seq in log if kind == "replay"] == [1, 2, 3], log
    assert log[-1] == ("result", 3)
