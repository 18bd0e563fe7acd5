"""Group commit: concurrent calls that each want one small transaction share one.

A :class:`Batcher` queues what callers submit. When nothing is running, the first
item starts a batch at once (so a lone call waits for nothing); items that arrive
while batches are running queue up and go together in the next one. Under load
a batch's fixed costs — a transaction, its round trips, its commit — are paid
once for many items instead of once each.

The function that runs a batch answers each item on its own (a result, or the
exception that item must raise), so one bad item does not fail the others. If
the function itself raises, every item of that batch gets the exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs ``run(items)`` on batches of at most ``max_batch`` submitted items, with at
    most ``max_in_flight`` batches running at once (see the module docstring)."""

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
        *,
        max_batch: int = 64,
        max_in_flight: int = 1,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._run = run
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining = 0  # counted in _drain itself: a done callback would run too late
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """Queue ``item``; return its result (or raise its exception) once its batch ran."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Result] = loop.create_future()
        self._queue.append((item, done))
        if self._draining < self._max_in_flight:
            self._draining += 1
            task = loop.create_task(self._drain(), name="batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await done

    async def _drain(self) -> None:
        try:
            await self._drain_queue()
        finally:
            self._draining -= 1

    async def _drain_queue(self) -> None:
        while self._queue:
            taken = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            outcomes: Sequence[Result | BaseException]
            try:
                outcomes = await self._run([item for item, _ in taken])
                if len(outcomes) != len(taken):
                    raise RuntimeError(f"a batch of {len(taken)} got {len(outcomes)} outcomes")
            except asyncio.CancelledError:  # shutting down: nobody is left waiting forever
                for _, done in taken:
                    done.cancel()
                if self._draining <= 1:
                    for _, done in self._queue:
                        done.cancel()
                    self._queue.clear()
                raise
            except Exception as exc:  # every caller of the batch hears of it
                outcomes = [exc] * len(taken)
            for (_, done), outcome in zip(taken, outcomes, strict=True):
                if done.done():  # the caller gave up (cancelled)
                    continue
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)
