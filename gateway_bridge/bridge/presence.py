"""Who is online in each channel, across every bridge process.

A bridge reports a user present in a channel when the user's first local
connection goes live there, and absent when the last one leaves. The
:class:`Presence` store answers whether that made the user come online (or go
offline) *across all bridges*, which is when ``presence:online`` /
``presence:offline`` events are sent.

In one process (:class:`InMemoryPresence`) that is a counter. With Redis
(:class:`RedisPresence`) each (user, bridge) entry carries an expiry that the
bridge's heartbeat renews; entries of a bridge that died expire, and the next
sweep by any bridge reports those users offline.

Changes are applied in batches (:meth:`Presence.apply`), in the order they were made:
when a crowd of browsers connects, their joins reach Redis together in one pipeline
rather than one round trip each.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal, Protocol

from redis.asyncio import Redis

#: (tenant id, channel id, user id)
Presence3 = tuple[str, str, str]
#: A user's first local live subscription to a channel (join) or their last one ending.
Change = tuple[Literal["join", "leave"], Presence3]


class Presence(Protocol):
    async def join(self, tenant_id: str, channel_id: str, user_id: str) -> bool:
        """Note the user present through this bridge; True if that brought them online."""
        ...

    async def leave(self, tenant_id: str, channel_id: str, user_id: str) -> bool:
        """Note the user gone from this bridge; True if that took them offline."""
        ...

    async def apply(self, changes: Sequence[Change]) -> list[bool]:
        """:meth:`join` or :meth:`leave` for each change, in order; what each answered."""
        ...

    async def online(self, tenant_id: str, channel_id: str) -> list[str]:
        """The users online in the channel, sorted."""
        ...

    async def heartbeat(self, present: list[Presence3]) -> list[Presence3]:
        """Renew this bridge's entries; return users whose entries expired (now offline)."""
        ...


