"""When the bridge's fan-out writes (``gateway_bridge.bridge.fanout.Fanout``): an event
goes out ``COALESCE_SECONDS`` after it arrives while flushing leaves the bridge time to
spare, even when a flush takes most of the time between events; once flushing takes
nearly all of it, flushes wait and the events that arrive meanwhile go out together, one
write per subscriber, in seq order, so a backlog does not grow.

No sockets and no waiting: the subscribers are stand-ins that record their writes, a
write or a read of the gateway stream "takes" time by moving the event loop's clock
(patched on the running loop while the test runs, which never yields to the loop), and
the test runs the scheduled flushes itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from keel.channels.v1 import channels_pb2

from gateway_bridge.bridge.connection import Conn
from gateway_bridge.bridge.fanout import (
    COALESCE_SECONDS,
    FLUSH_SECONDS,
    MAX_COALESCE_SECONDS,
    Fanout,
    LocalRoom,
    event_bytes,
)
from gateway_bridge.vocabulary import MESSAGE_CREATED

TENANT, CHANNEL = "t-1", "c-1"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Tenant:
    def allows(self, scope: str) -> bool:
        return False


class Subscriber:
    """A live connection that records what it was written; each write costs ``cost``
    seconds of the clock (as a system call on a busy machine would)."""

    def __init__(self, clock: Clock, cost: float) -> None:
        self.clock, self.cost = clock, cost
        self.writes: list[bytes] = []
        self.tenant = Tenant()

    def write(self, data: bytes, limit: int) -> bool:
        self.writes.append(data)
        self.clock.now += self.cost
        return True


class Link:
    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def unsubscribe(self, *args: Any, **kwargs: Any) -> None:
        pass


def event(seq: int) -> channels_pb2.ChannelEvent:
    return channels_pb2.ChannelEvent(
        tenant_id=TENANT,
        channel_id=CHANNEL,
        seq=seq,
        event=MESSAGE_CREATED,
        data_json=f'{{"message":{{"seq":{seq}}}}}',
        event_id=f"e{seq}",
    )


def live(seq: int) -> channels_pb2.ConnectResponse:
    return channels_pb2.ConnectResponse(event=event(seq))


@contextmanager
def scene(cost: float, subscribers: int = 10) -> Iterator[tuple[Clock, Fanout, list[Subscriber]]]:
    """A fan-out with one room of live stand-in subscribers whose writes cost ``cost`` each,
    on the running loop with its clock patched. The loop is the test session's: a test
    never yields to it inside (no ``await``), and on leaving, the fan-out's timer is
    cancelled and the loop's clock is its own again."""
    loop = asyncio.get_running_loop()
    clock = Clock(loop.time())
    loop.time = clock  # type: ignore[method-assign]
    fanout = None
    try:
        stand_ins = [Subscriber(clock, cost) for _ in range(subscribers)]
        fanout = fanout_with(stand_ins)
        yield clock, fanout, stand_ins
    finally:
        if fanout is not None:
            fanout.close()
        del loop.time


def fanout_with(subscribers: list[Subscriber]) -> Fanout:
    fanout = Fanout(
        connections=None,  # type: ignore[arg-type]
        link=Link(),  # type: ignore[arg-type]
        send_buffer_bytes=1 << 20,
        on_slow=lambda conn: None,
        on_presence=lambda key, change: None,
    )
    room = LocalRoom(TENANT, CHANNEL)
    fanout._rooms[(TENANT, CHANNEL)] = room
    conns = cast("list[Conn]", subscribers)
    for conn in conns:
        room.join(conn, "u", None)
    for conn in conns:
        fanout._apply(room, room.replay_done(conn, 0))
    assert len(room.live) == len(subscribers)
    return fanout


def due(fanout: Fanout) -> float:
    """When the scheduled flush runs (it must be scheduled)."""
    assert fanout._flush_handle is not None
    return fanout._flush_handle.when()


def run_flush(fanout: Fanout, clock: Clock) -> None:
    """The loop reaches the flush's time and runs it."""
    clock.now = max(clock.now, due(fanout))
    handle, fanout._flush_handle = fanout._flush_handle, None
    assert handle is not None
    handle.cancel()
    fanout._flush()


