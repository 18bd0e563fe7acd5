"""Stopping a process: what the orderly stop leaves running is ended, or named."""

from __future__ import annotations

import asyncio
import logging

from keel_app.processes import _finish_leftover_tasks


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_leftover_tasks_are_cancelled_and_a_stubborn_one_is_named() -> None:
    release = asyncio.Event()
    cancelled: list[str] = []

    async def polite() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append("polite")
            raise

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled.append("stubborn")

    first = asyncio.create_task(polite(), name="polite-one")
    second = asyncio.create_task(stubborn(), name="stubborn-one")
    await asyncio.sleep(0)
    records = Records()
    logger = logging.getLogger("keel.process")
    logger.addHandler(records)
    try:
        stuck = await _finish_leftover_tasks({first, second}, grace=0.2)
    finally:
        logger.removeHandler(records)
        release.set()
        await second
    assert stuck == 1
    assert first.cancelled()
    assert sorted(cancelled) == ["polite", "stubborn"]
    named = [r for r in records.records if getattr(r, "task", None) == "stubborn-one"]
    assert len(named) == 1, records.records
    assert "stubborn" in named[0].stack
