from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

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


async def test_concurrent_redis_publishes_all_arrive_in_the_order_they_were_made(
    redis: Redis,
) -> None:
    """Publishes made together go out in one pipeline; none is lost or reordered."""
    topics = [f"test.{uuid.uuid4().hex}" for _ in range(2)]
    receiver_client = Redis.from_url("redis://127.0.0.1:6379/0")
    sender, receiver = RedisEventBus(redis), RedisEventBus(receiver_client)
    got: dict[str, list[bytes]] = {topic: [] for topic in topics}
    arrived = asyncio.Event()

    def on(topic: str) -> Callable[[bytes], None]:
        def on_message(payload: bytes) -> None:
            got[topic].append(payload)
            if sum(map(len, got.values())) == 1000:
                arrived.set()

        return on_message

    for topic in topics:
        await receiver.subscribe(topic, on(topic))
    await asyncio.gather(*(sender.publish(topics[i % 2], f"m{i}".encode()) for i in range(1000)))
    await asyncio.wait_for(arrived.wait(), 10)
    for n, topic in enumerate(topics):
        assert got[topic] == [f"m{i}".encode() for i in range(n, 1000, 2)]
    await receiver.close()
    await sender.close()
    await receiver_client.aclose()


async def test_redis_bus_recovers_from_an_outage_and_says_so(redis: Redis) -> None:
    from tests.service_kit.test_server import TcpProxy

    proxy = TcpProxy(6379)
    await proxy.start()
    topic = f"test.{uuid.uuid4().hex}"
    listener = Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    receiver, sender = RedisEventBus(listener), RedisEventBus(redis)
    got: list[bytes] = []
    reconnected = asyncio.Event()
    receiver.on_reconnect(reconnected.set)
    await receiver.subscribe(topic, got.append)
    await sender.publish(topic, b"before")
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.05)
    await proxy.cut()
    await asyncio.sleep(0.5)  # the reader notices and keeps retrying while Redis is gone
    await proxy.start(proxy.port)
    await asyncio.wait_for(reconnected.wait(), 15)
    await sender.publish(topic, b"after")
    for _ in range(100):
        if b"after" in got:
            break
        await asyncio.sleep(0.05)
    assert got[0] == b"before" and b"after" in got
    await receiver.close()
    await sender.close()
    await listener.aclose()
    await proxy.cut()
