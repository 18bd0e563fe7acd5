"""The gateway's side of ``ChannelService.Connect``: one stream per bridge process.

A bridge subscribes *keys* (one per browser connection, chosen by the bridge)
to channels. The hub keeps, per stream, which channels any key wants
(:class:`~gateway_bridge.gateway.channels.streams.BridgeStream`), and
:mod:`~gateway_bridge.gateway.channels.routes` sends every chat event from the bus
to each stream that wants its channel, once per stream, in seq order.

Subscribing with ``since_seq`` first replays the channel's messages after it
from the database to that key (``subscription_keys`` names it; keys of the stream
replaying the channel at the same time share one read:
:mod:`~gateway_bridge.gateway.channels.replays`), then sends a ``SubscribeResult``
carrying the seq the replay reached. Live events
of the channel flow from the moment of the subscription, so around the seam
the bridge may see a message both replayed and live; it keeps the seq order
and drops repeats by seq. The seam has one rule the bridge relies on: a
result with ``last_seq`` R comes after every live event of the channel up to R
on the same stream (the result waits until they went out, reading them from
the database if their publishes are late), so when a bridge puts a new
subscriber live, its room already holds everything up to where that
subscriber's replay ended.

A bridge may send the subscriptions it has ready at once in one request
(``ConnectSubscribes``, announced by :data:`~gateway_bridge.vocabulary.CONNECT_SUBSCRIBES`
in the stream's initial metadata); each is handled as if it came alone. Its results then
come down together where they come due one after another
(:meth:`~gateway_bridge.gateway.channels.streams.BridgeStream.subscribed`): a reconnecting
crowd of browsers costs a few stream messages each way rather than one per browser.

A bridge's sends (``ConnectSend``) are handed to ``sends`` (the servicer's
:meth:`~gateway_bridge.gateway.channels.servicer.ChannelServicer.stream_send`, the same
code as SendMessage) each in a task of its own, so they meet other sends in the store's
group commit; the answers go down the stream as they come, those ready at once in one
response (``SendResults``). A stream
whose bridge half-closes gets the answers of the sends in flight before it ends.

A stream whose bridge reads too slowly (more than ``max_backlog`` responses
waiting) is ended with RESOURCE_EXHAUSTED; the bridge reconnects and
resubscribes from the seqs it delivered, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from keel.channels.v1 import channels_pb2

from gateway_bridge.gateway.channels import rules
from gateway_bridge.gateway.channels.attachment_links import AttachmentLinks
from gateway_bridge.gateway.channels.replays import SharedReplays
from gateway_bridge.gateway.channels.routes import LiveRoutes
from gateway_bridge.gateway.channels.store import ChatStore
from gateway_bridge.gateway.channels.streams import END, RESULTS, BridgeStream
from gateway_bridge.vocabulary import CONNECT_SENDS, CONNECT_SUBSCRIBES
from service_kit.bus import EventBus
from service_kit.errors import KeelError, OutOfRange, ResourceExhausted, Unavailable
from service_kit.validation import Violations, is_uuid

log = logging.getLogger(__name__)


MAX_REPLAY: Final = 10_000
#: Database reads a hub's subscribes and replays make at once.
_READS: Final = 16

#: What handles a bridge's send (ChannelServicer.stream_send).
Sends = Callable[[channels_pb2.ConnectSend], Awaitable[channels_pb2.SendResult]]


class ConnectHub:
    """Serves ``Connect``: each bridge's commands, replays and subscribe results, with the
    channels' live events routed by :class:`~gateway_bridge.gateway.channels.routes.LiveRoutes`."""

    def __init__(
        self,
        store: ChatStore,
        bus: EventBus,
        *,
        max_backlog: int = 50_000,
        gap_wait: float = 0.2,
        links: AttachmentLinks | None = None,
    ) -> None:
        """``links`` signs the URLs of the attachments of the messages sent to bridges."""
        self._store = store
        self._max_backlog = max_backlog
        self._links = links
        self._routes = LiveRoutes(store, bus, gap_wait=gap_wait, links=links)
        self._reads = asyncio.Semaphore(_READS)
        self._replays = SharedReplays(store, self._reads, links)

    async def start(self) -> None:
        await self._routes.start()

    async def close(self) -> None:
        await self._routes.close()

    async def serve(
        self,
        requests: AsyncIterator[channels_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
        *,
        sends: Sends | None = None,
    ) -> AsyncIterator[channels_pb2.ConnectResponse]:
        """The Connect stream: read commands in the background, yield responses.

        Its initial metadata goes out at once: that is how a bridge knows the stream was
        accepted (and only then says it is up), before any response; with ``sends`` it
        says the stream takes sends (:data:`~gateway_bridge.vocabulary.CONNECT_SENDS`)."""
        await context.send_initial_metadata(
            (CONNECT_SUBSCRIBES, CONNECT_SENDS) if sends is not None else (CONNECT_SUBSCRIBES,)
        )
        stream = BridgeStream(self._max_backlog)
        reader = asyncio.create_task(self._read(stream, requests, sends), name="connect-reader")
        try:
            while True:
                item = stream.taken(await stream.outbox.get())
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
                if item is RESULTS:
                    yield stream.take_results()
                    continue
                assert isinstance(item, channels_pb2.ConnectResponse)
                yield item
        finally:
            reader.cancel()
            for task in list(stream.commands.values()):
                task.cancel()
            self._replays.close(stream)
            for key in list(stream.readers):
                self._routes.unroute(stream, key)
            stream.keys.clear()
            stream.readers.clear()

    async def _read(
        self,
        stream: BridgeStream,
        requests: AsyncIterator[channels_pb2.ConnectRequest],
        sends: Sends | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in requests:
                if request.HasField("sends"):
                    if sends is None:
                        continue  # never asked for: this stream did not say it takes sends
                    for send in request.sends.sends:
                        task = loop.create_task(_send(stream, sends, send))
                        stream.sends.add(task)
                        task.add_done_callback(stream.sends.discard)
                elif request.HasField("subscribe"):
                    command = request.subscribe
                    self._in_turn(stream, command.subscription_key, self._subscribe, command)
                elif request.HasField("subscribes"):
                    stream.batches_subscribe_results = True
                    for command in request.subscribes.subscribes:
                        self._in_turn(stream, command.subscription_key, self._subscribe, command)
                elif request.HasField("unsubscribe"):
                    self._in_turn(
                        stream,
                        request.unsubscribe.subscription_key,
                        self._unsubscribe,
                        request.unsubscribe,
                    )
            if stream.commands or stream.sends:
                await asyncio.wait([*stream.commands.values(), *stream.sends])
        except asyncio.CancelledError:
            raise
        except KeelError:
            pass  # a refused request (the kit's checks): the call ends with its status
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
        subscribes and unsubscribes apply in order) and alongside other keys' commands
        (their database reads at most ``_READS`` at once per hub)."""
        earlier = stream.commands.get(sub_key)

        async def run() -> None:
            if earlier is not None:
                await asyncio.wait([earlier])
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
            self._routes.discard(stream, command.subscription_key, key)

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
                stream.subscribed(
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
            async with self._reads:
                channel_type, last_seq, is_member = await self._store.read_access(
                    tenant_id, channel_id, command.user_id
                )
            if command.user_id and not rules.may_read(channel_type, is_member):
                stream.subscribed(
                    _result(
                        command,
                        channel_id,
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"user {command.user_id!r} is not a member of this channel",
                    )
                )
                return
            key = (tenant_id, channel_id)
            self._routes.add(stream, command.subscription_key, key)
            stream.users[command.subscription_key] = command.user_id
            live_seq = self._routes.follow(key, last_seq)
            if position.HasField("since_seq"):
                since = position.since_seq
                if last_seq - since > MAX_REPLAY:
                    raise OutOfRange(
                        f"{last_seq - since} messages were missed, more than {MAX_REPLAY} can"
                        " be replayed; reload the history with ListMessages and subscribe again"
                    )
                last_seq = await self._replays.replay(
                    stream, key, command.subscription_key, since, batches=command.batch_replays
                )
            else:  # from now on: where the channel's live events already went, if further
                last_seq = max(last_seq, live_seq)
            await self._routes.caught_up(key, last_seq)
        except KeelError as exc:
            self._routes.discard(stream, command.subscription_key, (tenant_id, channel_id))
            stream.subscribed(_result(command, channel_id, exc.code, exc.message))
            return
        stream.subscribed(_result(command, channel_id, grpc.StatusCode.OK, "", last_seq))


async def _send(stream: BridgeStream, sends: Sends, send: channels_pb2.ConnectSend) -> None:
    """Handle one send and queue its answer. A stream that ended meanwhile lets the send
    finish (a send is not undone halfway) and drops its answer: the bridge answered its
    browser UNAVAILABLE, and a retry with the same key finds the message."""
    stream.answer(await sends(send))


def _result(
    command: channels_pb2.ConnectSubscribe,
    channel_id: str,
    code: grpc.StatusCode,
    message: str,
    last_seq: int = 0,
) -> channels_pb2.SubscribeResult:
    return channels_pb2.SubscribeResult(
        subscription_key=command.subscription_key,
        channel_id=channel_id,
        code=code.value[0],
        message=message,
        last_seq=last_seq,
    )
