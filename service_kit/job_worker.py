"""The worker of the durable job queue (:mod:`service_kit.jobs`): claims due jobs of the
kinds it has handlers for, runs them with bounded concurrency, keeps their leases while
they run, records each attempt's outcome (a handler may choose its retry time by raising
:class:`~service_kit.jobs.RetryAt`), and stops gracefully (handlers reach a
:meth:`~service_kit.jobs.Job.checkpoint`; what does not in time is cancelled and due
again when its lease expires).

Its metrics: ``keel_jobs_finished_total{kind,outcome}`` counts the attempts it settles
(``succeeded``; ``failed``, due again; ``given_up``, the last allowed attempt failed), and
``keel_job_queue_depth{kind}`` is the number of jobs due and not running, sampled every
``depth_interval`` seconds for its own kinds only (so two processes running workers for
different kinds never report each other's)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.batching import Batcher
from service_kit.clock import Clock, utcnow
from service_kit.db import first_line
from service_kit.jobs import (
    DEFAULT_RETRY,
    QUEUED,
    Job,
    JobHandler,
    JobInterrupted,
    RetryAt,
    RetryPolicy,
    Settlement,
    claim,
    delete_finished,
    error_text,
    extend_lease,
    failed,
    handed_back,
    retry_delay,
    settle_many,
    succeeded,
)
from service_kit.schema import jobs
from service_kit.validation import new_id

log = logging.getLogger(__name__)

#: Most job outcomes recorded in one transaction.
SETTLE_BATCH = 128

JOBS_FINISHED = Counter(
    "keel_jobs_finished_total",
    "Job attempts settled by this process's worker, by kind and outcome"
    " (succeeded; failed: due again; given_up: its last allowed attempt failed).",
    ["kind", "outcome"],
)
#: Depth counts stop here: the query stays cheap however long the backlog grows.
DEPTH_COUNT_LIMIT = 10_000
JOB_QUEUE_DEPTH = Gauge(
    "keel_job_queue_depth",
    "Jobs due and not running, per kind this process's worker handles"
    f" (sampled every few seconds; counted up to {DEPTH_COUNT_LIMIT} over all its kinds)."
    " Every process running a kind reports the same number: aggregate with max.",
    ["kind"],
)


class JobWorker:
    """Claims due jobs of the kinds in ``handlers`` and runs them, ``concurrency`` at a time.

    :meth:`start` runs the loop in a task; :meth:`stop` ends it. :meth:`run_due` runs
    what is due now and returns, for callers (and tests) that drive it themselves.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        handlers: Mapping[str, JobHandler],
        *,
        concurrency: int = 4,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 1.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        keep_finished: timedelta = timedelta(days=7),
        depth_interval: float = 5.0,
        name: str | None = None,
        clock: Clock = utcnow,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._engine = engine
        self._handlers = dict(handlers)
        self._concurrency = concurrency
        self._lease = lease
        self._poll_interval = poll_interval
        self._retry = retry
        self._keep_finished = keep_finished
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self._clock = clock
        self._rand = rand
        self._running: dict[str, asyncio.Task[None]] = {}
        self._lost: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._unreachable = False  # logged once per database outage
        self._loop_task: asyncio.Task[None] | None = None
        self._pruned_at: datetime | None = None
        self._depth_interval = depth_interval
        self._depth_sampled_at: float | None = None
        # Outcomes of jobs that end together are recorded together: one transaction.
        self._settlements: Batcher[Settlement, bool] = Batcher(
            self._settle_batch, max_batch=SETTLE_BATCH, max_in_flight=1
        )

    def start(self) -> None:
        """Start claiming and running jobs in the background."""
        if self._loop_task is None:
            self._stopping = False
            self._loop_task = asyncio.create_task(self._run(), name=f"job-worker {self.name}")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give running handlers ``grace`` seconds to finish or reach a
        checkpoint (which hands their job back), then cancel them."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        running = list(self._running.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def wake(self) -> None:
        """Jobs were just enqueued: look for due jobs now rather than at the next poll."""
        self._wake.set()

    async def run_due(self) -> int:
        """Claim what is due now (up to the free slots) and run it to the end; returns how
        many jobs were run."""
        claimed = await self._claim()
        await asyncio.gather(*claimed)
        return len(claimed)

    async def _claim(self) -> list[asyncio.Task[None]]:
        free = self._concurrency - len(self._running)
        found = await claim(
            self._engine,
            self._handlers,
            limit=free,
            worker=self.name,
            lease=self._lease,
            now=self._clock(),
        )
        return [self._spawn(job) for job in found]

    def _spawn(self, job: Job) -> asyncio.Task[None]:
        task = asyncio.create_task(self._execute(job), name=f"job {job.kind} {job.id}")
        self._running[job.id] = task
        task.add_done_callback(lambda _: self._finished(job.id))
        return task

    def _finished(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self._lost.discard(job_id)
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before the pass, so a wake-up during it is not lost.
            self._wake.clear()
            busy = False
            try:
                if len(self._running) < self._concurrency:
                    busy = len(await self._claim()) > 0
                await self._prune_now_and_then()
                await self._sample_depth_now_and_then()
            except (SQLAlchemyError, OSError) as exc:
                if not self._unreachable:  # once per outage, not once a poll
                    self._unreachable = True
                    log.warning(
                        "the job worker cannot reach the database; retrying",
                        extra={"error": first_line(exc)},
                    )
            except Exception:  # a bug must not end the loop for good: say so, keep going
                log.exception("a pass of the job worker failed; retrying")
            else:
                if self._unreachable:
                    self._unreachable = False
                    log.info("the job worker reaches the database again")
            if busy or self._stopping:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            except TimeoutError:
                pass

    async def _prune_now_and_then(self) -> None:
        now = self._clock()
        if self._pruned_at is None or now - self._pruned_at >= timedelta(hours=1):
            self._pruned_at = now
            await delete_finished(self._engine, before=now - self._keep_finished)

    async def _sample_depth_now_and_then(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._depth_sampled_at is None or now - self._depth_sampled_at >= self._depth_interval:
            self._depth_sampled_at = now
            await self.sample_queue_depth()

    async def sample_queue_depth(self) -> None:
        """Set ``keel_job_queue_depth`` for each kind this worker handles: queued jobs whose
        ``run_after`` has come (one GROUP BY on the ``(state, run_after)`` index, at most
        :data:`DEPTH_COUNT_LIMIT` rows read over all its kinds, bounded by a 2 s timeout)."""
        due = (
            select(jobs.c.kind)
            .where(
                jobs.c.state == QUEUED,
                jobs.c.run_after <= self._clock(),
                jobs.c.kind.in_(self._handlers),
            )
            .limit(DEPTH_COUNT_LIMIT)
            .subquery()
        )
        query = select(due.c.kind, func.count()).group_by(due.c.kind)
        async with asyncio.timeout(2.0), self._engine.connect() as conn:
            counts = {kind: count for kind, count in (await conn.execute(query)).all()}
        for kind in self._handlers:
            JOB_QUEUE_DEPTH.labels(kind).set(counts.get(kind, 0))

    async def _settle_batch(self, batch: list[Settlement]) -> list[bool]:
        return await settle_many(self._engine, batch, now=self._clock())

    def _interrupt_check(self, job_id: str) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            if self._stopping:
                raise JobInterrupted("the worker is stopping")
            if job_id in self._lost:
                raise JobInterrupted("the worker lost the job's lease")

        return check

    async def _execute(self, claimed: Job) -> None:
        job = replace(claimed, interrupt_check=self._interrupt_check(claimed.id))
        keeper = asyncio.create_task(self._keep_lease(job), name=f"lease {job.id}")
        extra = {"job_id": job.id, "kind": job.kind, "attempt": job.attempt}
        try:
            await self._handlers[job.kind](job)
        except JobInterrupted as exc:
            log.info("a job was interrupted; it will run again", extra=extra | {"why": str(exc)})
            await self._record(handed_back(job, now=self._clock()))
        except RetryAt as retry:
            # The handler's own schedule: an expected outcome, recorded, not a fault.
            log.debug(
                "a job will run again when its handler said",
                extra=extra | {"retry_at": retry.when.isoformat(), "why": retry.reason},
            )
            if await self._record(failed(job, retry.reason, retry_at=retry.when)):
                JOBS_FINISHED.labels(job.kind, _failure_outcome(job)).inc()
        except Exception as exc:
            log.warning("a job failed", exc_info=True, extra=extra)
            now = self._clock()
            retry_at = now + timedelta(seconds=retry_delay(job.attempt, self._retry, self._rand))
            if await self._record(failed(job, error_text(exc), retry_at=retry_at)):
                JOBS_FINISHED.labels(job.kind, _failure_outcome(job)).inc()
        else:
            if await self._record(succeeded(job)):
                JOBS_FINISHED.labels(job.kind, "succeeded").inc()
        finally:
            keeper.cancel()

    async def _record(self, settlement: Settlement) -> bool:
        """Record ``settlement`` (with those of other jobs ending meanwhile, in one
        transaction); True when it was recorded. Say so when the claim was no longer this
        worker's or the database could not be reached (the lease then brings the job
        back)."""
        job = settlement.job
        try:
            if await self._settlements.submit(settlement):
                return True
            log.warning(
                "a job's claim was lost before its outcome was recorded",
                extra={"job_id": job.id, "kind": job.kind, "attempt": job.attempt},
            )
        except (SQLAlchemyError, OSError):
            log.warning(
                "could not record a job's outcome; it runs again when its lease expires",
                exc_info=True,
                extra={"job_id": job.id, "kind": job.kind},
            )
        return False

    async def _keep_lease(self, job: Job) -> None:
        """Extend ``job``'s lease every third of it; mark the job lost once it is not ours."""
        period = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(period)
            now = self._clock()
            try:
                if not await extend_lease(self._engine, job, until=now + self._lease, now=now):
                    log.warning("a job's lease was lost", extra={"job_id": job.id})
                    self._lost.add(job.id)
                    return
            except (SQLAlchemyError, OSError):
                log.warning("could not extend a job's lease", exc_info=True)


def _failure_outcome(job: Job) -> str:
    """``given_up`` when ``job``'s failed attempt was its last allowed one, else ``failed``."""
    last = job.max_attempts is not None and job.attempt >= job.max_attempts
    return "given_up" if last else "failed"
