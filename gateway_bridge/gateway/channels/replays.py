"""Replays on the Connect streams, shared: one read of a channel for every key of a stream
that resumes it at the same time.

When a bridge's clients reconnect at once (a bridge restart, a network blip), each asks
for the messages of its channels after the seq it had; in a busy channel those are
mostly the same messages. So a replay runs as a *round* that keys can join: it reads the
channel page by page, turns each message into its ``ChannelEvent`` once, and sends each
page to the keys still missing part of it — as one ``ConnectResponse`` with many events
(``event_batch``, at most ``BATCH_BYTES`` of events each) to keys that asked for batches,
and one response per message naming the keys to those that did not. A key joins a
running round of its channel on its stream when its ``since_seq`` falls in the round's
next page (at or past what the round sent, by less than a page); otherwise it starts a
round of its own, which the keys after it can join. So a storm of keys resuming from
about the same seq is served by a few reads, and a key never waits for a round to read
pages it does not need. The bridge drops, per key, what the key already has.

Every key of a round gets the same answer, where the round ended: the seq of the last
message it read, or the channel's last seq when the round began if that is further (a
``since_seq`` past the channel's end replays nothing and is answered with the channel's
end). Everything up to there was sent to the key (or it had it); what is stored later
comes live, as the stream followed the channel before the round began (or before the key
joined). Rounds are per stream, so one slow bridge never holds up another's replays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from keel.channels.v1 import channels_pb2

from gateway_bridge.gateway.channels.attachment_links import AttachmentLinks
from gateway_bridge.gateway.channels.models import ChannelId, MessageQuery
from gateway_bridge.gateway.channels.routes import REPLAY_PAGE, event_proto, replayed_event
from gateway_bridge.gateway.channels.store import ChatStore
from gateway_bridge.gateway.channels.streams import BridgeStream, ChannelKey

#: The most event bytes one ``event_batch`` response carries (one larger message goes
#: alone); well under gRPC's default 4 MiB limit on a message a client receives.
BATCH_BYTES: Final = 1 << 20


@dataclass(eq=False, slots=True)
class _Wait:
    """A key waiting for its replay: from where, how it takes it, and its answer."""

    since: int
    batches: bool
    answer: asyncio.Future[int]


@dataclass(eq=False, slots=True)
class _Round:
    """One read of a channel for the keys in ``keys``; ``reached``: the last seq sent;
    ``single``: how many of the keys take one message per response (no batches)."""

    reached: int
    keys: dict[str, _Wait]
    single: int = 0

    def add(self, sub_key: str, wait: _Wait) -> None:
        self.keys[sub_key] = wait
        self.single += not wait.batches


class SharedReplays:
    """The replay rounds of a hub's streams (see the module docstring)."""

    def __init__(
        self, store: ChatStore, reads: asyncio.Semaphore, links: AttachmentLinks | None
    ) -> None:
        """``reads`` bounds the database reads the hub makes at once; ``links`` signs
        the attachments' URLs."""
        self._store = store
        self._reads = reads
        self._links = links
        self._rounds: dict[tuple[BridgeStream, ChannelKey], dict[_Round, asyncio.Task[None]]] = {}

    async def replay(
        self, stream: BridgeStream, key: ChannelKey, sub_key: str, since: int, *, batches: bool
    ) -> int:
        """Send ``sub_key`` the channel's messages after ``since``; return the seq its
        replay reached (see the module docstring). Raises what reading the channel raised."""
        wait = _Wait(max(since, 0), batches, asyncio.get_running_loop().create_future())
        rounds = self._rounds.setdefault((stream, key), {})
        for round_ in rounds:
            if round_.reached <= wait.since < round_.reached + REPLAY_PAGE:
                round_.add(sub_key, wait)  # what it misses is all still to come
                break
        else:
            round_ = _Round(wait.since, {})
            round_.add(sub_key, wait)
            rounds[round_] = asyncio.create_task(
                self._run(stream, key, round_), name="connect-replay"
            )
        return await wait.answer

    def close(self, stream: BridgeStream) -> None:
        """The stream ended: stop its rounds (their keys' commands are cancelled too)."""
        for owner, key in [k for k in self._rounds if k[0] is stream]:
            for task in self._rounds.pop((owner, key)).values():
                task.cancel()

    async def _run(self, stream: BridgeStream, key: ChannelKey, round_: _Round) -> None:
        """Run ``round_``; answer its keys, or fail them as it failed."""
        try:
            last_seq = await self._read(stream, key, round_)
        except BaseException as exc:
            for wait in round_.keys.values():
                if wait.answer.done():
                    continue
                if isinstance(exc, Exception):
                    wait.answer.set_exception(exc)
                else:
                    wait.answer.cancel()
            if not isinstance(exc, Exception):
                raise
        else:
            for wait in round_.keys.values():
                if not wait.answer.done():
                    wait.answer.set_result(last_seq)
        finally:
            rounds = self._rounds.get((stream, key))
            if rounds is not None:
                rounds.pop(round_, None)
                if not rounds:
                    del self._rounds[(stream, key)]

    async def _read(self, stream: BridgeStream, key: ChannelKey, round_: _Round) -> int:
        """Read the channel after ``round_.reached`` and send it, page by page, to the
        round's keys; return where the round ended."""
        tenant_id, channel_id = key
        async with self._reads:
            _, last_seq, _ = await self._store.read_access(tenant_id, channel_id, "")
        if round_.reached >= last_seq:
            return last_seq  # nothing to replay (a since_seq past the end included)
        while True:
            query = MessageQuery(
                ChannelId(channel_id),
                limit=REPLAY_PAGE,
                newest_first=False,
                after_seq=round_.reached,
            )
            async with self._reads:
                page = await self._store.list_messages(tenant_id, query)
            events = [event_proto(replayed_event(tenant_id, m), self._links) for m in page]
            await self._send(stream, round_, events)
            if len(page) < REPLAY_PAGE:
                return max(round_.reached, last_seq)

    async def _send(
        self, stream: BridgeStream, round_: _Round, events: list[channels_pb2.ChannelEvent]
    ) -> None:
        """Send ``events`` (in seq order) to the round's keys that miss some of them.

        ``round_.reached`` moves past a chunk as soon as its batch went out (before its
        events go out one by one to keys that take no batches): a key that joins from
        then on needs nothing of it. Keys are chosen after each wait, so one that joined
        during it is served."""
        for chunk in _chunks(events):
            await stream.room_to_replay()
            if keys := _missing(round_, chunk[-1].seq, batches=True):
                stream.send(
                    channels_pb2.ConnectResponse(
                        event_batch=channels_pb2.ChannelEventBatch(events=chunk),
                        subscription_keys=keys,
                    ),
                    weight=len(chunk),
                )
            round_.reached = chunk[-1].seq
            for event in chunk if round_.single else ():
                if _missing(round_, event.seq, batches=False):
                    await stream.room_to_replay()
                    keys = _missing(round_, event.seq, batches=False)
                    stream.send(channels_pb2.ConnectResponse(event=event, subscription_keys=keys))


def _missing(round_: _Round, seq: int, *, batches: bool) -> list[str]:
    """The round's keys (taking batches or not) that do not have ``seq`` yet."""
    return [k for k, w in round_.keys.items() if w.batches is batches and w.since < seq]


def _chunks(events: list[channels_pb2.ChannelEvent]) -> Iterator[list[channels_pb2.ChannelEvent]]:
    """``events`` in runs of at most ``BATCH_BYTES`` (a larger event alone)."""
    chunk: list[channels_pb2.ChannelEvent] = []
    size = 0
    for event in events:
        n = event.ByteSize()
        if chunk and size + n > BATCH_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(event)
        size += n
    if chunk:
        yield chunk
