"""The bus side of the Connect hub: chat events from the bus to the bridge streams that
read their channel, in each channel's seq order.

Each routed channel is a :class:`~gateway_bridge.gateway.channels.streams.LiveChannel`:
gateways publish after commit and two commits' publishes can cross, so an early event
waits for the ones before it, and those that do not come within ``gap_wait`` are read
from the database. An event goes to each stream once, not once per key: the bridge fans
out to its own sockets, and the response message is built once for all streams (a
message's attachments get their signed URLs then, once per event:
:mod:`~gateway_bridge.gateway.channels.attachment_links`). After an
event that ends subscriptions (``user:left``, ``channel:deleted``) the keys it ends stop
reading the channel. When the bus reconnects (events may be missing), every stream ends
with UNAVAILABLE and its bridge resubscribes from the seqs it delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Final

from keel.channels.v1 import channels_pb2

from gateway_bridge.gateway.channels.attachment_links import AttachmentLinks
from gateway_bridge.gateway.channels.drafts import message_data
from gateway_bridge.gateway.channels.models import ChannelId, Message, MessageQuery
from gateway_bridge.gateway.channels.store import ChatStore
from gateway_bridge.gateway.channels.streams import BridgeStream, ChannelKey, LiveChannel
from gateway_bridge.gateway.outbox import ChatEvent, decode_events
from gateway_bridge.vocabulary import (
    CHAT_EVENTS_TOPIC,
    MESSAGE_CREATED,
    SubscriptionsEnd,
    subscriptions_ended_by,
)
from service_kit.bus import EventBus, Subscription
from service_kit.errors import KeelError
from service_kit.protobuf import timestamp

log = logging.getLogger(__name__)

#: Messages read from the database at a time (replays and gap fills).
REPLAY_PAGE: Final = 500


class LiveRoutes:
    """Which streams read which channel, and each channel's live events in seq order."""

    def __init__(
        self,
        store: ChatStore,
        bus: EventBus,
        *,
        gap_wait: float = 0.2,
        links: AttachmentLinks | None = None,
    ) -> None:
        """``links`` signs the URLs of the attachments of the messages going out (none
        without it)."""
        self._store = store
        self._bus = bus
        self._gap_wait = gap_wait
        self._links = links
        self._routes: dict[ChannelKey, set[BridgeStream]] = defaultdict(set)
        self._live: dict[ChannelKey, LiveChannel] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(CHAT_EVENTS_TOPIC, self._on_events)
        self._bus.on_reconnect(self._restart_streams)

    def _restart_streams(self) -> None:
        """The bus was down and events may be missing: end every stream with UNAVAILABLE,
        so each bridge reconnects and resubscribes from the seqs it delivered."""
        for live in self._live.values():
            live.release_waiters()
        self._live.clear()
        for stream in {s for streams in self._routes.values() for s in streams}:
            stream.restart()

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()

    def _on_events(self, payload: bytes) -> None:
        for event in decode_events(payload):
            self._on_event(event)

    def _on_event(self, event: ChatEvent) -> None:
        key = (event.tenant_id, event.channel_id)
        if key not in self._routes:
            return
        live = self._live.get(key)
        if live is None:
            self._emit(key, event)
            return
        seq = event.seq if event.name == MESSAGE_CREATED else None
        self._release(key, live, live.order.offer(event, seq))
        self._fill_soon(key, live)

    def _release(self, key: ChannelKey, live: LiveChannel, events: list[ChatEvent]) -> None:
        for event in events:
            self._emit(key, event)
        live.wake()

    def _fill_soon(self, key: ChannelKey, live: LiveChannel) -> None:
        if not live.filling and live.missing_until() is not None:
            live.filling = True
            asyncio.get_running_loop().create_task(self._fill(key, live))

    async def _fill(self, key: ChannelKey, live: LiveChannel) -> None:
        """Wait for the missing events; read from the database those that never come."""
        try:
            await asyncio.sleep(self._gap_wait)
            while self._live.get(key) is live and (until := live.missing_until()) is not None:
                found = await self._store.list_messages(
                    key[0],
                    MessageQuery(
                        ChannelId(key[1]),
                        limit=min(until - live.last_seq, REPLAY_PAGE),
                        newest_first=False,
                        after_seq=live.last_seq,
                    ),
                )
                for message in found:
                    event = replayed_event(key[0], message)
                    self._release(key, live, live.order.offer(event, message.seq))
                if not found:  # nothing stored in between: skip ahead
                    self._release(key, live, live.order.skip_to(until))
        except KeelError:
            log.warning("could not fill a gap in a channel's events", exc_info=True)
            until = live.missing_until()
            if until is not None:
                self._release(key, live, live.order.skip_to(until))
        finally:
            live.filling = False

    def _emit(self, key: ChannelKey, event: ChatEvent) -> None:
        streams = self._routes.get(key)
        if not streams:
            return
        response = channels_pb2.ConnectResponse(event=event_proto(event, self._links))
        for stream in tuple(streams):
            stream.send(response)
        ended = subscriptions_ended_by(event.name, event.data_text)
        if ended is not None:
            self._end_subscriptions(key, ended)

    def _end_subscriptions(self, key: ChannelKey, ended: SubscriptionsEnd) -> None:
        """The keys of the users whose subscriptions the event ended stop reading the
        channel (:func:`~gateway_bridge.vocabulary.subscriptions_ended_by`)."""
        for stream in tuple(self._routes.get(key, ())):
            for sub_key, channels in list(stream.keys.items()):
                if key in channels and ended.includes(stream.users.get(sub_key, "")):
                    self.discard(stream, sub_key, key)

    def add(self, stream: BridgeStream, sub_key: str, key: ChannelKey) -> None:
        if stream.add(sub_key, key):
            self._routes[key].add(stream)

    def discard(self, stream: BridgeStream, sub_key: str, key: ChannelKey) -> None:
        if stream.discard(sub_key, key):
            self.unroute(stream, key)

    def unroute(self, stream: BridgeStream, key: ChannelKey) -> None:
        routes = self._routes.get(key)
        if routes is not None:
            routes.discard(stream)
            if not routes:
                del self._routes[key]
                live = self._live.pop(key, None)
                if live is not None:
                    live.release_waiters()

    def follow(self, key: ChannelKey, last_seq: int) -> int:
        """Order the channel's live events after ``last_seq`` (read before routing) unless
        they are ordered already; where they are: the last seq that went out."""
        live = self._live.get(key)
        if live is None:
            live = self._live[key] = LiveChannel(last_seq)
        return live.last_seq

    async def caught_up(self, key: ChannelKey, seq: int) -> None:
        """Return once every live event of the channel up to ``seq`` went out on the
        streams (read from the database after ``gap_wait`` if it does not come), or the
        channel is no longer followed. A subscribe result waits for this, so a bridge
        sees every live event up to a result's ``last_seq`` before the result."""
        live = self._live.get(key)
        if live is None or live.last_seq >= seq:
            return
        live.wanted = max(live.wanted, seq)
        waiter = asyncio.get_running_loop().create_future()
        live.waiters.append((seq, waiter))
        self._fill_soon(key, live)
        await waiter


def replayed_event(tenant_id: str, message: Message) -> ChatEvent:
    """A message read back from the database, as the ``message:created`` event it had."""
    return ChatEvent.of(
        cursor=0,
        event_id="",
        tenant_id=tenant_id,
        channel_id=message.channel_id,
        seq=message.seq,
        name=MESSAGE_CREATED,
        data={"message": message_data(message)},
        created_at=message.created_at,
    )


def event_proto(event: ChatEvent, links: AttachmentLinks | None) -> channels_pb2.ChannelEvent:
    """The ``ChannelEvent`` carrying ``event`` on a Connect stream, its message's
    attachments (if any) with URLs ``links`` signs."""
    data_json = event.data_json()
    if links is not None:
        data_json = links.sign_event_data(event.tenant_id, data_json)
    return channels_pb2.ChannelEvent(
        tenant_id=event.tenant_id,
        channel_id=event.channel_id,
        seq=event.seq,
        event=event.name,
        data_json=data_json,
        event_id=event.event_id,
        create_time=timestamp(event.created_at),
        traceparent=event.traceparent,
    )
