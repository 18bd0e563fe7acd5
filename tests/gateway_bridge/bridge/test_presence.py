"""Presence across bridges (the Redis store) and the bridge's queue of presence changes:
changes made together are applied together, in order, and announced in that order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from redis.asyncio import Redis

from gateway_bridge.bridge.ephemeral import (
    CHANGES_PER_BATCH,
    EPHEMERAL_TOPIC,
    PRESENCE_TOPIC,
    Ephemeral,
)
from gateway_bridge.bridge.presence import Change, InMemoryPresence, RedisPresence
from service_kit.bus import InProcessEventBus
from service_kit.validation import new_id


async def test_changes_of_two_bridges_answer_who_came_and_went_in_order(redis: Redis) -> None:
    """A user is online while an entry of any bridge is there; one batch holding a join and
    the leave after it answers both, in order."""
    tenant_id, channel_id = new_id(), new_id()
    one, two = RedisPresence(redis), RedisPresence(redis)
    alice, bob = (tenant_id, channel_id, "alice"), (tenant_id, channel_id, "bob")
    assert await one.apply([("join", alice), ("join", bob), ("leave", bob)]) == [True, True, True]
    assert await two.apply([("join", alice)]) == [False]
    assert await one.online(tenant_id, channel_id) == ["alice"]
    assert await one.apply([("leave", alice)]) == [False]  # still there through the other
    assert await two.apply([("leave", alice), ("leave", alice)]) == [True, False]
    assert await one.online(tenant_id, channel_id) == []


@contextmanager
def round_trips(redis: Redis) -> Iterator[list[str]]:
    """The commands sent to Redis on their own, and the pipelines ("pipeline"), meanwhile."""
    calls: list[str] = []
    direct, pipeline = redis.execute_command, redis.pipeline

    async def counted_command(*args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return await direct(*args, **options)

    def counted_pipeline(*args: Any, **options: Any) -> Any:
        calls.append("pipeline")
        return pipeline(*args, **options)

    redis.execute_command = counted_command  # type: ignore[method-assign]
    redis.pipeline = counted_pipeline  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del redis.execute_command, redis.pipeline


async def test_a_crowd_of_joins_reaches_redis_in_one_command(redis: Redis) -> None:
    """200 users joining at once cost one script call, not a round trip (or a command to
    encode) each."""
    tenant_id, channel_id = new_id(), new_id()
    presence = RedisPresence(redis)
    await presence.apply([("join", (tenant_id, channel_id, "warm-up"))])  # loads the scripts
    with round_trips(redis) as calls:
        users = [f"user-{i}" for i in range(200)]
        joined = await presence.apply([("join", (tenant_id, channel_id, u)) for u in users])
    assert joined == [True] * 200
    assert calls == ["EVALSHA"]
    assert await presence.online(tenant_id, channel_id) == sorted([*users, "warm-up"])


class RecordingPresence(InMemoryPresence):
    """The in-memory store, noting each batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Change]] = []

    async def apply(self, changes: Sequence[Change]) -> list[bool]:
        self.batches.append(list(changes))
        return await super().apply(changes)


class NoRooms:
    """A fan-out with no rooms: what the bus brings back is not written anywhere."""

    def room(self, tenant_id: str, channel_id: str) -> None:
        return None


