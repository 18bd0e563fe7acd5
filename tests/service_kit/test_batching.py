"""Group commit: concurrent submissions share batches, and each is answered on its own."""

from __future__ import annotations

import asyncio

import pytest

from service_kit.batching import Batcher

FAIL = 1_000_000  # an item that makes its whole batch fail


class Recorded:
    """A batch function that doubles numbers, refuses negative ones, and records batches."""

    def __init__(self, *, pause: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.pause = pause
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.pause)
            if FAIL in items:
                raise RuntimeError("the database went away")
            return [ValueError(f"{n} is negative") if n < 0 else 2 * n for n in items]
        finally:
            self.running -= 1


async def test_a_lone_item_goes_at_once_and_a_crowd_shares_batches() -> None:
    run = Recorded(pause=0.01)
    batcher = Batcher(run, max_batch=50)
    assert await batcher.submit(1) == 2
    assert run.batches == [[1]]
    results = await asyncio.gather(*(batcher.submit(n) for n in range(100)))
    assert results == [2 * n for n in range(100)]
    # Submitted together, they go together: 50 at a time at most.
    assert run.batches[1:] == [list(range(50)), list(range(50, 100))]


async def test_one_items_error_is_its_own() -> None:
    batcher = Batcher(Recorded(), max_batch=10)
    results = await asyncio.gather(*(batcher.submit(n) for n in (1, -2, 3)), return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and str(results[1]) == "-2 is negative"


async def test_a_failing_batch_fails_its_items_and_the_next_batch_runs() -> None:
    run = Recorded(pause=0.01)
    batcher = Batcher(run, max_batch=2)
    results = await asyncio.gather(
        *(batcher.submit(n) for n in (FAIL, 1, 5, 6, 7)), return_exceptions=True
    )
    assert [type(r) for r in results[:2]] == [RuntimeError, RuntimeError]  # FAIL's batch
    assert results[2:] == [10, 12, 14]
    assert await batcher.submit(8) == 16


async def test_batches_in_flight_are_bounded() -> None:
    run = Recorded(pause=0.02)
    batcher = Batcher(run, max_batch=1, max_in_flight=3)
    assert await asyncio.gather(*(batcher.submit(n) for n in range(12))) == [
        2 * n for n in range(12)
    ]
    assert run.most_running == 3


async def test_an_item_submitted_just_after_a_batch_ends_is_not_stranded() -> None:
    batcher = Batcher(Recorded(), max_batch=4)
    for n in range(200):
        async with asyncio.timeout(2):
            assert await batcher.submit(n) == 2 * n


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    batcher = Batcher(Recorded(pause=0.05), max_batch=10)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    impatient = asyncio.create_task(batcher.submit(2))
    patient = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0.01)
    impatient.cancel()
    assert await first == 2 and await patient == 6
    with pytest.raises(asyncio.CancelledError):
        await impatient


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Batcher(Recorded(), max_batch=0)
