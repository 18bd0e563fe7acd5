from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from service_kit.ratelimit import InMemoryRateLimiter, RateLimiter, RedisRateLimiter
from tests.conftest import REDIS_URL


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest, redis: Redis) -> RateLimiter:
    if request.param == "memory":
        return InMemoryRateLimiter()
    return RedisRateLimiter(redis)


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
