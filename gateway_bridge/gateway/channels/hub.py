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
and drops repeats by seq.

A stream whose bridge reads too slowly (more than ``max_backlog`` responses
waiting) is ended with RESOURCE_EXHAUSTED; the bridge reconnects and
resubscribes from the seqs it delivered, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from keel.channels.v1 import channels_pb2

from gateway_bridge.gateway.channels import rules
from gateway_bridge.gateway.channels.drafts import message_data
from gateway_bridge.gateway.channels.models import ChannelId, Message, MessageQuery
from gateway_bridge.gateway.channels.store import SqlChatStore
from gateway_bridge.gateway.outbox import ChatEvent
from gateway_bridge.vocabulary import CHANNEL_DELETED, CHAT_EVENTS_TOPIC, MESSAGE_CREATED, USER_LEFT
from service_kit.bus import EventBus, Subscription
from service_kit.errors import KeelError, OutOfRange, ResourceExhausted, Unavailable
from service_kit.protobuf import timestamp
from service_kit.validation import Violations, is_uuid

log = logging.getLogger(__name__)

ChannelKey = tuple[str, str]  # (tenant id, channel id)

MAX_REPLAY: Final = 10_000
_REPLAY_PAGE: Final = 500
#: Subscribe and unsubscribe commands a hub handles at once (each reads the database).
_SUBSCRIBING: Final = 16
_END: Final = object()


