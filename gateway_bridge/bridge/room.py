"""A bridge room without I/O: one channel's local subscribers, across the replay/live seam.

Each channel with subscribers on a bridge is a :class:`Room`. Live events reach it
from the gateway once per bridge; the room puts them in seq order and drops repeats
(:class:`~gateway_bridge.seq_order.SeqOrder`), asks the gateway to replay a gap it
sees (:class:`Fill`), and says which events go to its live subscribers
(:class:`Deliver`). This module decides; :mod:`gateway_bridge.bridge.fanout` writes.

A new subscriber *joins*: the gateway replays the messages after its ``since_seq`` to
it alone, then answers with the seq the replay reached. Meanwhile the room's live
events are held for it. Once the replay is over *and* the room has delivered at least
that far, it goes live: of what was held, it gets what it has not seen. Waiting for the
room matters when the replay read messages whose live events were still on their way:
had the subscriber gone live at once, those events would reach it a second time.

Nothing here touches a socket or a clock; every input is a method call and every
output a return value, so the seam is tested by feeding inputs in every order
(``tests/gateway_bridge/bridge/test_room.py``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from gateway_bridge.seq_order import SeqOrder
from gateway_bridge.vocabulary import MESSAGE_CREATED, subscriptions_ended_by


class RoomEvent(Protocol):
    """What the room reads of an event (``keel.channels.v1.ChannelEvent`` has it)."""

    @property
    def event(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def data_json(self) -> str: ...


S = TypeVar("S", bound=Hashable)
E = TypeVar("E", bound=RoomEvent)


@dataclass(frozen=True, slots=True)
class Deliver(Generic[E]):
    """Write ``event`` to every live subscriber of the room."""

    event: E


@dataclass(frozen=True, slots=True)
class Ready(Generic[S]):
    """``subscriber`` may go live: write what is pending to the others, then call
    :meth:`Room.go_live` for it (which returns what it still has to be sent)."""

    subscriber: S


@dataclass(frozen=True, slots=True)
class End(Generic[S]):
    """The event delivered before this ended these subscriptions (``user:left`` of their
    user, ``channel:deleted``): write what is pending, then make them leave."""

    subscribers: tuple[S, ...]


@dataclass(frozen=True, slots=True)
class Fill:
    """Ask the gateway to replay the room's messages after ``since_seq`` to the room."""

    since_seq: int


Effect = Deliver[E] | Ready[S] | End[S] | Fill


@dataclass(slots=True)
class _Joiner(Generic[E]):
    """A subscriber whose replay runs (or that waits for the room to catch up)."""

    user_id: str
    last_seq: int  # the highest message seq it was sent
    wants_replay: bool  # it gave a since_seq (else it starts at the channel's end)
    replaying: bool = True
    held: list[E] = field(default_factory=list)