def play(
    clock: Clock, fanout: Fanout, arrivals: list[float], read_cost: float
) -> tuple[dict[int, float], list[float]]:
    """Play the loop: event ``i + 1`` reaches the bridge's gRPC buffer at ``arrivals[i]``
    (from now), the link reads one event at a time, each read taking ``read_cost``, and a
    scheduled flush runs once its time comes (nothing runs during a flush). Returns when
    each event arrived (by seq) and the delays each flush was scheduled with."""
    start = clock.now
    arrived = {seq: start + at for seq, at in enumerate(arrivals, 1)}
    waits: list[float] = []
    seq = 1
    while seq <= len(arrivals) or fanout._flush_handle is not None:
        flush_at = fanout._flush_handle.when() if fanout._flush_handle is not None else None
        read_at = max(clock.now, arrived[seq]) if seq <= len(arrivals) else None
        if flush_at is not None and (read_at is None or flush_at <= read_at):
            run_flush(fanout, clock)
            continue
        assert read_at is not None
        clock.now = read_at + read_cost
        scheduled = fanout._flush_handle is not None
        fanout.on_gateway(live(seq))
        if not scheduled:
            waits.append(due(fanout) - clock.now)
        seq += 1
    return arrived, waits


def flushed() -> tuple[float, float]:
    """``keel_bridge_flush_seconds``' count and sum so far."""
    samples = {s.name: s.value for m in FLUSH_SECONDS.collect() for s in m.samples}
    return samples["keel_bridge_flush_seconds_count"], samples["keel_bridge_flush_seconds_sum"]


def check_delivered(subscribers: list[Subscriber], count: int) -> None:
    """Every subscriber got events 1..count once each, in order."""
    expected = b"".join(event_bytes(event(seq)) for seq in range(1, count + 1))
    for subscriber in subscribers:
        assert b"".join(subscriber.writes) == expected


async def test_events_far_apart_go_out_each_within_the_coalescing_delay() -> None:
    with scene(cost=0.001) as (clock, fanout, subscribers):  # a flush: 10 ms
        flushes, seconds = flushed()
        _, waits = play(clock, fanout, [0.1 * i for i in range(50)], read_cost=0.0005)
        assert waits == [pytest.approx(COALESCE_SECONDS)] * 50
        check_delivered(subscribers, 50)
        assert all(len(s.writes) == 50 for s in subscribers)
        # keel_bridge_flush_seconds counts each flush and its time: 50 of 10 ms.
        now_flushes, now_seconds = flushed()
        assert now_flushes - flushes == 50
        assert now_seconds - seconds == pytest.approx(50 * 0.010)


async def test_a_flush_taking_most_of_the_time_between_events_does_not_delay_them() -> None:
    # A flush takes 15 ms and events come every 20 ms: the bridge keeps up alone, and
    # waiting would only add latency.
    with scene(cost=0.0015) as (clock, fanout, subscribers):
        _, waits = play(clock, fanout, [0.02 * i for i in range(100)], read_cost=0.0005)
        assert waits == [pytest.approx(COALESCE_SECONDS)] * 100
        check_delivered(subscribers, 100)


async def test_when_flushing_is_all_the_bridge_does_events_go_out_together() -> None:
    # A flush takes 30 ms, an event comes every 10 ms, and reading one from the gateway
    # stream takes 2 ms (a busy machine): flushing each event alone, the bridge would
    # fall further behind with every event (the last ~2 s late).
    with scene(cost=0.003) as (clock, fanout, subscribers):
        start = clock.now
        arrived, waits = play(clock, fanout, [0.01 * i for i in range(200)], read_cost=0.002)
        check_delivered(subscribers, 200)
        writes = len(subscribers[0].writes)
        assert writes < 200 / 2  # several events per write
        assert max(waits) <= MAX_COALESCE_SECONDS + 1e-9
        # No growing backlog: everything is out soon after the last event arrived.
        assert clock.now - arrived[200] < 0.2
        assert clock.now - start < 2.0 + 0.2


async def test_a_flush_never_waits_longer_than_the_cap() -> None:
    with scene(cost=1.0, subscribers=2) as (clock, fanout, subscribers):  # 2 s flushes
        _, waits = play(clock, fanout, [0.01 * i for i in range(20)], read_cost=0.001)
        assert max(waits) == pytest.approx(MAX_COALESCE_SECONDS)
        check_delivered(subscribers, 20)
