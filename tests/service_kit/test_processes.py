"""Stopping a process: what the orderly stop leaves running is ended, or named."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service_kit.processes import _finish_leftover_tasks


async def test_leftover_tasks_are_cancelled_and_a_stubborn_one_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
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
    with caplog.at_level(logging.ERROR, logger="keel.process"):
        await _finish_leftover_tasks({first, second}, grace=0.2)
    assert first.cancelled()
    assert cancelled == ["polite", "stubborn"]
    named = [r for r in caplog.records if getattr(r, "task", None) == "stubborn-one"]
    assert len(named) == 1, caplog.records
    assert "stubborn" in named[0].stack
    release.set()
    await second
