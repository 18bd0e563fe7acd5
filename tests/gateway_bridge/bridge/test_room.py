"""The room core (``gateway_bridge.bridge.room``) without a socket: events in, decisions out.

The replay/live seam is checked in every interleaving hypothesis finds: a channel's
live events, the replays to new subscribers, the room's own gap fills and their
results arrive in any order one stream can carry them, and every subscriber must
see each message once, in order, without a gap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_bridge.bridge.room import Deliver, Effect, End, Fill, Ready, Room

CHANNEL = "7e0da902-0b9b-4627-ad4a-98ea7976a47b"


@dataclass(frozen=True)
class Ev:
    """A ChannelEvent as the room reads it."""

    event: str
    seq: int
    data_json: str = "{}"
    tag: str = ""


def created(seq: int) -> Ev:
    return Ev("message:created", seq, tag=f"created-{seq}")


def other(name: str, seq: int, tag: str) -> Ev:
    return Ev(name, seq, tag=tag)


Sub = str


def new_room() -> Room[Sub, Ev]:
    return Room("tenant", CHANNEL)


def seqs(effects: list[Effect[Ev, Sub]]) -> list[int]:
    return [e.event.seq for e in effects if isinstance(e, Deliver)]


def live_room(last_seq: int, *subscribers: Sub) -> Room[Sub, Ev]:
    """A room whose subscribers are live at ``last_seq``."""
    room = new_room()
    for sub in subscribers:
        room.join(sub, sub, None)
        assert room.replay_done(sub, last_seq) == [Ready(sub)]
        assert room.go_live(sub) == []
    return room


# -- what the seam keeps (once the per-connection Session's tests) ---------------------------


def test_replayed_notes_each_new_seq_once() -> None:
    room = new_room()
    room.join("a", "alice", 2)
    assert not room.replayed("a", 2)  # the client has it
    assert room.replayed("a", 3)
    assert not room.replayed("a", 3)
    assert room.replayed("a", 5)
    assert not room.replayed("a", 4)  # behind what was delivered
    assert not room.replayed("not-subscribed", 9)


def test_a_replayed_run_is_written_from_the_first_message_new_to_the_subscriber() -> None:
    """A batch shared with others may start before where a subscriber is: it gets the
    rest, and a batch it has all of gives it nothing."""
    room = new_room()
    room.join("a", "alice", 4)
    assert room.replayed_run("a", [2, 3, 4]) is None  # the client has them
    assert room.replayed_run("a", [3, 4, 5, 6, 7]) == 2  # from 5
    assert room.seq_of("a") == 7
    assert room.replayed_run("a", [5, 6, 7]) is None  # written already
    assert room.replayed_run("a", [8, 9]) == 0
    assert room.replayed_run("a", []) is None
    assert room.replayed_run("not-subscribed", [1, 2]) is None
    room.replay_done("a", 9)
    assert room.replayed_run("a", [10]) is None  # its replay is over


def test_go_live_releases_held_events_after_the_replay_in_order() -> None:
    room = new_room()
    room.join("a", "alice", 2)
    held = [
        created(3),  # the replay also sends 3 and 4
        other("message:updated", 2, "updated-2"),
        created(4),
        other("reaction:added", 4, "reaction-4"),
        created(5),
        Ev("message:created", 5, tag="created-5-again"),
        other("presence:online", 0, "online"),
        created(6),
    ]
    for event in held:
        room.live_event(event)
    assert room.replayed("a", 3) and room.replayed("a", 4)
    assert room.replay_done("a", 4) == [Ready("a")]
    released = room.go_live("a")
    assert released is not None
    assert [e.tag for e in released] == [
        "updated-2",
        "reaction-4",
        "created-5",
        "online",
        "created-6",
    ]
    assert room.seq_of("a") == 6 and not room.is_joining("a")
    assert room.live_event(created(7)) == [Deliver(created(7))]  # live: not held


def test_go_live_without_a_replay_starts_at_the_channels_last_seq() -> None:
    room = new_room()
    room.join("a", "alice", None)
    room.live_event(created(10))
    room.live_event(created(11))
    assert room.replay_done("a", 10) == [Ready("a")]
    released = room.go_live("a")
    assert released is not None and [e.seq for e in released] == [11]
    assert room.seq_of("a") == 11


def test_go_live_never_moves_back() -> None:
    room = new_room()
    room.join("a", "alice", 8)
    room.live_event(created(8))
    assert room.replay_done("a", 3) == [Ready("a")]
    assert room.go_live("a") == []
    assert room.seq_of("a") == 8


def test_a_since_seq_past_the_end_waits_for_the_room_to_get_there() -> None:
    room = live_room(3, "a")
    room.join("b", "bob", 8)
    assert room.replay_done("b", 3) == []  # at 8 by its own word
    assert room.seq_of("b") == 8
    for seq in range(4, 9):
        room.live_event(created(seq))
    assert room.live_event(created(9))[-1] == Ready("b")
    released = room.go_live("b")
    assert released is not None and [e.seq for e in released] == [9]


def test_hold_and_go_live_of_a_channel_not_followed() -> None:
    room = new_room()
    assert room.live_event(created(1)) == [Deliver(created(1))]  # nobody to hold it for
    assert room.go_live("a") is None
    room.join("a", "alice", None)
    room.live_event(created(2))
    room.leave("a")
    assert room.go_live("a") is None
    assert room.empty


# -- repeats and gaps, deterministically ---------------------------------------------------


def test_a_repeated_message_is_delivered_once() -> None:
    room = live_room(4, "a")
    assert seqs(room.live_event(created(5))) == [5]
    assert room.live_event(created(5)) == []
    assert room.live_event(created(3)) == []
    assert seqs(room.live_event(created(6))) == [6]


def test_a_jump_holds_what_follows_and_asks_for_the_gap_once() -> None:
    room = live_room(4, "a")
    assert room.live_event(created(7)) == [Fill(4)]
    assert room.filling
    reaction = other("reaction:added", 7, "reaction-7")
    assert room.live_event(reaction) == []  # behind 7, which waits
    assert room.live_event(created(8)) == []  # no second fill while one runs
    # The fill replays 5 and 6 (and 7, 8: repeats) to the room, then ends.
    assert seqs(room.live_event(created(5))) == [5]
    effects = room.live_event(created(6))
    assert [e.event.tag for e in effects if isinstance(e, Deliver)] == [
        "created-6",
        "created-7",
        "reaction-7",
        "created-8",
    ]
    assert room.live_event(created(7)) == [] and room.live_event(created(8)) == []
    assert room.fill_done(True, 8) == []
    assert not room.filling and room.last_seq == 8


def test_a_late_live_message_fills_the_gap_before_the_fill_does() -> None:
    room = live_room(1, "a")
    assert room.live_event(created(3)) == [Fill(1)]
    assert seqs(room.live_event(created(2))) == [2, 3]
    assert room.fill_done(True, 3) == []


def test_a_gap_the_fill_could_not_fill_is_given_up_and_a_failed_fill_is_asked_again() -> None:
    room = live_room(1, "a")
    assert room.live_event(created(4)) == [Fill(1)]
    assert room.fill_done(False, 0) == [Fill(1)]  # the gateway failed: ask again
    # It read the channel through 4 without finding 2 and 3: nothing to wait for.
    assert seqs(room.fill_done(True, 4)) == [4]
    assert not room.filling


def test_a_gap_past_what_the_fill_read_is_asked_for_again() -> None:
    room = live_room(1, "a")
    assert room.live_event(created(5)) == [Fill(1)]
    assert seqs(room.live_event(created(2))) == [2]
    assert room.fill_done(True, 2) == [Fill(2)]  # 3 and 4 were stored after it read


def test_user_left_ends_that_users_subscriptions_after_delivering_it() -> None:
    room = live_room(1, "a1", "a2", "b")
    room.live["a1"] = room.live["a2"] = "alice"
    room.live["b"] = "bob"
    room.join("a3", "alice", 0)
    left = Ev("user:left", 1, json.dumps({"channel_id": CHANNEL, "user_id": "alice"}))
    assert room.live_event(left) == [Deliver(left), End(("a1", "a2", "a3"))]
    deleted = Ev("channel:deleted", 1, json.dumps({"channel_id": CHANNEL}))
    assert room.live_event(deleted) == [Deliver(deleted), End(("a1", "a2", "b", "a3"))]


def test_resubscriptions_after_the_link_reopens() -> None:
    room = live_room(5, "a")
    room.join("b", "bob", 2)
    room.join("c", "carol", None)
    assert room.replayed("b", 3)
    room_since, replaying = room.resubscriptions()
    assert room_since == 5
    assert replaying == [("b", "bob", 3), ("c", "carol", None)]
    assert new_room().resubscriptions() == (None, [])


# -- the replay/live seam in a shared room, in every interleaving ----------------------------


@dataclass
class Source:
    """One ordered source of stream items (live events, a replay, a fill)."""

    items: list[tuple[str, object]] = field(default_factory=list)


SeamCase = tuple[int, int, list[int | None], int, list[bool]]


@st.composite
def seam_cases(draw: st.DrawFn) -> SeamCase:
    known = draw(st.integers(0, 3))  # seqs delivered to the live subscriber before the joins
    last = draw(st.integers(known + 1, known + 8))  # the channel's last seq in the end
    # Each joiner's since_seq: none, or any, past the end included.
    joiners = draw(st.lists(st.one_of(st.none(), st.integers(0, last + 1)), min_size=1, max_size=3))
    join_at = draw(st.integers(known, last))  # live events delivered before the joins
    # Live events lost on the way (the hub gave up on them, a stream broke), while the room
    # knows where the channel is; but the last (nothing would reveal its loss).
    dropped = draw(st.lists(st.booleans(), min_size=last, max_size=last))
    dropped[-1] = False
    if not known:  # a room not known yet has only replaying subscribers: see room.py
        dropped = [False] * last
    return known, last, joiners, join_at, dropped


@settings(max_examples=500, deadline=None)
@given(case=seam_cases(), data=st.data())
def test_no_gap_and_no_duplicate_at_the_seam_in_any_interleaving(
    case: SeamCase, data: st.DataObject
) -> None:
    """A live subscriber "a" (when the room is known) and joiners with their since_seq;
    live events (some given up on the way), replays (one message at a time, or in
    batches of a round that may start before the joiner's since_seq) and gap fills in
    any order one stream can carry them. Everyone gets exactly the messages after where
    they started.

    What the stream promises (the gateway's Connect hub, ``hub.py``): live events in
    seq order, each once, but for those it gave up; a replay's events in order; a
    subscribe result with ``last_seq`` R only after every live event up to R, and R at
    least where the channel's live events were when the subscribe came."""
    known, last, joiners, join_at, dropped = case
    room = new_room()
    received: dict[Sub, list[int]] = {}
    sources: list[Source] = []
    hub = known  # every live event up to here went out (or was given up)
    highest = known  # the highest seq that reached the bridge so far

    def apply(effects: list[Effect[Ev, Sub]]) -> None:
        for effect in effects:
            if isinstance(effect, Deliver):
                if effect.event.event == "message:created":
                    for sub in room.live:
                        received[sub].append(effect.event.seq)
            elif isinstance(effect, Ready):
                held = room.go_live(effect.subscriber)
                assert held is not None
                received[effect.subscriber] += [e.seq for e in held]
            elif isinstance(effect, Fill):
                # The gateway reads the channel later: at least what reached the bridge.
                upto = data.draw(st.integers(highest, last), label="the fill reads through")
                missing = range(effect.since_seq + 1, upto + 1)
                fill = Source([("event", created(s)) for s in missing])
                fill.items.append(("fill_done", upto))
                sources.append(fill)
            else:
                raise AssertionError(effect)

    def take(kind: str, value: object) -> None:
        nonlocal hub, highest
        if kind == "live":
            assert isinstance(value, int)
            hub = value
            if not dropped[value - 1]:
                highest = max(highest, value)
                apply(room.live_event(created(value)))
        elif kind == "event":
            assert isinstance(value, Ev)
            highest = max(highest, value.seq)
            apply(room.live_event(value))
        elif kind == "fill_done":
            assert isinstance(value, int)
            apply(room.fill_done(True, value))
        elif kind == "replay":
            sub, seq = value  # type: ignore[misc]
            if room.replayed(sub, seq):
                received[sub].append(seq)
        elif kind == "replayed_run":
            sub, run = value  # type: ignore[misc]
            start = room.replayed_run(sub, run)
            if start is not None:
                received[sub] += run[start:]
        else:
            sub, reached = value  # type: ignore[misc]
            apply(room.replay_done(sub, reached))

    def eligible(source: Source) -> bool:
        if not source.items:
            return False
        kind, value = source.items[0]
        return kind not in ("fill_done", "replay_done") or _seq_of(value) <= hub

    if known:  # "a" follows the channel from before these messages
        received["a"] = []
        room.join("a", "alice", None)
        room.replay_done("a", known)
        assert room.go_live("a") == []
    for seq in range(known + 1, join_at + 1):
        take("live", seq)
    sources.append(Source([("live", seq) for seq in range(join_at + 1, last + 1)]))
    starts: dict[Sub, int] = {}
    for number, since in enumerate(joiners):
        sub = f"j{number}"
        received[sub] = []
        room.join(sub, sub, since)
        # Its replay reads the channel after the join: at least where the live events were.
        reached = data.draw(st.integers(hub, last), label=f"{sub} reads")
        replay: list[tuple[str, object]] = []
        if since is not None and data.draw(st.booleans(), label=f"{sub} gets batches"):
            # A round shared with other keys may start before its since_seq.
            start = data.draw(st.integers(0, since), label=f"{sub}'s round starts after")
            run = list(range(start + 1, reached + 1))
            while run:
                size = data.draw(st.integers(1, len(run)), label="batch size")
                replay.append(("replayed_run", (sub, run[:size])))
                run = run[size:]
        elif since is not None:
            replay = [("replay", (sub, s)) for s in range(since + 1, reached + 1)]
        replay.append(("replay_done", (sub, reached)))
        sources.append(Source(replay))
        starts[sub] = since if since is not None else reached

    while ready := [source for source in sources if eligible(source)]:
        source = data.draw(st.sampled_from(ready), label="next")
        take(*source.items.pop(0))
    assert not any(source.items for source in sources)

    if known:
        assert received["a"] == list(range(known + 1, last + 1))
    for sub, start in starts.items():
        assert received[sub] == list(range(start + 1, last + 1)), (sub, start, received[sub])


def _seq_of(value: object) -> int:
    """The seq of a ``fill_done`` (an int) or ``replay_done`` ((subscriber, seq)) item."""
    return value if isinstance(value, int) else value[1]  # type: ignore[index,no-any-return]


def test_a_subscriber_ahead_of_the_room_waits_instead_of_getting_repeats() -> None:
    """The defect hypothesis was asked to rule out: a replay that read messages whose live
    events were still on their way. Had the new subscriber gone live at once, the room
    would have written those events to it a second time."""
    room = live_room(5, "a")
    room.join("b", "bob", 0)
    for seq in range(1, 8):  # the replay read 1..7; 6 and 7 are still in flight live
        assert room.replayed("b", seq)
    assert room.replay_done("b", 7) == []
    assert seqs(room.live_event(created(6))) == [6]
    assert "b" not in room.live
    effects = room.live_event(created(7))
    assert effects == [Deliver(created(7)), Ready("b")]
    assert room.go_live("b") == []  # 6 and 7: it has them
    assert seqs(room.live_event(created(8))) == [8] and "b" in room.live


@pytest.mark.parametrize("since", [None, 0, 3])
def test_the_first_subscriber_of_a_room_makes_it_known(since: int | None) -> None:
    room = new_room()
    assert room.last_seq is None
    room.join("a", "alice", since)
    assert room.replay_done("a", 3) == [Ready("a")]
    assert room.last_seq == 3
