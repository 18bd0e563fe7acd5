"""The two lines websockets writes for every connection, ``connection open`` and
``connection closed`` (INFO, logger ``websockets.server``), at most
:data:`LINES_PER_SECOND` of each a second.

A connect storm of thousands a second would otherwise spend a tenth of the bridge's CPU
on them (a record made and handed over on the event loop, JSON-encoded and written on
the writer thread). Past the limit the lines are counted, and when that second is over
one INFO line of this module's logger says how many of each were not written
(``connection lines not written``, with ``connection_open``, ``connection_closed`` and
``seconds``). Below the limit every connection still gets its two lines, with its
``peer`` and ``path`` (:mod:`service_kit.logs`). Every other line of websockets' goes
through as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Final

log = logging.getLogger(__name__)

#: Lines of each kind written per second; the rest are counted.
LINES_PER_SECOND: Final = 100
#: websockets' per-connection INFO lines, and the field each is counted under.
COUNTED: Final = {"connection open": "connection_open", "connection closed": "connection_closed"}


class ConnectionLines:
    """How many of each per-connection line may still be written this second, and how
    many were held back."""

    def __init__(
        self,
        per_second: int = LINES_PER_SECOND,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_second = per_second
        self._clock = clock
        self._window_start = -1.0
        self._written: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._held_since = 0.0
        self._summary: asyncio.TimerHandle | None = None

    def allow(self, message: str) -> bool:
        """Whether to write ``message`` now (False: it is counted instead)."""
        now = self._clock()
        if now - self._window_start >= 1.0:
            self._window_start, self._written = now, {}
        written = self._written.get(message, 0)
        if written < self._per_second:
            self._written[message] = written + 1
            return True
        if not self._held:
            self._held_since = self._window_start
            self._schedule(self._window_start + 1.0 - now)
        self._held[message] = self._held.get(message, 0) + 1
        return False

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test's): the next flush() writes it
            return
        self._summary = loop.call_later(max(0.0, delay), self.flush)

    def flush(self) -> None:
        """Write the count of the lines held back, if any (the timer calls it when the
        second is over; call it before stopping)."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if not self._held:
            return
        held, self._held = self._held, {}
        log.info(
            "connection lines not written",
            extra={
                "connection_open": held.get("connection open", 0),
                "connection_closed": held.get("connection closed", 0),
                "seconds": round(self._clock() - self._held_since, 3),
            },
        )


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """The logger a bridge gives websockets (``serve(logger=…)``): websockets' own
    (``websockets.server``), with its ``connection open`` and ``connection closed`` lines
    limited by ``lines``. websockets wraps it in a per-connection adapter that names the
    connection; this one passes that name on as it is."""

    def __init__(self, lines: ConnectionLines) -> None:
        super().__init__(logging.getLogger("websockets.server"))
        self.lines = lines

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if (
            level == logging.INFO
            and isinstance(msg, str)
            and msg in COUNTED
            and not self.lines.allow(msg)
        ):
            return
        super().log(level, msg, *args, **kwargs)