async def test_changes_made_together_are_applied_together_and_announced_in_order() -> None:
    """One batch of changes: one call to the store, and one bus message announcing the
    users who came or went, in the order of the changes."""
    bus, presence = InProcessEventBus(), RecordingPresence()
    messages: list[dict[str, Any]] = []
    heard: list[dict[str, str]] = []
    everyone = asyncio.Event()

    def hear(payload: bytes) -> None:
        messages.append(json.loads(payload))
        heard.extend(messages[-1]["events"])
        if len(heard) == 101:
            everyone.set()

    subscription = await bus.subscribe(PRESENCE_TOPIC, hear)
    ephemeral = Ephemeral(bus=bus, presence=presence)
    await ephemeral.start(NoRooms())  # type: ignore[arg-type]
    try:
        channel = ("t", "c")
        for i in range(100):
            ephemeral.change((*channel, f"user-{i}"), +1)
        ephemeral.change((*channel, "user-0"), +1)  # a second subscription: no change
        ephemeral.change((*channel, "user-0"), -1)
        ephemeral.change((*channel, "user-0"), -1)  # the last one: offline
        async with asyncio.timeout(10):
            await everyone.wait()
    finally:
        await ephemeral.stop()
        await subscription.close()
    assert len(presence.batches) == 1
    assert len(messages) == 1
    assert [(m["event"], m["user_id"]) for m in heard] == [
        *(("presence:online", f"user-{i}") for i in range(100)),
        ("presence:offline", "user-0"),
    ]


class Watcher:
    id = "w"


class OneRoom:
    """A fan-out with one room, where ``watcher`` watches presence; notes what it writes
    (``three`` is set at the third frame)."""

    def __init__(self, tenant_id: str, channel_id: str) -> None:
        self.watcher = Watcher()
        self.key = (tenant_id, channel_id)
        self.written: list[bytes] = []
        self.three = asyncio.Event()

    def room(self, tenant_id: str, channel_id: str) -> SimpleNamespace | None:
        if (tenant_id, channel_id) != self.key:
            return None
        return SimpleNamespace(live={self.watcher}, watchers={self.watcher})

    def write(self, conn: object, frame: bytes) -> None:
        assert conn is self.watcher
        self.written.append(frame)
        if len(self.written) == 3:
            self.three.set()


async def test_a_presence_event_of_a_bridge_from_before_the_batches_is_still_written() -> None:
    """Bridges from before PRESENCE_TOPIC announce each user alone on the ephemeral topic,
    which newer bridges still read; the batches of newer ones come on their own topic."""
    bus = InProcessEventBus()
    fanout = OneRoom("t", "c")
    ephemeral = Ephemeral(bus=bus, presence=InMemoryPresence())
    await ephemeral.start(fanout)  # type: ignore[arg-type]
    try:
        old = {"kind": "presence", "event": "presence:online", "tenant_id": "t"}
        await bus.publish(
            EPHEMERAL_TOPIC, json.dumps(old | {"channel_id": "c", "user_id": "ann"}).encode()
        )
        await bus.publish(
            EPHEMERAL_TOPIC, json.dumps(old | {"channel_id": "x", "user_id": "bob"}).encode()
        )
        ephemeral.change(("t", "c", "cid"), +1)
        ephemeral.change(("t", "c", "cid"), -1)
        async with asyncio.timeout(10):
            await fanout.three.wait()
    finally:
        await ephemeral.stop()
    assert [json.loads(frame[2:]) for frame in fanout.written] == [
        {
            "type": "event",
            "event": f"presence:{event}",
            "channel_id": "c",
            "seq": 0,
            "event_id": "",
            "data": {"user_id": user},
        }
        for event, user in [("online", "ann"), ("online", "cid"), ("offline", "cid")]
    ]


async def test_the_users_of_a_dead_bridge_go_offline_at_the_next_sweep(redis: Redis) -> None:
    """A bridge that stopped renewing its entries (here: entries already expired): the next
    heartbeat of any bridge reports each of its users offline once, in every channel, and
    leaves the users another bridge still holds online."""
    tenant_id, channels = new_id(), [new_id() for _ in range(3)]
    dead, alive = RedisPresence(redis, ttl=-1.0), RedisPresence(redis)
    await dead.apply([("join", (tenant_id, c, u)) for c in channels for u in ("ann", "bob")])
    await alive.apply([("join", (tenant_id, channels[0], "bob"))])
    with round_trips(redis) as calls:
        gone = [who for who in await alive.heartbeat([]) if who[0] == tenant_id]
    # Whatever the number of channels (other tests' too): the renewals, then the sweep.
    assert calls == ["pipeline", "SMEMBERS", "pipeline", "pipeline", "pipeline", "SREM"]
    assert sorted(gone) == sorted(
        [(tenant_id, c, "ann") for c in channels] + [(tenant_id, c, "bob") for c in channels[1:]]
    )
    assert [await alive.online(tenant_id, c) for c in channels] == [["bob"], [], []]
    assert [who for who in await alive.heartbeat([]) if who[0] == tenant_id] == []
    index = {bytes(m).decode() for m in await redis.smembers("keel:presence:channels")}
    assert f"{tenant_id}:{channels[0]}" in index
    assert not {f"{tenant_id}:{c}" for c in channels[1:]} & index


