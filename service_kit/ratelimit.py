"""Token buckets: per tenant for calls, per client id for failed credential checks.

In one process the buckets live in memory; with ``REDIS_URL`` they live in
Redis (one atomic Lua script per check) so a limit holds across processes.

Invariants:

- A limit never fails open. While Redis cannot answer, :class:`RedisRateLimiter`
  keeps limiting with buckets in this process (a warning once per outage), and goes
  back to Redis when it answers again.
- In memory, forgetting a bucket is only allowed once it has refilled (a forgotten
  bucket counts as full), so making up new keys cannot reset a bucket someone emptied:
  when a namespace (the key up to its first ``:``) holds its maximum of buckets, none of
  them full, a key it does not hold is refused until one refills. Namespaces are
  bounded apart, so a flood of failed checks cannot crowd out tenants' call buckets.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    """Checks and takes tokens from named buckets."""

    async def acquire(self, key: str, rate: float, burst: int, *, consume: bool = True) -> float:
        """Take one token from bucket ``key`` (refilling at ``rate``/s up to ``burst``).

        Returns 0.0 when a token was available (and was taken, unless
        ``consume`` is false), otherwise the seconds until one will be.
        """
        ...


class _Bucket(NamedTuple):
    tokens: float
    updated: float
    full_at: float  # when it holds ``burst`` tokens again and may be forgotten


class _Namespace:
    """The buckets of one key namespace, with a heap of when each is full again."""

    def __init__(self) -> None:
        self.buckets: dict[str, _Bucket] = {}
        # (full_at, key); an entry is stale when the bucket moved on or is gone.
        self.refills: list[tuple[float, str]] = []

    def store(self, key: str, bucket: _Bucket) -> None:
        self.buckets[key] = bucket
        heapq.heappush(self.refills, (bucket.full_at, key))
        if len(self.refills) > 2 * len(self.buckets) + 64:  # drop stale entries
            self.refills = [(b.full_at, k) for k, b in self.buckets.items()]
            heapq.heapify(self.refills)

    def forget_refilled(self, now: float) -> None:
        while self.refills and self.refills[0][0] <= now:
            full_at, key = heapq.heappop(self.refills)
            bucket = self.buckets.get(key)
            if bucket is not None and bucket.full_at == full_at:
                del self.buckets[key]

    def next_refill(self) -> float:
        """When the first bucket still held is full again."""
        while self.refills:
            full_at, key = self.refills[0]
            bucket = self.buckets.get(key)
            if bucket is not None and bucket.full_at == full_at:
                return full_at
            heapq.heappop(self.refills)
        return 0.0


class InMemoryRateLimiter:
    """Buckets in this process's memory, at most ``max_buckets`` per key namespace.

    A bucket is kept only while it is not full; when a namespace is at its maximum,
    refilled buckets are forgotten first, and if none has refilled, a key the namespace
    does not hold is answered as empty (the wait until the first bucket refills) instead
    of evicting a bucket that still counts failures (see the module docstring).
    """

    def __init__(
        self, *, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._namespaces: dict[str, _Namespace] = {}
        self._max_buckets = max_buckets
        self._clock = clock

    async def acquire(self, key: str, rate: float, burst: int, *, consume: bool = True) -> float:
        now = self._clock()
        space = self._namespaces.setdefault(key.partition(":")[0], _Namespace())
        held = space.buckets.get(key)
        if held is None:
            tokens = float(burst)
            if len(space.buckets) >= self._max_buckets:
                space.forget_refilled(now)
                if len(space.buckets) >= self._max_buckets:
                    return max(space.next_refill() - now, 1e-3)
        else:
            tokens = min(float(burst), held.tokens + (now - held.updated) * rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / rate
        else:
            wait = 0.0
            tokens -= 1.0 if consume else 0.0
        if tokens >= burst:
            space.buckets.pop(key, None)  # full: the same as not kept
        else:
            full_at = now + (burst - tokens) / rate if rate > 0 else math.inf
            space.store(key, _Bucket(tokens, now, full_at))
        return wait


_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens < 1 then
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
  return tostring((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens - cost, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return '0'
"""


class RedisRateLimiter:
    """Buckets in Redis hashes (``keel:rl:<key>``), expiring once full again.

    While Redis fails, buckets in this process (``fallback``) answer instead: the
    first failure logs a warning, later calls skip Redis for ``retry_interval``
    seconds at a time, and the first answer from Redis again logs that it is back.
    """

    def __init__(
        self,
        client: Redis,
        *,
        fallback: RateLimiter | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        self._script = client.register_script(_TOKEN_BUCKET_LUA)
        self._fallback = fallback if fallback is not None else InMemoryRateLimiter()
        self._retry_interval = retry_interval
        self._outage_since: float | None = None
        self._retry_at = 0.0

    async def acquire(self, key: str, rate: float, burst: int, *, consume: bool = True) -> float:
        if self._outage_since is None or time.monotonic() >= self._retry_at:
            try:
                result = await self._script(
                    keys=[f"keel:rl:{key}"], args=[rate, burst, 1 if consume else 0]
                )
            except (RedisError, OSError) as exc:
                self._note_failure(exc)
            else:
                self._note_answer()
                return float(result)
        return await self._fallback.acquire(key, rate, burst, consume=consume)

    def _note_failure(self, exc: Exception) -> None:
        now = time.monotonic()
        self._retry_at = now + self._retry_interval
        if self._outage_since is None:
            self._outage_since = now
            log.warning(
                "rate limits: Redis is unavailable; limiting in this process until it is back",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )

    def _note_answer(self) -> None:
        if self._outage_since is not None:
            outage = time.monotonic() - self._outage_since
            self._outage_since = None
            log.warning(
                "rate limits: Redis is back; limits are shared across processes again",
                extra={"outage_seconds": round(outage, 3)},
            )