class _Stream:
    """One bridge's Connect stream: its keys, its channels and its outgoing backlog."""

    def __init__(self, max_backlog: int) -> None:
        self.outbox: asyncio.Queue[object] = asyncio.Queue()
        self.max_backlog = max_backlog
        # Replays pause at a quarter of the backlog and go on below an eighth.
        self.replay_pause, self.replay_resume = max(1, max_backlog // 4), max(1, max_backlog // 8)
        self.keys: dict[str, set[ChannelKey]] = defaultdict(set)
        self.users: dict[str, str] = {}  # subscription key -> the user it reads for
        self.readers: Counter[ChannelKey] = Counter()  # how many keys read each channel
        self.commands: dict[str, asyncio.Task[None]] = {}  # the last command of each key
        self.has_room = asyncio.Event()  # set while the backlog is low enough to replay into
        self.has_room.set()
        self.overflowed = False
        self.restarting = False

    def add(self, sub_key: str, key: ChannelKey) -> bool:
        """``sub_key`` reads ``key``; True when the stream did not read it before."""
        channels = self.keys[sub_key]
        if key in channels:
            return False
        channels.add(key)
        self.readers[key] += 1
        return self.readers[key] == 1

    def discard(self, sub_key: str, key: ChannelKey) -> bool:
        """``sub_key`` stops reading ``key``; True when no key of the stream reads it now."""
        channels = self.keys.get(sub_key)
        if channels is None or key not in channels:
            return False
        channels.discard(key)
        if not channels:
            del self.keys[sub_key]
            self.users.pop(sub_key, None)
        self.readers[key] -= 1
        if self.readers[key] > 0:
            return False
        del self.readers[key]
        return True

    def send(self, item: object) -> None:
        if self.overflowed:
            return
        if self.outbox.qsize() >= self.max_backlog:
            self.overflowed = True
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.outbox.put_nowait(_END)
            return
        self.outbox.put_nowait(item)

    async def room_to_replay(self) -> None:
        """Before each replayed item: wait while the backlog is at a quarter of its limit,
        so concurrent replays cannot fill the backlog that live events need."""
        while self.outbox.qsize() >= self.replay_pause:
            self.has_room.clear()
            await self.has_room.wait()

    def taken(self) -> None:
        """The stream sent an item: wake the replays once the backlog is low again."""
        if not self.has_room.is_set() and self.outbox.qsize() < self.replay_resume:
            self.has_room.set()

    def restart(self) -> None:
        self.restarting = True
        self.outbox.put_nowait(_END)


class _Order:
    """Puts one channel's live message events back in seq order.

    Gateways publish after commit, and two commits' publishes can cross (two
    coroutines, or two gateway processes), so events may arrive out of order.
    An early event waits here for the ones before it; if they do not arrive
    within ``gap_wait`` seconds they are read from the database instead.
    """

    __slots__ = ("filling", "next_seq", "pending")

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq
        self.pending: dict[int, ChatEvent] = {}
        self.filling = False


class ConnectHub:
    """Routes chat events to bridge streams, in each channel's seq order; serves ``Connect``."""

    def __init__(
        self,
        store: SqlChatStore,
        bus: EventBus,
        *,
        max_backlog: int = 50_000,
        gap_wait: float = 0.2,
    ) -> None:
        self._store = store
        self._bus = bus
        self._max_backlog = max_backlog
        self._gap_wait = gap_wait
        self._routes: dict[ChannelKey, set[_Stream]] = defaultdict(set)
        self._order: dict[ChannelKey, _Order] = {}
        self._subscription: Subscription | None = None
        self._subscribing = asyncio.Semaphore(_SUBSCRIBING)

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(CHAT_EVENTS_TOPIC, self._on_event)
        self._bus.on_reconnect(self._restart_streams)

    def _restart_streams(self) -> None:
        """The bus was down and events may be missing: end every stream with UNAVAILABLE,
        so each bridge reconnects and resubscribes from the seqs it delivered."""
        self._order.clear()
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
        order = self._order.get(key)
        if event.name != MESSAGE_CREATED or order is None:
            self._emit(key, event)
            return
        if event.seq < order.next_seq or event.seq in order.pending:
            return  # a repeat (the event log publishes at least once)
        order.pending[event.seq] = event
        self._release(key, order)
        if order.pending and not order.filling:
            order.filling = True
            asyncio.get_running_loop().create_task(self._fill_gap(key, order))

    def _release(self, key: ChannelKey, order: _Order) -> None:
        while order.next_seq in order.pending:
            self._emit(key, order.pending.pop(order.next_seq))
            order.next_seq += 1

    async def _fill_gap(self, key: ChannelKey, order: _Order) -> None:
        """Wait for the missing events; read from the database those that never come."""
        try:
            await asyncio.sleep(self._gap_wait)
            while order.pending and self._order.get(key) is order:
                missing_until = min(order.pending)
                found = await self._store.list_messages(
                    key[0],
                    MessageQuery(
                        ChannelId(key[1]),
                        limit=min(missing_until - order.next_seq, _REPLAY_PAGE),
                        newest_first=False,
                        after_seq=order.next_seq - 1,
                    ),
                )
                for message in found:
                    if message.seq >= order.next_seq and message.seq not in order.pending:
                        order.pending[message.seq] = _replayed_event(key[0], message)
                if not found:
                    order.next_seq = missing_until  # nothing stored in between: skip ahead
                self._release(key, order)
        except KeelError:
            log.warning("could not fill a gap in a channel's events", exc_info=True)
            if order.pending:
                order.next_seq = min(order.pending)
                self._release(key, order)
        finally:
            order.filling = False

    def _emit(self, key: ChannelKey, event: ChatEvent) -> None:
        streams = self._routes.get(key)
        if not streams:
            return
        response = channels_pb2.ConnectResponse(event=_event_proto(event))
        for stream in tuple(streams):
            stream.send(response)
        if event.name in (USER_LEFT, CHANNEL_DELETED):
            self._end_subscriptions(key, event)

    def _end_subscriptions(self, key: ChannelKey, event: ChatEvent) -> None:
        """After ``user:left`` that user's keys stop reading the channel (it may be private);
        after ``channel:deleted`` every key does."""
        leaving = event.data.get("user_id") if event.name == USER_LEFT else None
        for stream in tuple(self._routes.get(key, ())):
            for sub_key, channels in list(stream.keys.items()):
                if key in channels and (leaving is None or stream.users.get(sub_key) == leaving):
                    self._discard(stream, sub_key, key)

    def _add(self, stream: _Stream, sub_key: str, key: ChannelKey) -> None:
        if stream.add(sub_key, key):
            self._routes[key].add(stream)

    def _discard(self, stream: _Stream, sub_key: str, key: ChannelKey) -> None:
        if stream.discard(sub_key, key):
            self._unroute(stream, key)

    def _unroute(self, stream: _Stream, key: ChannelKey) -> None:
        routes = self._routes.get(key)
        if routes is not None:
            routes.discard(stream)
            if not routes:
                del self._routes[key]
                self._order.pop(key, None)

    def _follow(self, key: ChannelKey, last_seq: int) -> None:
        """Start ordering a channel's live events after ``last_seq`` (read before routing)."""
        if key not in self._order:
            self._order[key] = _Order(last_seq + 1)

    async def serve(
        self,
        requests: AsyncIterator[channels_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[channels_pb2.ConnectResponse]:
        """The Connect stream: read commands in the background, yield responses."""
        stream = _Stream(self._max_backlog)
        reader = asyncio.create_task(self._read(stream, requests), name="connect-reader")
        try:
            while True:
                item = await stream.outbox.get()
                stream.taken()
                if item is _END:
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
        self, stream: _Stream, requests: AsyncIterator[channels_pb2.ConnectRequest]
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
        stream.send(_END)

    def _in_turn(
        self,
        stream: _Stream,
        sub_key: str,
        handle: Callable[[_Stream, Any], Awaitable[None]],
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
                    stream.send(_END)

        task = asyncio.get_running_loop().create_task(run(), name="connect-command")
        stream.commands[sub_key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if stream.commands.get(sub_key) is done:
                del stream.commands[sub_key]

        task.add_done_callback(forget)

    async def _unsubscribe(self, stream: _Stream, command: channels_pb2.ConnectUnsubscribe) -> None:
        """Drop the key's subscriptions to ``channel_ids`` (all of them when empty)."""
        keys = stream.keys.get(command.subscription_key)
        if keys is None:
            return
        dropped = set(command.channel_ids)
        for key in [k for k in keys if not dropped or k[1] in dropped]:
            self._discard(stream, command.subscription_key, key)

    async def _subscribe(self, stream: _Stream, command: channels_pb2.ConnectSubscribe) -> None:
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
        stream: _Stream,
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
            self._add(stream, command.subscription_key, (tenant_id, channel_id))
            stream.users[command.subscription_key] = command.user_id
            self._follow((tenant_id, channel_id), last_seq)
            if position.HasField("since_seq"):
                last_seq = await self._replay(stream, command, channel_id, position.since_seq)
        except KeelError as exc:
            self._discard(stream, command.subscription_key, (tenant_id, channel_id))
            stream.send(_result(command, channel_id, exc.code, exc.message))
            return
        stream.send(_result(command, channel_id, grpc.StatusCode.OK, "", last_seq))

    async def _replay(
        self, stream: _Stream, command: channels_pb2.ConnectSubscribe, channel_id: str, since: int
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