class Room(Generic[S, E]):
    """One channel's subscribers on this bridge (see the module docstring)."""

    __slots__ = ("_joining", "_order", "channel_id", "filling", "live", "tenant_id")

    def __init__(self, tenant_id: str, channel_id: str) -> None:
        self.tenant_id = tenant_id
        self.channel_id = channel_id
        #: Live subscribers and their users.
        self.live: dict[S, str] = {}
        self._joining: dict[S, _Joiner[E]] = {}
        self._order: SeqOrder[E] = SeqOrder()
        #: Whether a replay of a gap (for the whole room) is on its way.
        self.filling = False

    @property
    def key(self) -> str:
        """The subscription key the room's own replays (gap fills) travel under."""
        return f"ch:{self.tenant_id}:{self.channel_id}"

    @property
    def last_seq(self) -> int | None:
        """The last message seq delivered to the live subscribers; None until known."""
        return self._order.last_seq

    @property
    def empty(self) -> bool:
        return not self.live and not self._joining

    def subscribers(self) -> Iterator[S]:
        """Every subscriber, live or joining."""
        yield from self.live
        yield from self._joining

    def is_joining(self, subscriber: S) -> bool:
        return subscriber in self._joining

    def seq_of(self, subscriber: S) -> int | None:
        """The last message seq ``subscriber`` was sent (None: not in the room)."""
        joiner = self._joining.get(subscriber)
        if joiner is not None:
            return joiner.last_seq
        return self.last_seq if subscriber in self.live else None

    # -- subscribers --------------------------------------------------------------------

    def join(self, subscriber: S, user_id: str, since_seq: int | None) -> None:
        """``subscriber`` starts following the channel after ``since_seq`` (None: from the
        channel's end); the gateway's replay to it runs until :meth:`replay_done`."""
        if subscriber not in self._joining and subscriber not in self.live:
            wants_replay = since_seq is not None
            self._joining[subscriber] = _Joiner(user_id, since_seq or 0, wants_replay)

    def replayed(self, subscriber: S, seq: int) -> bool:
        """Whether the replayed message ``seq`` is new to ``subscriber`` (then it is
        written to it, and noted)."""
        joiner = self._joining.get(subscriber)
        if joiner is None or not joiner.replaying or seq <= joiner.last_seq:
            return False
        joiner.last_seq = seq
        return True

    def replayed_run(self, subscriber: S, seqs: Sequence[int]) -> int | None:
        """Of a run of replayed messages with these ``seqs`` (ascending), the index of the
        first that is new to ``subscriber`` (that one and those after it are written to
        it, and noted); None when none is."""
        joiner = self._joining.get(subscriber)
        if joiner is None or not joiner.replaying or not seqs:
            return None
        start = bisect_right(seqs, joiner.last_seq)
        if start == len(seqs):
            return None
        joiner.last_seq = seqs[-1]
        return start

    def replay_done(self, subscriber: S, last_seq: int) -> list[Effect[E, S]]:
        """The replay is over and reached ``last_seq`` (the last message replayed, or the
        channel's last seq when none was). ``[Ready]`` when the subscriber may go live
        now; nothing while the room has yet to deliver that far."""
        joiner = self._joining.get(subscriber)
        if joiner is None:
            return []
        joiner.replaying = False
        # Never back: a since_seq past the channel's end stays where the client said.
        joiner.last_seq = max(joiner.last_seq, last_seq)
        self._order.start_at(last_seq)
        return self._released([])

    def go_live(self, subscriber: S) -> list[E] | None:
        """Make a :class:`Ready` subscriber live; the held events it has yet to be sent
        (None when it is no longer joining: it left meanwhile)."""
        joiner = self._joining.pop(subscriber, None)
        if joiner is None:
            return None
        self.live[subscriber] = joiner.user_id
        release = []
        seen = joiner.last_seq
        for event in joiner.held:
            if event.event == MESSAGE_CREATED:
                if event.seq <= seen:
                    continue
                seen = event.seq
            release.append(event)
        return release

    def leave(self, subscriber: S) -> bool:
        """``subscriber`` stops following; True when it was live."""
        self._joining.pop(subscriber, None)
        return self.live.pop(subscriber, None) is not None

    # -- events -------------------------------------------------------------------------

    def live_event(self, event: E) -> list[Effect[E, S]]:
        """An event from the channel's live stream (or from a replay of a gap)."""
        seq = event.seq if event.event == MESSAGE_CREATED else None
        return self._fill_gap(self._released(self._order.offer(event, seq)))

    def fill_done(self, ok: bool, last_seq: int) -> list[Effect[E, S]]:
        """The room's replay is over (``ok``: it read the channel through ``last_seq``).

        A gap up to ``last_seq`` that the replay did not fill has no messages to be had
        and is given up; a gap past it (messages stored after the replay read) or one
        left by a failed replay is asked for again."""
        self.filling = False
        effects: list[Effect[E, S]] = []
        if ok:
            self._order.start_at(last_seq)
            while (gap := self._order.gap()) is not None and gap[1] <= last_seq:
                effects += self._released(self._order.skip_gap())
        return self._fill_gap(effects)

    def _fill_gap(self, effects: list[Effect[E, S]]) -> list[Effect[E, S]]:
        """``effects``, and a :class:`Fill` when events wait behind a gap none is filling."""
        if not self.filling and self._order.gap() is not None:
            self.filling = True
            assert self.last_seq is not None
            effects.append(Fill(self.last_seq))
        return effects

    def _released(self, events: list[E]) -> list[Effect[E, S]]:
        effects: list[Effect[E, S]] = []
        for event in events:
            effects.append(Deliver(event))
            for joiner in self._joining.values():
                joiner.held.append(event)
            ended = subscriptions_ended_by(event.event, event.data_json)
            if ended is not None:
                leaving = tuple(s for s, user in self._users() if ended.includes(user))
                if leaving:
                    effects.append(End(leaving))
        effects += [Ready(s) for s, j in self._joining.items() if self._caught_up(j)]
        return effects

    def _users(self) -> Iterator[tuple[S, str]]:
        yield from self.live.items()
        for subscriber, joiner in self._joining.items():
            yield subscriber, joiner.user_id

    def _caught_up(self, joiner: _Joiner[E]) -> bool:
        last = self.last_seq
        return not joiner.replaying and last is not None and last >= joiner.last_seq

    # -- after the gateway link reopens ---------------------------------------------------

    def resubscriptions(self) -> tuple[int | None, list[tuple[S, str, int | None]]]:
        """What to ask a new gateway stream for: the room's own replay from its last seq
        (None when the room is not known yet), and each replaying subscriber's, as
        ``(subscriber, user id, since_seq)`` — from the seq its replay reached, or (None)
        from the channel's end when it asked for no replay."""
        room_since = self.last_seq if not self.empty else None
        replaying = [
            (s, j.user_id, j.last_seq if j.wants_replay else None)
            for s, j in self._joining.items()
            if j.replaying
        ]
        return room_since, replaying