class InMemoryPresence:
    """Presence for a single bridge process."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)

    async def join(self, tenant_id: str, channel_id: str, user_id: str) -> bool:
        users = self._counts[(tenant_id, channel_id)]
        users[user_id] = users.get(user_id, 0) + 1
        return users[user_id] == 1

    async def leave(self, tenant_id: str, channel_id: str, user_id: str) -> bool:
        users = self._counts.get((tenant_id, channel_id), {})
        if user_id not in users:
            return False
        users[user_id] -= 1
        if users[user_id] > 0:
            return False
        del users[user_id]
        if not users:
            del self._counts[(tenant_id, channel_id)]
        return True

    async def apply(self, changes: Sequence[Change]) -> list[bool]:
        return [
            await (self.join(*who) if kind == "join" else self.leave(*who)) for kind, who in changes
        ]

    async def online(self, tenant_id: str, channel_id: str) -> list[str]:
        return sorted(self._counts.get((tenant_id, channel_id), {}))

    async def heartbeat(self, present: list[Presence3]) -> list[Presence3]:
        return []


#: Joins and leaves, in order, in one call: ARGV holds five values a change (``j`` or
#: ``l``, the entry's member, the user, the entry's expiry, the index's member), KEYS the
#: index and then the change's entries and users keys; the answer is 1 for each change
#: that brought its user online or took them offline, else 0.
_APPLY = """
local answers = {}
for i = 1, #ARGV, 5 do
  local entries, users = KEYS[2 + 2 * ((i - 1) / 5)], KEYS[3 + 2 * ((i - 1) / 5)]
  local member, user, answer = ARGV[i + 1], ARGV[i + 2], 0
  if ARGV[i] == 'j' then
    if redis.call('ZADD', entries, ARGV[i + 3], member) == 1 then
      redis.call('SADD', KEYS[1], ARGV[i + 4])
      if redis.call('HINCRBY', users, user, 1) == 1 then answer = 1 end
    end
  elseif redis.call('ZREM', entries, member) == 1 then
    if redis.call('HINCRBY', users, user, -1) <= 0 then
      redis.call('HDEL', users, user)
      answer = 1
    end
  end
  answers[#answers + 1] = answer
end
return answers
"""

_LEAVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    return 1
  end
end
return 0
"""

_SEPARATOR = "\x1f"


class RedisPresence:
    """Presence shared by every bridge through Redis (see the module docstring)."""

    def __init__(self, client: Redis, *, ttl: float = 30.0, bridge_id: str | None = None) -> None:
        self._client = client
        self._ttl = ttl
        self._bridge = bridge_id or uuid.uuid4().hex
        self._apply = client.register_script(_APPLY)
        self._leave = client.register_script(_LEAVE)
        self._index = "keel:presence:channels"

    @staticmethod
    def _keys(tenant_id: str, channel_id: str) -> tuple[str, str]:
        base = f"keel:presence:{tenant_id}:{channel_id}"
        return base + ":entries", base + ":users"

    def _member(self, user_id: str) -> str:
        return f"{user_id}{_SEPARATOR}{self._bridge}"

    async def join(self, tenant_id: str, channel_id: str, user_id: str) -> bool:
        return (await self.apply([("join", (tenant_id, channel_id, user_id))]))[0]

    async def leave(self, tenant_id: str, channel_id: str, user_id: str) -> bool:
        return (await self.apply([("leave", (tenant_id, channel_id, user_id))]))[0]

    async def apply(self, changes: Sequence[Change]) -> list[bool]:
        """Every change in one script call (one round trip; one command to encode however
        many changes there are), in order."""
        if not changes:
            return []
        expiry = repr(time.time() + self._ttl)
        keys = [self._index]
        args: list[str] = []
        for kind, (tenant_id, channel_id, user_id) in changes:
            keys.extend(self._keys(tenant_id, channel_id))
            args += (
                "j" if kind == "join" else "l",
                self._member(user_id),
                user_id,
                expiry,
                f"{tenant_id}:{channel_id}",
            )
        answers = await self._apply(keys=keys, args=args)
        return [int(answer) == 1 for answer in answers]

    async def online(self, tenant_id: str, channel_id: str) -> list[str]:
        _, users = self._keys(tenant_id, channel_id)
        return sorted(_text(u) for u in await self._client.hkeys(users))

    async def heartbeat(self, present: list[Presence3]) -> list[Presence3]:
        """One ``ZADD XX`` per channel for all of its entries (a heartbeat of a bridge
        holding 15,000 users in 150 channels is 150 commands, not 15,000)."""
        expiry = time.time() + self._ttl
        by_channel: dict[tuple[str, str], dict[str, float]] = {}
        for tenant_id, channel_id, user_id in present:
            by_channel.setdefault((tenant_id, channel_id), {})[self._member(user_id)] = expiry
        async with self._client.pipeline(transaction=False) as pipe:
            for (tenant_id, channel_id), members in by_channel.items():
                pipe.zadd(self._keys(tenant_id, channel_id)[0], members, xx=True)
            await pipe.execute()
        return await self._sweep()

    async def _sweep(self) -> list[Presence3]:
        """Remove expired entries (of dead bridges); report users that went offline.

        Four round trips whatever the number of channels: the channels, their expired
        entries (one pipeline), the leaves (one pipeline), which channels are now empty
        (one pipeline, and their removal from the index with it)."""
        now = time.time()
        channels: list[tuple[bytes | str, str, str]] = []  # (index member, tenant, channel)
        for raw in await self._client.smembers(self._index):
            tenant_id, _, channel_id = _text(raw).partition(":")
            channels.append((raw, tenant_id, channel_id))
        if not channels:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for _, tenant_id, channel_id in channels:
                pipe.zrangebyscore(self._keys(tenant_id, channel_id)[0], "-inf", now)
            expired_lists = await pipe.execute()
        leaving: list[Presence3] = []
        async with self._client.pipeline(transaction=False) as pipe:
            for (_, tenant_id, channel_id), expired in zip(channels, expired_lists, strict=True):
                entries, users = self._keys(tenant_id, channel_id)
                for member in map(_text, expired):
                    user_id = member.partition(_SEPARATOR)[0]
                    await self._leave(keys=[entries, users], args=[member, user_id], client=pipe)
                    leaving.append((tenant_id, channel_id, user_id))
            left = await pipe.execute() if leaving else []
        async with self._client.pipeline(transaction=False) as pipe:
            for _, tenant_id, channel_id in channels:
                pipe.exists(self._keys(tenant_id, channel_id)[0])
            still = await pipe.execute()
        empty = [raw for (raw, _, _), count in zip(channels, still, strict=True) if not count]
        if empty:
            await self._client.srem(self._index, *empty)
        return [who for who, result in zip(leaving, left, strict=True) if int(result) == 1]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
