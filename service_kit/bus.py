"""The event bus: topics of byte payloads, in-process or over Redis pub/sub.

Publishers call :meth:`EventBus.publish`; subscribers register a handler per
topic. Handlers run on the event loop and must not block. The bus is
best-effort by design: durable data (messages, the event log) lives in the
database and is replayed from there; the bus only makes it fast.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service_kit.batching import Batcher

log = logging.getLogger(__name__)

Handler = Callable[[bytes], None]

#: The notification service publishes ``keel.notifications.v1.LiveNotifications`` here once
#: it stored in-app notifications; every bridge pushes them to the recipients' connections.
NOTIFICATIONS_LIVE_TOPIC = "notifications.live"


class Subscription(Protocol):
    """A handler's registration on a topic; ``close`` stops its deliveries."""

    async def close(self) -> None: ...


class EventBus(Protocol):
    """Publishes byte payloads on named topics to every subscribed process."""

    async def publish(self, topic: str, payload: bytes) -> None: ...

    async def subscribe(self, topic: str, handler: Handler) -> Subscription: ...

    def on_reconnect(self, listener: Callable[[], None]) -> None: ...

    async def close(self) -> None: ...


class _Registration:
    def __init__(self, bus: _HandlerTable, topic: str, handler: Handler) -> None:
        self._bus, self._topic, self._handler = bus, topic, handler

    async def close(self) -> None:
        await self._bus.remove(self._topic, self._handler)


class _HandlerTable:
    """Handlers per topic; shared by both buses, which differ only in transport."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Handler]] = defaultdict(list)
        self._reconnect_listeners: list[Callable[[], None]] = []

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the bus reconnects after an outage (payloads may have
        been missed meanwhile: consumers should catch up from the database)."""
        self._reconnect_listeners.append(listener)

    def announce_reconnect(self) -> None:
        for listener in tuple(self._reconnect_listeners):
            try:
                listener()
            except Exception:
                log.exception("bus reconnect listener failed")

    def dispatch(self, topic: str, payload: bytes) -> None:
        for handler in tuple(self.handlers.get(topic, ())):
            try:
                handler(payload)
            except Exception:
                log.exception("bus handler failed", extra={"topic": topic})

    async def remove(self, topic: str, handler: Handler) -> None:
        handlers = self.handlers.get(topic)
        if handlers and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self.handlers[topic]
                await self.on_topic_empty(topic)

    async def on_topic_empty(self, topic: str) -> None:
        """Hook for transports that hold per-topic resources."""


class InProcessEventBus(_HandlerTable):
    """The embedded default: handlers in this process are called directly, in order."""

    async def publish(self, topic: str, payload: bytes) -> None:
        self.dispatch(topic, payload)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        self.handlers[topic].append(handler)
        return _Registration(self, topic, handler)

    async def close(self) -> None:
        self.handlers.clear()


class RedisEventBus(_HandlerTable):
    """Redis pub/sub: every process subscribed to a topic receives each payload once.

    One connection listens for all topics of this process; when it breaks it
    reconnects with backoff, subscribes again and tells the ``on_reconnect``
    listeners, because payloads published meanwhile are missed: consumers then
    catch up from the database.
    """

    def __init__(self, client: Redis, *, prefix: str = "keel:") -> None:
        super().__init__()
        self._client = client
        self._prefix = prefix
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._reader: asyncio.Task[None] | None = None
        # Concurrent publishes go out together in one pipeline (one write), one pipeline
        # at a time, so they reach Redis in the order they were made.
        self._publishes: Batcher[tuple[str, bytes], None] = Batcher(
            self._publish_batch, max_batch=256, max_in_flight=1
        )

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._publishes.submit((self._prefix + topic, payload))

    async def _publish_batch(self, batch: list[tuple[str, bytes]]) -> list[None]:
        if len(batch) == 1:
            await self._client.publish(*batch[0])
            return [None]
        async with self._client.pipeline(transaction=False) as pipe:
            for channel, payload in batch:
                pipe.publish(channel, payload)
            await pipe.execute()
        return [None] * len(batch)

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        first = topic not in self.handlers
        self.handlers[topic].append(handler)
        if first:
            await self._pubsub.subscribe(self._prefix + topic)
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")
        return _Registration(self, topic, handler)

    async def on_topic_empty(self, topic: str) -> None:
        try:
            await self._pubsub.unsubscribe(self._prefix + topic)
        except RedisError:
            log.warning("could not unsubscribe from redis topic", extra={"topic": topic})

    async def _read(self) -> None:
        backoff = 0.1
        prefix_len = len(self._prefix)
        broken = False
        while True:
            try:
                if broken:
                    await self._resubscribe()
                    broken = False
                    log.info("redis bus reconnected")
                    self.announce_reconnect()
                message = await self._pubsub.get_message(timeout=1.0)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Any failure (connection lost, pubsub without connection) means: reconnect.
                if not broken:
                    log.warning(
                        "redis bus connection lost; reconnecting", extra={"error": str(exc)}
                    )
                broken = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            topic = (channel.decode() if isinstance(channel, bytes) else channel)[prefix_len:]
            self.dispatch(topic, message["data"])

    async def _resubscribe(self) -> None:
        """A fresh pubsub connection subscribed to every topic; raises while Redis is down."""
        try:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        except Exception:
            pass
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        if self.handlers:
            await self._pubsub.subscribe(*(self._prefix + t for t in self.handlers))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        self.handlers.clear()
