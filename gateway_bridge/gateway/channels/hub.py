"""The gateway's side of ``ChannelService.Connect``: one stream per bridge process.

A bridge subscribes *keys* (one per browser connection, chosen by the bridge)
to channels. The hub keeps, per stream, which channels any key wants, and
routes every chat event from the bus to each stream that wants its channel —
once per stream, not once per key: the bridge fans out to its own sockets.
Each event's response message is built once and shared by all streams.

Subscribing with ``since_seq`` first replays the channel's messages after it
from the database to that key alone (``subscription_keys`` names it), then
sends a ``SubscribeResult`` carrying the seq the replay reached. Live events
of the channel flow from the moment of the subscription, so around the seam
the bridge may see a message both replayed and live; it keeps the seq order
and drops repeats by seq. The seam has one rule the bridge relies on: a
result with ``last_seq`` R comes after every live event of the channel up to R
on the same stream (the result waits until they went out, reading them from
the database if their publishes are late), so when a bridge puts a new
subscriber live, its room already holds everything up to where that
subscriber's replay ended.

A stream whose bridge reads too slowly (more than ``max_backlog`` responses
waiting) is ended with RESOURCE_EXHAUSTED; the bridge reconnects and
resubscribes from the seqs it delivered, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from keel.channels.v1 import channels_pb2

from gateway_bridge.gateway.channels import rules
from gateway_bridge.gateway.channels.drafts import message_data
from gateway_bridge.gateway.channels.models import ChannelId, Message, MessageQuery
from gateway_bridge.gateway.channels.store import ChatStore
from gateway_bridge.gateway.channels.streams import END, BridgeStream, ChannelKey, LiveChannel
from gateway_bridge.gateway.outbox import ChatEvent
from gateway_bridge.vocabulary import (
    CHAT_EVENTS_TOPIC,
    MESSAGE_CREATED,
    SubscriptionsEnd,
    subscriptions_ended_by,
)
from service_kit.bus import EventBus, Subscription
from service_kit.errors import KeelError, OutOfRange, ResourceExhausted, Unavailable
from service_kit.protobuf import timestamp
from service_kit.validation import Violations, is_uuid

log = logging.getLogger(__name__)


MAX_REPLAY: Final = 10_000
_REPLAY_PAGE: Final = 500
#: Subscribe and unsubscribe commands a hub handles at once (each reads the database).
_SUBSCRIBING: Final = 16


class ConnectHub:
    """Routes chat events to bridge streams, in each channel's seq order; serves ``Connect``."""

    def __init__(
        self,
        store: ChatStore,
        bus: EventBus,
        *,
        max_backlog: int = 50_000,
        gap_wait: float = 0.2,
    ) -> None:
        self._store = store
        self._bus = bus
        self._max_backlog = max_backlog
        self._gap_wait = gap_wait
        self._routes: dict[ChannelKey, set[BridgeStream]] = defaultdict(set)
        self._live: dict[ChannelKey, LiveChannel] = {}
        self._subscription: Subscription | None = None
        self._subscribing = asyncio.Semaphore(_SUBSCRIBING)

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(CHAT_EVENTS_TOPIC, self._on_event)
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

    def _on_event(self, payload: bytes) -> None:
        event = ChatEvent.decode(payload)
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
                        limit=min(until - live.last_seq, _REPLAY_PAGE),
                        newest_first=False,
                        after_seq=live.last_seq,
                    ),
                )
                for message in found:
                    event = _replayed_event(key[0], message)
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
        response = channels_pb2.ConnectResponse(event=_event_proto(event))
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
                    self._discard(stream, sub_key, key)

    def _add(self, stream: BridgeStream, sub_key: str, key: ChannelKey) -> None:
        if stream.add(sub_key, key):
            self._routes[key].add(stream)

    def _discard(self, stream: BridgeStream, sub_key: str, key: ChannelKey) -> None:
        if stream.discard(sub_key, key):
            self._unroute(stream, key)

    def _unroute(self, stream: BridgeStream, key: ChannelKey) -> None:
        routes = self._routes.get(key)
        if routes is not None:
            routes.discard(stream)
            if not routes:
                del self._routes[key]
                live = self._live.pop(key, None)
                if live is not None:
                    live.release_waiters()

    def _follow(self, key: ChannelKey, last_seq: int) -> None:
        """Start ordering a channel's live events after ``last_seq`` (read before routing)."""
        if key not in self._live:
            self._live[key] = LiveChannel(last_seq)

    async def _caught_up(self, key: ChannelKey, seq: int) -> None:
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

    async def serve(
        self,
        requests: AsyncIterator[channels_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[channels_pb2.ConnectResponse]:
        """The Connect stream: read commands in the background, yield responses."""
        stream = BridgeStream(self._max_backlog)
        reader = asyncio.create_task(self._read(stream, requests), name="connect-reader")
        try:
            while True:
                item = await stream.outbox.get()
                stream.taken()
                if item is END:
                    if stream.restarting:
                        raise Unavailable(
                            "the gateway's event bus reconnected; resubscribe to catch up",
                            retry_after=0.0,
                        )
                    if stream.overflowed:
                        raise ResourceExhausted(
                            "the bridge fell too far behind; reconnect and resubscribe",
                            retry_after=0.0,
                        )
                    return
                assert isinstance(item, channels_pb2.ConnectResponse)
                yield item
        finally:
            reader.cancel()
            for task in list(stream.commands.values()):
                task.cancel()
            for key in list(stream.readers):
                self._unroute(stream, key)
            stream.keys.clear()
            stream.readers.clear()

    async def _read(
        self, stream: BridgeStream, requests: AsyncIterator[channels_pb2.ConnectRequest]
    ) -> None:
        try:
            async for request in requests:
                if request.HasField("subscribe"):
                    command = request.subscribe
                    self._in_turn(stream, command.subscription_key, self._subscribe, command)
                elif request.HasField("unsubscribe"):
                    self._in_turn(
                        stream,
                        request.unsubscribe.subscription_key,
                        self._unsubscribe,
                        request.unsubscribe,
                    )
            if stream.commands:
                await asyncio.wait(list(stream.commands.values()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connect stream reader failed")
        stream.send(END)

    def _in_turn(
        self,
        stream: BridgeStream,
        sub_key: str,
        handle: Callable[[BridgeStream, Any], Awaitable[None]],
        command: Any,
    ) -> None:
        """Run ``handle(stream, command)`` after the key's earlier commands (so a key's
        subscribes and unsubscribes apply in order) and alongside other keys' commands,
        at most ``_SUBSCRIBING`` at once per hub (each reads the database)."""
        earlier = stream.commands.get(sub_key)

        async def run() -> None:
            if earlier is not None:
                await asyncio.wait([earlier])
            async with self._subscribing:
                try:
                    await handle(stream, command)
                except Exception:
                    # As when reading commands fails: end the stream; the bridge reconnects
                    # and resubscribes, rather than waiting for a result that never comes.
                    log.exception("connect command failed; ending the stream")
                    stream.send(END)

        task = asyncio.get_running_loop().create_task(run(), name="connect-command")
        stream.commands[sub_key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if stream.commands.get(sub_key) is done:
                del stream.commands[sub_key]

        task.add_done_callback(forget)

    async def _unsubscribe(
        self, stream: BridgeStream, command: channels_pb2.ConnectUnsubscribe
    ) -> None:
        """Drop the key's subscriptions to ``channel_ids`` (all of them when empty)."""
        keys = stream.keys.get(command.subscription_key)
        if keys is None:
            return
        dropped = set(command.channel_ids)
        for key in [k for k in keys if not dropped or k[1] in dropped]:
            self._discard(stream, command.subscription_key, key)

    async def _subscribe(
        self, stream: BridgeStream, command: channels_pb2.ConnectSubscribe
    ) -> None:
        v = Violations()
        v.text("subscription_key", command.subscription_key, max_length=128)
        v.uuid("tenant_id", command.tenant_id)
        for position in command.channels:
            if not is_uuid(position.channel_id):
                v.add("channels.channel_id", f"{position.channel_id[:40]!r} is not a valid id")
        if v.items:
            for position in command.channels or [channels_pb2.ChannelPosition()]:
                stream.send(
                    _result(
                        command,
                        position.channel_id,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "; ".join(f"{i.field}: {i.description}" for i in v.items),
                    )
                )
            return
        for position in command.channels:
            await self._subscribe_one(stream, command, position)

    async def _subscribe_one(
        self,
        stream: BridgeStream,
        command: channels_pb2.ConnectSubscribe,
        position: channels_pb2.ChannelPosition,
    ) -> None:
        tenant_id, channel_id = command.tenant_id, position.channel_id
        try:
            channel_type, last_seq, is_member = await self._store.read_access(
                tenant_id, channel_id, command.user_id
            )
            if command.user_id and not rules.may_read(channel_type, is_member):
                stream.send(
                    _result(
                        command,
                        channel_id,
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"user {command.user_id!r} is not a member of this channel",
                    )
                )
                return
            key = (tenant_id, channel_id)
            self._add(stream, command.subscription_key, key)
            stream.users[command.subscription_key] = command.user_id
            self._follow(key, last_seq)
            if position.HasField("since_seq"):
                last_seq = await self._replay(stream, command, channel_id, position.since_seq)
            else:  # from now on: where the channel's live events already went, if further
                last_seq = max(last_seq, self._live[key].last_seq)
            await self._caught_up(key, last_seq)
        except KeelError as exc:
            self._discard(stream, command.subscription_key, (tenant_id, channel_id))
            stream.send(_result(command, channel_id, exc.code, exc.message))
            return
        stream.send(_result(command, channel_id, grpc.StatusCode.OK, "", last_seq))

    async def _replay(
        self,
        stream: BridgeStream,
        command: channels_pb2.ConnectSubscribe,
        channel_id: str,
        since: int,
    ) -> int:
        """Send the messages after ``since`` to the key; return the last seq sent (or reached)."""
        _, last_seq, _ = await self._store.read_access(command.tenant_id, channel_id, "")
        if last_seq - since > MAX_REPLAY:
            raise OutOfRange(
                f"{last_seq - since} messages were missed, more than {MAX_REPLAY} can be"
                " replayed; reload the history with ListMessages and subscribe again"
            )
        if since >= last_seq:
            return last_seq  # nothing to replay (a since_seq past the end included)
        reached = max(since, 0)
        while True:
            page = await self._store.list_messages(
                command.tenant_id,
                MessageQuery(
                    ChannelId(channel_id), limit=_REPLAY_PAGE, newest_first=False, after_seq=reached
                ),
            )
            for message in page:
                await stream.room_to_replay()
                stream.send(
                    channels_pb2.ConnectResponse(
                        event=_event_proto(_replayed_event(command.tenant_id, message)),
                        subscription_keys=[command.subscription_key],
                    )
                )
                reached = message.seq
            if len(page) < _REPLAY_PAGE:
                return max(reached, last_seq)


def _replayed_event(tenant_id: str, message: Message) -> ChatEvent:
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


def _event_proto(event: ChatEvent) -> channels_pb2.ChannelEvent:
    return channels_pb2.ChannelEvent(
        tenant_id=event.tenant_id,
        channel_id=event.channel_id,
        seq=event.seq,
        event=event.name,
        data_json=event.data_json(),
        event_id=event.event_id,
        create_time=timestamp(event.created_at),
    )


def _result(
    command: channels_pb2.ConnectSubscribe,
    channel_id: str,
    code: grpc.StatusCode,
    message: str,
    last_seq: int = 0,
) -> channels_pb2.ConnectResponse:
    return channels_pb2.ConnectResponse(
        subscribe_result=channels_pb2.SubscribeResult(
            subscription_key=command.subscription_key,
            channel_id=channel_id,
            code=code.value[0],
            message=message,
            last_seq=last_seq,
        ),
        subscription_keys=[command.subscription_key],
    )
