"""The seq ordering both the gateway's Connect hub and the bridge's rooms apply
(``gateway_bridge.seq_order``), without I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway_bridge.seq_order import SeqOrder


def test_messages_in_order_pass_at_once_and_repeats_are_dropped() -> None:
    order: SeqOrder[str] = SeqOrder(3)
    assert order.offer("m4", 4) == ["m4"]
    assert order.offer("m4 again", 4) == [] and order.offer("m2", 2) == []
    assert order.offer("reaction", None) == ["reaction"]
    assert order.last_seq == 4 and not order.holding


def test_what_follows_a_gap_waits_in_arrival_order_until_the_gap_is_filled() -> None:
    order: SeqOrder[str] = SeqOrder(0)
    assert order.offer("m3", 3) == []
    assert order.offer("after 3", None) == []
    assert order.offer("m2", 2) == []
    assert order.gap() == (1, 1) and order.holding
    assert order.offer("m1", 1) == ["m1", "m2", "m3", "after 3"]
    assert order.gap() is None and order.last_seq == 3


def test_a_skipped_gap_releases_what_waited_behind_it() -> None:
    order: SeqOrder[str] = SeqOrder(1)
    order.offer("m4", 4)
    order.offer("after 4", None)
    order.offer("m7", 7)
    assert order.gap() == (2, 3)
    assert order.skip_gap() == ["m4", "after 4"]
    assert order.gap() == (5, 6)
    assert order.skip_to(7) == ["m7"]
    assert order.last_seq == 7 and order.offer("m5", 5) == []


def test_skipping_past_the_held_messages_releases_them_all_in_order() -> None:
    order: SeqOrder[str] = SeqOrder(0)
    for seq in (6, 3, 9):
        order.offer(f"m{seq}", seq)
    assert order.skip_to(10) == ["m3", "m6", "m9"]
    assert order.last_seq == 10 and not order.holding
    assert order.offer("m11", 11) == ["m11"]


def test_until_it_knows_where_the_channel_is_everything_passes() -> None:
    order: SeqOrder[str] = SeqOrder()
    assert not order.known
    assert order.offer("m5", 5) == ["m5"] and order.offer("m5", 5) == ["m5"]
    order.start_at(3)  # it already passed 5
    assert order.last_seq == 5 and order.offer("m5", 5) == []
    order.start_at(9)  # known: nothing changes
    assert order.last_seq == 5


@given(st.permutations(range(1, 13)), st.lists(st.integers(1, 12), max_size=6))
def test_any_arrival_order_with_repeats_comes_out_once_in_seq_order(
    arrival: list[int], repeats: list[int]
) -> None:
    order: SeqOrder[int] = SeqOrder(0)
    out: list[int] = []
    for seq in arrival + repeats:
        out += order.offer(seq, seq)
    assert out == list(range(1, 13))
