"""Fan-out: the bridge's rooms, fed by the gateway stream, written to sockets.

This is the I/O side of :mod:`gateway_bridge.bridge.room`: it routes what the
gateway's ``Connect`` stream sends (live events, replays, subscribe results) to the
room cores, carries out what they decide, and writes. Fan-out is the hot path: each
event becomes one frame's bytes once, and those bytes are written straight to every
live subscriber's transport. Events that arrive within ``COALESCE_SECONDS`` of each
other go out together, one write per subscriber for the lot; a subscriber whose
unsent bytes exceed the send buffer is cut as a slow consumer instead of slowing the
others or growing memory.

A bridge that does little but flush (thousands of subscribers, events as close as a
flush takes, a busy machine) waits between flushes: once flushing took more than
``BUSY_SHARE`` of its time lately (an average over the last flushes), a flush starts no
sooner after the previous one ended than that one took to run (and at most
``MAX_COALESCE_SECONDS`` later). A flush costs one system call per subscriber whether it
carries one event or ten, so flushing each event alone is what makes a backlog grow
(each event waiting for the flushes of all the ones before it, the gateway stream read
only between them); waiting lets the events that arrive meanwhile go out together.
Below that share nothing waits longer than ``COALESCE_SECONDS``.

Before any subscriber joins or leaves the live set, what is pending for the room is
written first, so frames reach exactly the subscribers that were live when the room
released them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from typing import Final

from keel.channels.v1 import channels_pb2
from opentelemetry.trace import Span
from prometheus_client import Histogram

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.connection import DELIVERIES, Conn, Connections
from gateway_bridge.bridge.link import GatewayLink, subscribe_request
from gateway_bridge.bridge.presence import Presence3
from gateway_bridge.bridge.room import Deliver, Effect, End, Fill, Ready, Room
from gateway_bridge.bridge.rpc_errors import error_code
from service_kit import tracing

#: Events arriving this close together are written to each subscriber in one write.
COALESCE_SECONDS: Final = 0.001
#: The share of the time spent flushing above which flushes wait (see the module docstring).
BUSY_SHARE: Final = 0.8
#: The longest a flush waits for the previous one's cost.
MAX_COALESCE_SECONDS: Final = 0.1
#: The weight of the last flush in the average share of time spent flushing.
_BUSY_WEIGHT: Final = 0.2

FLUSH_SECONDS = Histogram(
    "keel_bridge_flush_seconds",
    "How long one fan-out flush took to write its frames to every live subscriber of its"
    " rooms: a broadcast's spread from its first subscriber to its last.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

Event = channels_pb2.ChannelEvent


def event_bytes(event: Event) -> bytes:
    """The WebSocket frame of an ``event`` frame for ``event``."""
    return p.encode_text_frame(
        p.event_frame(
            event.event, event.channel_id, event.seq, event.data_json or "{}", event.event_id
        ).encode()
    )


class LocalRoom(Room[Conn, Event]):
    """A room core plus what writing needs: frames not yet written, and its watchers."""

    __slots__ = ("dirty", "pending", "spans", "watchers")

    def __init__(self, tenant_id: str, channel_id: str) -> None:
        super().__init__(tenant_id, channel_id)
        self.pending: list[bytes] = []  # frames not yet written to the live subscribers
        #: The delivery spans of pending frames (tracing on, traced events only): each ends
        #: once its frame was written.
        self.spans: list[Span] = []
        self.dirty = False
        #: The live connections whose tenant may read presence (fixed per connection), so a
        #: presence event costs nothing in a room where nobody may see it.
        self.watchers: set[Conn] = set()


def _delivery_span(tracer: tracing.Tracer, room: LocalRoom, event: Event) -> Span:
    """The ``keel.bridge.deliver`` span of a live event, a child of the span that published
    it (its ``traceparent``), from its arrival until its frame is written to the sockets."""
    return tracer.start_span(
        "keel.bridge.deliver",
        context=tracing.context_from(event.traceparent),
        kind=tracing.SpanKind.CONSUMER,
        attributes={
            "keel.tenant_id": room.tenant_id,
            "keel.channel_id": room.channel_id,
            "keel.event": event.event,
            "keel.seq": event.seq,
        },
    )


class Fanout:
    """The rooms of one bridge process (see the module docstring)."""

    def __init__(
        self,
        *,
        connections: Connections,
        link: GatewayLink,
        send_buffer_bytes: int,
        on_slow: Callable[[Conn], None],
        on_presence: Callable[[Presence3, int], None],
    ) -> None:
        self._connections = connections
        self._link = link
        self._limit = send_buffer_bytes
        self._on_slow = on_slow
        self._on_presence = on_presence
        self._rooms: dict[tuple[str, str], LocalRoom] = {}
        self._dirty: list[LocalRoom] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        #: When the last flush ended and how long it took (the event loop's clock), and
        #: the share of the time spent flushing, averaged over the last flushes.
        self._flushed_at = 0.0
        self._flush_cost = 0.0
        self._busy = 0.0

    def room(self, tenant_id: str, channel_id: str) -> LocalRoom | None:
        return self._rooms.get((tenant_id, channel_id))

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()

    # -- a connection's subscriptions ----------------------------------------------------

    def subscribe(self, conn: Conn, command: p.Command) -> str | None:
        """Follow ``command.channel_id``: the replay and the ack follow from the gateway.
        Already followed and acknowledged: the ack to send now (nothing is replayed)."""
        sub = conn.session.start(command)
        key = (conn.tenant_id, command.channel_id)
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = LocalRoom(*key)
        if sub.live:
            seq = room.seq_of(conn)
            result = {"channel_id": command.channel_id, "last_seq": seq or 0}
            return p.ack_frame(command.id, result)
        if not room.is_joining(conn):  # else its replay runs: the ack will take this id
            since = command.fields.get("since_seq")
            room.join(conn, conn.user_id, since)
            self._link.subscribe(
                conn.key, conn.tenant_id, command.channel_id, user_id=conn.user_id, since=since
            )
        return None

    def unsubscribe(self, conn: Conn, channel_id: str) -> bool:
        """Stop following ``channel_id``; False when it was not followed."""
        self._leave(conn, channel_id)
        if not conn.session.stop(channel_id):
            return False
        self._link.unsubscribe(conn.key, [channel_id])
        return True

    def leave_all(self, conn: Conn) -> None:
        """The connection is closing: it leaves every room it is in."""
        for channel_id in list(conn.session.subscriptions):
            self._leave(conn, channel_id)
            conn.session.stop(channel_id)

    def rescope(self, conn: Conn) -> None:
        """The connection's tenant changed (``conn.tenant`` is new): without ``chat:read``
        its subscriptions end, each told with an ``error`` frame naming the channel; with
        or without ``presence:read`` it gets presence events or stops getting them."""
        reads = conn.tenant.allows("chat:read")
        watches = conn.tenant.allows("presence:read")
        for channel_id in list(conn.session.subscriptions):
            if not reads:
                self._leave(conn, channel_id)
                conn.session.stop(channel_id)
                self._link.unsubscribe(conn.key, [channel_id])
                message = "the tenant lost chat:read; the subscription ended"
                error = p.error_frame(p.ErrorCode.PERMISSION_DENIED, message, channel_id=channel_id)
                self.write(conn, p.encode_text_frame(error.encode()))
                continue
            room = self._rooms.get((conn.tenant_id, channel_id))
            if room is not None and conn in room.live:
                if watches:
                    room.watchers.add(conn)
                else:
                    room.watchers.discard(conn)

    def _leave(self, conn: Conn, channel_id: str) -> None:
        room = self._rooms.get((conn.tenant_id, channel_id))
        if room is None:
            return
        room.leave(conn)
        room.watchers.discard(conn)
        sub = conn.session.subscriptions.get(channel_id)
        if sub is not None and sub.live:
            self._on_presence((conn.tenant_id, channel_id, conn.user_id), -1)
        if room.empty:
            del self._rooms[(room.tenant_id, room.channel_id)]
            if room.last_seq is not None:  # its own key may follow the channel
                self._link.unsubscribe(room.key)

    # -- from the gateway ----------------------------------------------------------------

    def on_gateway(self, response: channels_pb2.ConnectResponse) -> None:
        """One message of the gateway's ``Connect`` stream."""
        payload = response.WhichOneof("payload")
        if payload == "subscribe_result":
            self._on_result(response.subscribe_result)
            return
        if payload == "event_batch":
            self._on_batch(response.event_batch.events, response.subscription_keys)
            return
        event = response.event
        if not response.subscription_keys:
            self._on_live(event)
            return
        frame = b""
        for key in response.subscription_keys:
            if key.startswith("ch:"):
                self._on_live(event)  # a gap being filled: for the whole room
                continue
            conn = self._connections.get(key)
            room = self._rooms.get((event.tenant_id, event.channel_id))
            if conn is not None and room is not None and room.replayed(conn, event.seq):
                frame = frame or event_bytes(event)  # encoded once for all its keys
                self.write(conn, frame)

    def _on_batch(self, events: Sequence[Event], keys: Sequence[str]) -> None:
        """Replayed messages of one channel, in seq order, for the replays of ``keys``.

        Their frames are encoded once and joined; each subscriber gets, in one write, the
        part from the first message it does not have yet."""
        if not events:
            return
        first = events[0]
        room = self._rooms.get((first.tenant_id, first.channel_id))
        if room is None:
            return
        seqs = [event.seq for event in events]
        data = b""
        offsets: list[int] = []
        for key in keys:
            if key.startswith("ch:"):
                for event in events:  # a gap being filled: for the whole room
                    self._on_live(event)
                continue
            conn = self._connections.get(key)
            if conn is None or (start := room.replayed_run(conn, seqs)) is None:
                continue
            if not data:
                frames = [event_bytes(event) for event in events]
                offsets = list(accumulate((len(frame) for frame in frames), initial=0))
                data = b"".join(frames)
            self.write(conn, data[offsets[start] :] if start else data, len(events) - start)

    def _on_live(self, event: Event) -> None:
        room = self._rooms.get((event.tenant_id, event.channel_id))
        if room is not None:
            self._apply(room, room.live_event(event))

    def _on_result(self, result: channels_pb2.SubscribeResult) -> None:
        key = result.subscription_key
        if key.startswith("ch:"):
            _, tenant_id, channel_id = key.split(":", 2)
            room = self._rooms.get((tenant_id, channel_id))
            if room is not None:
                self._apply(room, room.fill_done(result.code == 0, result.last_seq))
            return
        conn = self._connections.get(key)
        if conn is None or conn.closed:
            return
        sub = conn.session.subscriptions.get(result.channel_id)
        room = self._rooms.get((conn.tenant_id, result.channel_id))
        if sub is None or sub.live or room is None or not room.is_joining(conn):
            return
        if result.code != 0:
            self._leave(conn, result.channel_id)
            conn.session.stop(result.channel_id)
            frame = p.error_frame(error_code(result.code), result.message, sub.frame_id)
            self.write(conn, p.encode_text_frame(frame.encode()))
            return
        sub.live = True
        ack = {"channel_id": result.channel_id, "last_seq": result.last_seq}
        self.write(conn, p.encode_text_frame(p.ack_frame(sub.frame_id, ack).encode()))
        self._on_presence((conn.tenant_id, result.channel_id, conn.user_id), +1)
        self._apply(room, room.replay_done(conn, result.last_seq))

    def _apply(self, room: LocalRoom, effects: list[Effect[Event, Conn]]) -> None:
        """Carry out what the room decided, in order."""
        for effect in effects:
            if isinstance(effect, Deliver):
                room.pending.append(event_bytes(effect.event))
                if (tracer := tracing.tracer()) is not None and effect.event.traceparent:
                    room.spans.append(_delivery_span(tracer, room, effect.event))
                if not room.dirty:
                    room.dirty = True
                    self._dirty.append(room)
                    self._flush_soon()
            elif isinstance(effect, Ready):
                self._flush_room(room)  # what the others were due, before it joins them
                conn = effect.subscriber
                held = room.go_live(conn)
                if held is None:
                    continue
                if conn.tenant.allows("presence:read"):
                    room.watchers.add(conn)
                for event in held:
                    self.write(conn, event_bytes(event))
            elif isinstance(effect, End):
                self._flush_room(room)  # the leaving subscribers get the ending event too
                for conn in effect.subscribers:
                    self._leave(conn, room.channel_id)
                    conn.session.stop(room.channel_id)
                    self._link.unsubscribe(conn.key, [room.channel_id])
            elif isinstance(effect, Fill):
                self._link.subscribe(
                    room.key, room.tenant_id, room.channel_id, since=effect.since_seq
                )

    def resubscriptions(self) -> list[channels_pb2.ConnectRequest]:
        """After the link (re)opens: every room from where it got, every pending subscribe.

        Built at once (the link writes them one by one while rooms keep changing)."""
        requests = []
        for room in list(self._rooms.values()):
            room_since, replaying = room.resubscriptions()
            if room_since is not None:
                requests.append(
                    subscribe_request(room.key, room.tenant_id, room.channel_id, since=room_since)
                )
            for conn, user_id, since in replaying:
                requests.append(
                    subscribe_request(
                        conn.key, room.tenant_id, room.channel_id, user_id=user_id, since=since
                    )
                )
        return requests

    # -- writing -------------------------------------------------------------------------

    def write(self, conn: Conn, data: bytes, frames: int = 1) -> None:
        """Write ``data`` (``frames`` frames) to one connection (cut as a slow consumer if it
        is behind)."""
        written = conn.write(data, self._limit)
        if written:
            DELIVERIES.inc(frames)
        elif written is False:
            self._on_slow(conn)

    def _flush_soon(self) -> None:
        """Flush the dirty rooms ``COALESCE_SECONDS`` from now, or later while flushing
        takes most of the time (see the module docstring)."""
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            now = loop.time()
            due = now + COALESCE_SECONDS
            if self._busy > BUSY_SHARE:
                later = min(self._flushed_at + self._flush_cost, now + MAX_COALESCE_SECONDS)
                due = max(due, later)
            self._flush_handle = loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        loop = asyncio.get_running_loop()
        started = loop.time()
        rooms, self._dirty = self._dirty, []
        for room in rooms:
            self._flush_room(room)
        ended = loop.time()
        cost = ended - started
        FLUSH_SECONDS.observe(cost)
        # This flush's share of the time since the previous one ended.
        share = cost / (ended - self._flushed_at) if ended > self._flushed_at else 1.0
        self._busy += _BUSY_WEIGHT * (share - self._busy)
        self._flushed_at, self._flush_cost = ended, cost

    def _flush_room(self, room: LocalRoom) -> None:
        """Write the room's pending frames to every live subscriber, as one write each.

        Events that arrive within ``COALESCE_SECONDS`` of each other go out together:
        one system call per subscriber for the lot, instead of one per event, which is
        what limits fan-out when traffic is dense (at the cost of at most that delay).
        """
        room.dirty = False
        frames, room.pending = room.pending, []
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        limit = self._limit
        delivered = 0
        for conn in room.live:
            written = conn.write(data, limit)
            if written:
                delivered += 1
            elif written is False:
                self._on_slow(conn)
        DELIVERIES.inc(delivered * len(frames))
        if room.spans:
            spans, room.spans = room.spans, []
            for span in spans:
                span.set_attribute("keel.deliveries", delivered)
                span.end()

    # -- for tests and tools -------------------------------------------------------------

    def live_connections(self, tenant_id: str, channel_id: str) -> Iterator[Conn]:
        """The connections live in a channel on this bridge."""
        room = self._rooms.get((tenant_id, channel_id))
        yield from room.live if room is not None else ()
