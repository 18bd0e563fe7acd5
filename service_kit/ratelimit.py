"""Token buckets: per tenant for calls, per client id for failed credential checks.

In one process the buckets live in memory; with ``REDIS_URL`` they live in
Redis (one atomic Lua script per check) so a limit holds across processes.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

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


class InMemoryRateLimiter:
    """Buckets in a bounded LRU map; the least recently used are forgotten (= full)."""

    def __init__(self, *, max_buckets: int = 100_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_buckets = max_buckets

    async def acquire(self, key: str, rate: float, burst: int, *, consume: bool = True) -> float:
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate
        self._buckets[key] = (tokens - 1.0 if consume else tokens, now)
        if len(self._buckets) > self._max_buckets:
            self._buckets.popitem(last=False)
        return 0.0


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
    """Buckets in Redis hashes (``keel:rl:<key>``), expiring once full again."""

    def __init__(self, client: Redis) -> None:
        self._script = client.register_script(_TOKEN_BUCKET_LUA)

    async def acquire(self, key: str, rate: float, burst: int, *, consume: bool = True) -> float:
        try:
            result = await self._script(
                keys=[f"keel:rl:{key}"], args=[rate, burst, 1 if consume else 0]
            )
        except (RedisError, OSError):
            # Fail open: a Redis outage must not turn every call away.
            log.warning("rate limiter unavailable; letting the request through")
            return 0.0
        return float(result)
