"""The bridge's fan-out of replays (``gateway_bridge.bridge.fanout``) through real sockets,
in front of a real gateway: subscribers that resume a channel at once share one replay
(the gateway reads the channel once and sends it in batches naming all of them), and
each still gets exactly the messages it missed, then the live ones, without a gap or a
duplicate — while messages keep coming during the replay."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.gateway.channels.replays import SharedReplays
from gateway_bridge.gateway.channels.store import SqlChatStore
from tests.gateway_bridge.bridge.conftest import Dial, join, until
from tests.gateway_bridge.conftest import Tenant


@pytest.mark.parametrize("room_already_live", [False, True], ids=["new-room", "shared-room"])
async def test_subscribers_resuming_at_once_share_a_replay_and_each_gets_what_it_missed(
    bridge: Bridge,
    tenant: Tenant,
    dial: Dial,
    room_already_live: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sinces = [0, 5, 17, 30, 39, 0]
    before, total = 40, 70
    asked = 0  # replays the gateway was asked for
    served: list[int] = []  # how many keys each of its rounds served
    progress = {"stored": 0}
    replay, read, list_messages = (
        SharedReplays.replay,
        SharedReplays._read,
        SqlChatStore.list_messages,
    )

    async def counted_replay(self: SharedReplays, *args: Any, **kwargs: Any) -> int:
        nonlocal asked
        asked += 1
        return await replay(self, *args, **kwargs)

    async def counted_read(self: SharedReplays, *args: Any) -> int:
        last_seq = await read(self, *args)
        served.append(len(args[2].keys))
        return last_seq

    async def gated_list_messages(self: SqlChatStore, *args: Any, **kwargs: Any) -> Any:
        # Read only once every subscriber asked, and two more messages were stored
        # (and published) meanwhile, so live events certainly arrive while it runs.
        await until(lambda: asked >= len(sinces) and progress["stored"] >= 2)
        return await list_messages(self, *args, **kwargs)

    monkeypatch.setattr(SharedReplays, "replay", counted_replay)
    monkeypatch.setattr(SharedReplays, "_read", counted_read)
    monkeypatch.setattr(SqlChatStore, "list_messages", gated_list_messages)

    channel = await tenant.public()
    for i in range(before):
        await tenant.send(channel, f"m{i + 1}")
    watcher = await join(dial, bridge, tenant, "bob")
    if room_already_live:
        await watcher.ok("subscribe", channel_id=channel)
    readers = [await join(dial, bridge, tenant, f"reader-{i}") for i in range(len(sinces))]

    async def send_the_rest() -> None:
        for i in range(before, total):
            await tenant.send(channel, f"m{i + 1}")
            progress["stored"] += 1

    sender = asyncio.create_task(send_the_rest())
    # The lowest since_seq first: the others (at or past it) join the round it starts.
    first = asyncio.create_task(readers[0].ok("subscribe", channel_id=channel, since_seq=0))
    await until(lambda: asked >= 1)
    rest = [
        reader.ok("subscribe", channel_id=channel, since_seq=since)
        for reader, since in zip(readers[1:], sinces[1:], strict=True)
    ]
    acks = await asyncio.gather(first, *rest)
    await sender

    assert max(served) >= len(sinces)  # one round served them all
    for reader, since, ack in zip(readers, sinces, acks, strict=True):
        assert await reader.created_seqs(channel, until=total) == list(range(since + 1, total + 1))
        # Replayed events come before the ack, live ones after it.
        at = reader.log.index(ack)
        last = ack["result"]["last_seq"]
        assert before + 2 <= last <= total
        replayed = [f["seq"] for f in reader.log[:at] if f["type"] == "event"]
        live = [f["seq"] for f in reader.log[at:] if f["type"] == "event"]
        assert replayed == list(range(since + 1, last + 1))
        assert live == list(range(last + 1, total + 1))
        assert [f for f in await reader.flush() if f["type"] == "event"] == []
