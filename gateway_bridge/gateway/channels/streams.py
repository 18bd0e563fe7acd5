"""The gateway's Connect hub's state: one :class:`BridgeStream` per bridge process, one
:class:`LiveChannel` per channel some stream follows (see :mod:`.hub`)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Final

from keel.channels.v1 import channels_pb2

from gateway_bridge.gateway.outbox import ChatEvent
from gateway_bridge.seq_order import SeqOrder
from gateway_bridge.vocabulary import batch_length

ChannelKey = tuple[str, str]  # (tenant id, channel id)

#: Put in a stream's outbox: the stream ends (why: ``overflowed``, ``restarting``).
END: Final = object()
#: Put in a stream's outbox when send results wait (:meth:`BridgeStream.answer`).
RESULTS: Final = object()
#: At most this many bytes of send results go in one response (the bridge's gRPC channel
#: takes messages up to 4 MiB).
RESULTS_BYTES: Final = 1 << 20
#: At most this many subscribe results go in one response (about 100 bytes each).
SUBSCRIBE_RESULTS_PER_RESPONSE: Final = 1000


class _SubscribeResults:
    """Subscribe results that came due one after another: one response once taken."""

    __slots__ = ("results",)

    def __init__(self, first: channels_pb2.SubscribeResult) -> None:
        self.results = [first]


@dataclass(frozen=True, slots=True)
class Weighted:
    """A response in a stream's outbox that counts as ``weight`` events (a batch)."""

    response: object
    weight: int