async def test_a_heartbeat_renews_every_entry_it_names_in_every_channel(redis: Redis) -> None:
    """Entries that would have expired (joined with a past expiry) and are renewed by their
    bridge's heartbeat, several users a channel, stay: nobody goes offline."""
    tenant_id, channels, bridge = new_id(), [new_id() for _ in range(2)], new_id()
    present = [(tenant_id, c, u) for c in channels for u in ("ann", "bob", "cy")]
    await RedisPresence(redis, ttl=-1.0, bridge_id=bridge).apply([("join", w) for w in present])
    gone = await RedisPresence(redis, bridge_id=bridge).heartbeat(present)
    assert [who for who in gone if who[0] == tenant_id] == []
    online = [await RedisPresence(redis).online(tenant_id, c) for c in channels]
    assert online == [["ann", "bob", "cy"]] * 2


async def test_a_presence_batch_reaches_each_tenants_own_watchers_only() -> None:
    """One bus message may carry several tenants' changes; each event goes to the room of
    its own tenant, never to the same channel id of another tenant."""
    bus = InProcessEventBus()
    fanout = OneRoom("t", "c")
    ephemeral = Ephemeral(bus=bus, presence=InMemoryPresence())
    await ephemeral.start(fanout)  # type: ignore[arg-type]
    try:
        # One batch (queued together): this tenant's user first, another tenant's after.
        ephemeral.change(("t", "c", "ann"), +1)
        ephemeral.change(("other", "c", "mallory"), +1)
        ephemeral.change(("t", "c", "ann"), -1)
        ephemeral.change(("t", "c", "zed"), +1)  # the third frame, when all is well
        async with asyncio.timeout(10):
            await fanout.three.wait()
    finally:
        await ephemeral.stop()
    heard = [json.loads(frame[2:]) for frame in fanout.written]
    assert [(f["event"], f["data"]["user_id"]) for f in heard] == [
        ("presence:online", "ann"),
        ("presence:offline", "ann"),
        ("presence:online", "zed"),
    ]


class DeadBridge(InMemoryPresence):
    """A store whose first heartbeat reports ``count`` users of a dead bridge gone."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.gone = [("t", "c", f"user-{i}") for i in range(count)]

    async def heartbeat(self, present: list[Any]) -> list[Any]:
        gone, self.gone = self.gone, []
        return gone


async def test_a_dead_bridges_users_are_announced_offline_in_bounded_messages() -> None:
    """Every user of a dead bridge is announced offline, in order, in messages of at most
    CHANGES_PER_BATCH events (not one message as large as the bridge was)."""
    count = 2 * CHANGES_PER_BATCH + 1
    bus = InProcessEventBus()
    messages: list[list[dict[str, str]]] = []
    everyone = asyncio.Event()

    def hear(payload: bytes) -> None:
        messages.append(json.loads(payload)["events"])
        if sum(map(len, messages)) == count:
            everyone.set()

    subscription = await bus.subscribe(PRESENCE_TOPIC, hear)
    ephemeral = Ephemeral(bus=bus, presence=DeadBridge(count), ttl=0.03)
    await ephemeral.start(NoRooms())  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            await everyone.wait()
    finally:
        await ephemeral.stop()
        await subscription.close()
    assert [len(m) for m in messages] == [CHANGES_PER_BATCH, CHANGES_PER_BATCH, 1]
    assert [e["user_id"] for m in messages for e in m] == [f"user-{i}" for i in range(count)]
