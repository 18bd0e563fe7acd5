from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from service_kit.bus import InProcessEventBus, RedisEventBus


async def test_in_process_bus_delivers_in_order_and_stops_after_close() -> None:
    bus = InProcessEventBus()
    got: list[bytes] = []
    sub = await bus.subscribe("t", got.append)
    for i in range(3):
        await bus.publish("t", str(i).encode())
    await bus.publish("other", b"x")
    await sub.close()
    await bus.publish("t", b"late")
    assert got == [b"0", b"1", b"2"]


async def test_redis_bus_reaches_another_process_connection(redis: Redis) -> None:
    topic = f"test.{uuid.uuid4().hex}"
    receiver_client = Redis.from_url("redis://127.0.0.1:6379/0")
    sender, receiver = RedisEventBus(redis), RedisEventBus(receiver_client)
    got: list[bytes] = []
    arrived = asyncio.Event()

    def on_message(payload: bytes) -> None:
        got.append(payload)
        if len(got) == 3:
            arrived.set()

    await receiver.subscribe(topic, on_message)
    for i in range(3):
        await sender.publish(topic, f"m{i}".encode())
    await asyncio.wait_for(arrived.wait(), 5)
    assert got == [b"m0", b"m1", b"m2"]
    await receiver.close()
    await sender.close()
    await receiver_client.aclose()