class BridgeStream:
    """One bridge's Connect stream: its keys, its channels and its outgoing backlog.

    The backlog is counted in responses (a stream more than ``max_backlog`` behind is
    ended) and, for pacing replays, in events: a batch of replayed events counts as
    that many."""

    def __init__(self, max_backlog: int) -> None:
        self.outbox: asyncio.Queue[object] = asyncio.Queue()
        self.max_backlog = max_backlog
        # Replays pause at a quarter of the backlog and go on below an eighth.
        self.replay_pause, self.replay_resume = max(1, max_backlog // 4), max(1, max_backlog // 8)
        #: The events in the outbox beyond one per response (the batches' extra events).
        self.batched = 0
        self.keys: dict[str, set[ChannelKey]] = defaultdict(set)
        self.users: dict[str, str] = {}  # subscription key -> the user it reads for
        self.readers: Counter[ChannelKey] = Counter()  # how many keys read each channel
        self.commands: dict[str, asyncio.Task[None]] = {}  # the last command of each key
        self.sends: set[asyncio.Task[None]] = set()  # the sends being handled
        self.results: list[channels_pb2.SendResult] = []  # answered, not yet in a response
        self.has_room = asyncio.Event()  # set while the backlog is low enough to replay into
        self.has_room.set()
        self.overflowed = False
        self.restarting = False
        #: Whether its bridge takes subscribe results together (it sent ConnectSubscribes).
        self.batches_subscribe_results = False
        #: The subscribe results last put in the outbox, while nothing was put after them.
        self._open_results: _SubscribeResults | None = None

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

    def send(self, item: object, weight: int = 1) -> None:
        """Queue ``item`` (a response, or ``END``), counting as ``weight`` events."""
        if self.overflowed:
            return
        if self.outbox.qsize() >= self.max_backlog:
            self.overflowed = True
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.batched = 0
            self._open_results = None
            self.outbox.put_nowait(END)
            return
        if weight != 1:
            self.batched += weight - 1
            item = Weighted(item, weight)
        self._open_results = None  # results due after this item go after it
        self.outbox.put_nowait(item)

    def subscribed(self, result: channels_pb2.SubscribeResult) -> None:
        """Queue a subscribe result. For a bridge that takes them together, results that
        come due one after another, with nothing queued between them, go in one response
        (so each still comes after every item queued before it)."""
        if not self.batches_subscribe_results:
            self.send(
                channels_pb2.ConnectResponse(
                    subscribe_result=result, subscription_keys=[result.subscription_key]
                )
            )
            return
        open_results = self._open_results
        if open_results is not None and len(open_results.results) < SUBSCRIBE_RESULTS_PER_RESPONSE:
            open_results.results.append(result)
            return
        batch = _SubscribeResults(result)
        self.send(batch)
        if not self.overflowed:
            self._open_results = batch

    def answer(self, result: channels_pb2.SendResult) -> None:
        """Queue a send's answer. The answers that wait together go in one response
        (:meth:`take_results`): one marker in the outbox stands for all of them."""
        self.results.append(result)
        if len(self.results) == 1:
            self.send(RESULTS)

    def take_results(self) -> channels_pb2.ConnectResponse:
        """The response for the waiting answers (up to :data:`RESULTS_BYTES`; the marker
        goes back in the outbox for the rest)."""
        taken = batch_length(
            (result.ByteSize() for result in self.results), RESULTS_BYTES, len(self.results)
        )
        batch = self.results[:taken]
        del self.results[:taken]
        if self.results:
            self.send(RESULTS)
        return channels_pb2.ConnectResponse(send_results=channels_pb2.SendResults(results=batch))

    def _events(self) -> int:
        return self.outbox.qsize() + self.batched

    async def room_to_replay(self) -> None:
        """Before each replayed item: wait while the backlog is at a quarter of its limit
        (in events), so concurrent replays cannot fill the backlog that live events need."""
        while self._events() >= self.replay_pause:
            self.has_room.clear()
            await self.has_room.wait()

    def taken(self, item: object) -> object:
        """The stream took ``item`` from the outbox: what to send (``item`` unwrapped).
        Wakes the replays once the backlog is low again."""
        if type(item) is Weighted:
            self.batched -= item.weight - 1
            item = item.response
        elif type(item) is _SubscribeResults:
            if item is self._open_results:
                self._open_results = None
            item = channels_pb2.ConnectResponse(
                subscribe_results=channels_pb2.SubscribeResults(results=item.results)
            )
        if not self.has_room.is_set() and self._events() < self.replay_resume:
            self.has_room.set()
        return item

    def restart(self) -> None:
        self.restarting = True
        self._open_results = None
        self.outbox.put_nowait(END)


class LiveChannel:
    """One routed channel's live events, put back in seq order, and who waits for them.

    Gateways publish after commit, and two commits' publishes can cross (two
    coroutines, or two gateway processes), so events may arrive out of order. An
    early event waits (:class:`~gateway_bridge.seq_order.SeqOrder`) for the ones
    before it; if they do not arrive within ``gap_wait`` seconds they are read from
    the database instead. A subscribe result waits here too, until every live event
    up to its ``last_seq`` went out before it (see :meth:`ConnectHub._caught_up`).
    """

    __slots__ = ("filling", "order", "waiters", "wanted")

    def __init__(self, last_seq: int) -> None:
        self.order: SeqOrder[ChatEvent] = SeqOrder(last_seq)
        self.filling = False
        #: The highest seq known to be stored (a subscribe result waits until it is out).
        self.wanted = last_seq
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def last_seq(self) -> int:
        assert self.order.last_seq is not None
        return self.order.last_seq

    def missing_until(self) -> int | None:
        """The last seq of the first run of messages not out yet (None: nothing missing)."""
        gap = self.order.gap()
        if gap is not None:
            return gap[1]
        return self.wanted if self.wanted > self.last_seq else None

    def wake(self) -> None:
        """Resolve the waiters whose seq went out."""
        if self.waiters:
            still = []
            for seq, waiter in self.waiters:
                if seq <= self.last_seq:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    still.append((seq, waiter))
            self.waiters = still

    def release_waiters(self) -> None:
        """The channel is no longer followed: nobody waits for it any more."""
        for _, waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters = []
