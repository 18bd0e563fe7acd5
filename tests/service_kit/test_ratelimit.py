"""Token buckets in memory, in Redis, and in memory while Redis is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service_kit.ratelimit import InMemoryRateLimiter, RateLimiter, RedisRateLimiter
from tests.conftest import REDIS_URL, free_port


def down_redis() -> Redis:
    """A client of a Redis that is not there (nothing listens on the port)."""
    return Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")


@pytest.fixture(params=["memory", "redis", "redis-down"])
async def limiter(request: pytest.FixtureRequest, redis: Redis) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield InMemoryRateLimiter()
    elif request.param == "redis":
        yield RedisRateLimiter(redis)
    else:
        client = down_redis()
        yield RedisRateLimiter(client)
        await client.aclose()


async def test_burst_then_refusal_with_a_wait(limiter: RateLimiter) -> None:
    key = f"test:{uuid.uuid4().hex}"
    waits = [await limiter.acquire(key, rate=0.5, burst=3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0 < waits[3] <= 2.0


async def test_checking_without_consuming_leaves_the_bucket(limiter: RateLimiter) -> None:
    key = f"test:{uuid.uuid4().hex}"
    for _ in range(5):
        assert await limiter.acquire(key, rate=0.1, burst=1, consume=False) == 0.0
    assert await limiter.acquire(key, rate=0.1, burst=1) == 0.0
    assert await limiter.acquire(key, rate=0.1, burst=1, consume=False) > 0


async def test_buckets_are_independent(limiter: RateLimiter) -> None:
    a, b = f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"
    assert await limiter.acquire(a, rate=0.1, burst=1) == 0.0
    assert await limiter.acquire(a, rate=0.1, burst=1) > 0
    assert await limiter.acquire(b, rate=0.1, burst=1) == 0.0


async def test_redis_buckets_hold_across_clients(redis: Redis) -> None:
    key = f"test:{uuid.uuid4().hex}"
    other = Redis.from_url(REDIS_URL)
    try:
        assert await RedisRateLimiter(redis).acquire(key, rate=0.1, burst=1) == 0.0
        assert await RedisRateLimiter(other).acquire(key, rate=0.1, burst=1) > 0
    finally:
        await other.aclose()


# --- in memory: making up keys must not reset a bucket -------------------------------------


async def test_cycling_through_more_keys_than_it_holds_does_not_flush_a_bucket() -> None:
    """An attacker guessing one client id's secret sends 100,001 made-up ids in between;
    the guessed id's emptied bucket must stay empty."""
    limiter = InMemoryRateLimiter()  # the default size: 100,000 buckets
    guessed = "validate-failures:kc_target"
    for _ in range(3):
        assert await limiter.acquire(guessed, rate=10 / 60, burst=3) == 0.0
    for _ in range(100_001):
        await limiter.acquire(f"validate-failures:kc_{uuid.uuid4().hex}", rate=10 / 60, burst=3)
    assert await limiter.acquire(guessed, rate=10 / 60, burst=3, consume=False) > 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_when_every_bucket_is_in_use_a_new_key_waits_until_one_refills() -> None:
    clock = FakeClock()
    limiter = InMemoryRateLimiter(max_buckets=3, clock=clock)
    for key in ("a", "b", "c"):  # each one token short of full: refilled 10 s later
        assert await limiter.acquire(f"f:{key}", rate=0.1, burst=2) == 0.0
    # A fourth key is refused, checking or taking, and says when room will be made.
    assert await limiter.acquire("f:d", rate=0.1, burst=2, consume=False) == pytest.approx(10.0)
    clock.now += 4.0
    assert await limiter.acquire("f:d", rate=0.1, burst=2) == pytest.approx(6.0)
    # The held buckets are untouched by that: "a" still has one token, then none.
    assert await limiter.acquire("f:a", rate=0.1, burst=2) == 0.0
    assert await limiter.acquire("f:a", rate=0.1, burst=2) > 0
    clock.now += 6.0  # "b" and "c" are full again: forgotten, making room
    assert await limiter.acquire("f:d", rate=0.1, burst=2) == 0.0
    assert await limiter.acquire("f:e", rate=0.1, burst=2) == 0.0
    assert await limiter.acquire("f:g", rate=0.1, burst=2) > 0  # a, d and e hold the room


async def test_checks_that_take_nothing_hold_no_room() -> None:
    limiter = InMemoryRateLimiter(max_buckets=2)
    for i in range(50):
        assert await limiter.acquire(f"f:{i}", rate=0.1, burst=2, consume=False) == 0.0
    assert await limiter.acquire("f:x", rate=0.1, burst=2) == 0.0
    assert await limiter.acquire("f:y", rate=0.1, burst=2) == 0.0


async def test_a_flood_of_one_kind_of_key_leaves_room_for_the_others() -> None:
    limiter = InMemoryRateLimiter(max_buckets=10)
    for i in range(20):
        await limiter.acquire(f"validate-failures:{i}", rate=0.01, burst=5)
    assert await limiter.acquire("validate-failures:new", rate=0.01, burst=5) > 0
    assert await limiter.acquire("tenant:t1", rate=0.01, burst=5) == 0.0


# --- Redis down: limits still hold, in this process ----------------------------------------


async def test_with_redis_down_a_limit_still_holds_and_one_warning_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = down_redis()
    limiter = RedisRateLimiter(client, retry_interval=0.0)  # try Redis on every call
    try:
        with caplog.at_level(logging.WARNING, logger="service_kit.ratelimit"):
            waits = [await limiter.acquire("test:down", rate=0.01, burst=2) for _ in range(5)]
    finally:
        await client.aclose()
    assert waits[:2] == [0.0, 0.0] and all(wait > 0 for wait in waits[2:])
    warnings = [r.getMessage() for r in caplog.records if r.name == "service_kit.ratelimit"]
    assert len(warnings) == 1 and "Redis is unavailable" in warnings[0]


class RedisProxy:
    """A TCP proxy to the test Redis that can be taken down and brought back on one port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_an_outage_falls_back_and_redis_takes_over_again_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = RedisProxy()
    await proxy.start()
    client = Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    limiter = RedisRateLimiter(client, retry_interval=0.0)
    shared, local = f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"
    try:
        with caplog.at_level(logging.WARNING, logger="service_kit.ratelimit"):
            assert await limiter.acquire(shared, rate=0.01, burst=1) == 0.0  # in Redis
            await proxy.stop()
            assert await limiter.acquire(local, rate=0.01, burst=1) == 0.0  # in memory
            assert await limiter.acquire(local, rate=0.01, burst=1) > 0
            await proxy.start()
            # Redis again: the bucket emptied there before the outage is still empty.
            assert await limiter.acquire(shared, rate=0.01, burst=1) > 0
            await proxy.stop()
            await limiter.acquire(local, rate=0.01, burst=1)  # a second outage
    finally:
        await client.aclose()
    messages = [r.getMessage() for r in caplog.records if r.name == "service_kit.ratelimit"]
    assert [m.split(";")[0] for m in messages] == [
        "rate limits: Redis is unavailable",
        "rate limits: Redis is back",
        "rate limits: Redis is unavailable",
    ]
