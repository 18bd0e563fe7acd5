"""One channel's events in seq order, each message once: the rule the gateway's Connect hub
and the bridge's rooms both apply to live events.

Message events (``message:created``) carry the channel's gap-free seq. Publishing is
at-least-once and two publishers' events can cross (two coroutines, two gateway
processes), so a consumer may see a seq twice, or a later seq before an earlier one.
:class:`SeqOrder` releases message events in seq order, each once, and holds everything
that arrives after a missing seq — other events too, which stay behind the messages that
arrived before them — until the gap is filled (the missing events offered, from wherever
the caller fetched them) or given up.

It does no I/O and keeps no clock: *when* a gap is filled and *from where* is the
caller's policy. The hub waits a moment (crossed publishes arrive within milliseconds),
then reads the database; a bridge room asks the gateway at once (the hub already waited).
"""

from __future__ import annotations

from typing import Generic, TypeVar

E = TypeVar("E")


class SeqOrder(Generic[E]):
    """Releases a channel's events in seq order (see the module docstring).

    ``last_seq`` is the seq through which every message was released (or given up);
    ``None`` means it is not known yet: until :meth:`start_at` says where the channel
    is, every event is released as it comes (nothing can be called a repeat or a gap;
    a bridge room's subscribers are all still replaying then, and each drops what its
    replay already sent).
    """

    __slots__ = ("_highest", "_messages", "_others", "last_seq")

    def __init__(self, last_seq: int | None = None) -> None:
        self.last_seq = last_seq
        #: The highest message seq offered so far (what later non-message events follow).
        self._highest = last_seq or 0
        self._messages: dict[int, E] = {}  # held messages by seq
        self._others: dict[int, list[E]] = {}  # held other events, by the seq they follow

    @property
    def known(self) -> bool:
        return self.last_seq is not None

    @property
    def holding(self) -> bool:
        """Whether events wait behind a gap."""
        return bool(self._messages)

    def start_at(self, last_seq: int) -> None:
        """Where the channel is, once known (later calls change nothing): messages up to
        ``last_seq`` — and up to any released before — are repeats from now on."""
        if self.last_seq is None:
            self.last_seq = self._highest = max(self._highest, last_seq)

    def offer(self, event: E, seq: int | None) -> list[E]:
        """The events ``event`` releases, in order (maybe none, maybe several).

        ``seq`` is the event's message seq, or ``None`` for an event that is not a
        message (it is released after the messages that arrived before it)."""
        last = self.last_seq
        if last is None:
            if seq is not None and seq > self._highest:
                self._highest = seq
            return [event]
        if seq is None:
            if not self._messages:
                return [event]
            self._others.setdefault(self._highest, []).append(event)
            return []
        if seq <= last or seq in self._messages:
            return []  # a repeat
        if seq > self._highest:
            self._highest = seq
        if seq == last + 1 and not self._messages:
            self.last_seq = seq
            return [event]
        self._messages[seq] = event
        return self._release()

    def gap(self) -> tuple[int, int] | None:
        """The first run of missing seqs ``(first, last)``, or None when nothing waits."""
        if not self._messages or self.last_seq is None:
            return None
        return self.last_seq + 1, min(self._messages) - 1

    def skip_gap(self) -> list[E]:
        """Give up the first gap (its messages are not to be had): what that releases."""
        if not self._messages:
            return []
        return self.skip_to(min(self._messages) - 1)

    def skip_to(self, seq: int) -> list[E]:
        """Give up the missing messages up to ``seq``: what that releases, in order."""
        assert self.last_seq is not None
        released: list[E] = []
        for held in sorted(s for s in self._messages if s <= seq):
            if held in self._messages:  # not released with an earlier one
                self.last_seq = max(self.last_seq, held - 1)
                released += self._release()
        for key in sorted(k for k in self._others if k <= seq):
            released += self._others.pop(key)
        self.last_seq = max(self.last_seq, seq)
        self._highest = max(self._highest, self.last_seq)
        return released + self._release()

    def _release(self) -> list[E]:
        """Release the messages that follow ``last_seq`` without a gap, each followed by
        the other events that arrived after it."""
        assert self.last_seq is not None
        released: list[E] = []
        while self.last_seq + 1 in self._messages:
            self.last_seq += 1
            released.append(self._messages.pop(self.last_seq))
            followers = self._others.pop(self.last_seq, None)
            if followers:
                released += followers
        return released
