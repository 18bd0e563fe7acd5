"""The durable job queue: background work kept in the database and run by leased workers.

A *job* is one unit of background work: a ``kind`` (which handler runs it), a JSON
``payload``, the tenant it is for (None for installation-wide work), and its bookkeeping
in the ``jobs`` table: ``state``, ``attempts``, ``run_after``, ``lease_until``,
``last_error``. Code that needs work done calls :func:`enqueue` inside its own
transaction, so the job exists exactly when the change that needs it commits. A
:class:`~service_kit.job_worker.JobWorker` in a serving process claims due jobs of the
kinds it has handlers for and runs them, at most ``concurrency`` at a time.

Invariants:

- **Claims.** A job is due when it is ``queued`` and its ``run_after`` has passed, or
  ``running`` and its lease has expired (its worker was killed, or lost the database).
  :func:`claim` takes due rows with ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL
  (SQLite has one writer at a time), so concurrent workers never take the same job; a
  claim leases the job to its worker until ``lease_until`` and adds one to ``attempts``.
  The worker extends the lease while the handler runs.
- **Fencing.** ``attempts`` numbers the claims of a job. A worker settles, extends or
  hands back only the claim it made (same ``attempts``, still ``running``), so a worker
  whose job was reclaimed after its lease expired changes nothing.
- **Batches.** :func:`claim` takes any number of jobs in the same few statements, and
  :func:`settle_many` records any number of outcomes in one transaction (the worker
  records so the outcomes of jobs that end together), each fenced on its own.
- **At least once.** A handler may run more than once for one job (its lease expired
  while it still ran; the process died after the work but before the success was
  recorded): handlers must be idempotent.
- **Retries.** A failed attempt is retried after an exponential backoff with jitter
  (:func:`retry_delay`), or at the time its handler chose by raising :class:`RetryAt`
  (a schedule of its own, a ``Retry-After``); when a failed attempt was the job's
  ``max_attempts``-th claim (None: never) the job is ``failed`` and stays for inspection.
- **Every attempt is recorded** in ``job_attempts``: its worker, start and finish times,
  outcome (``running``, ``succeeded``, ``failed``, ``interrupted``, ``lease_expired``)
  and error.
- **Stopping.** Long handlers call :meth:`Job.checkpoint` between steps (never inside a
  transaction). Once the worker is stopping, or has lost the job's lease, it raises
  :class:`JobInterrupted`; the job is handed back (``queued``, due at once) and the
  attempt is recorded as ``interrupted``. The worker's ``stop`` waits ``grace`` seconds
  for handlers to get there, then cancels them; a cancelled job is due again when its
  lease expires.
- **Retention.** Finished jobs (succeeded or failed) are deleted, with their attempts,
  ``keep_finished`` after they finished (7 days by default).

Times come from the workers' clocks: the processes of a cluster must keep them in step
(NTP), or a job may be reclaimed before its lease really ran out.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service_kit.db import claim_rows, insert_ignoring_conflicts, write_transaction
from service_kit.schema import job_attempts, jobs
from service_kit.validation import new_id

log = logging.getLogger(__name__)

QUEUED: Final = "queued"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
#: Outcomes of an attempt besides ``running``, ``succeeded`` and ``failed``.
INTERRUPTED: Final = "interrupted"
LEASE_EXPIRED: Final = "lease_expired"

#: How often a job is tried before it is ``failed``, unless its enqueuer says otherwise.
DEFAULT_MAX_ATTEMPTS: Final = 25

_KIND = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_MAX_ERROR = 1000


class JobInterrupted(Exception):
    """Raised by :meth:`Job.checkpoint`: stop now; the job will run again later."""


class RetryAt(Exception):
    """Raised by a handler whose attempt failed and that says when the job runs again.

    The attempt is recorded as ``failed`` with ``reason`` as its error, and the job is
    due at ``when`` instead of after the worker's backoff (unless it was the job's last
    allowed attempt). For work with a retry schedule of its own, such as a webhook's.
    """

    def __init__(self, when: datetime, reason: str) -> None:
        super().__init__(reason)
        self.when = when
        self.reason = reason


async def _keep_going() -> None:
    """The checkpoint of a job run outside a worker: never interrupts."""


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed job as its handler sees it.

    ``attempt`` is 1 on the first run, 2 on the second, and so on; after a failed
    attempt number ``max_attempts`` (None: never) the job is given up. Call
    :meth:`checkpoint` between steps of long work.
    """

    id: str
    kind: str
    payload: Mapping[str, Any]
    tenant_id: str | None = None
    attempt: int = 1
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS
    interrupt_check: Callable[[], Awaitable[None]] = field(
        default=_keep_going, repr=False, compare=False
    )

    async def checkpoint(self) -> None:
        """Raise :class:`JobInterrupted` when the job must stop (its worker is stopping or
        lost the lease); return at once otherwise."""
        await self.interrupt_check()


#: What runs jobs of one kind. It may run twice for one job; raising retries the job.
JobHandler = Callable[[Job], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a failed job waits before its next attempt (see :func:`retry_delay`)."""

    base_delay: float = 1.0
    max_delay: float = 3600.0


#: The retry policy workers use unless told otherwise.
DEFAULT_RETRY: Final = RetryPolicy()


def retry_delay(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

    ``base_delay * 2 ** (attempt - 1)``, at most ``max_delay``, then scaled by a random
    factor in [0.5, 1) (``rand()`` is in [0, 1)), so jobs that failed together (an
    endpoint down, the database restarting) do not all come back at the same moment.
    """
    exponential = policy.base_delay * 2.0 ** min(max(attempt - 1, 0), 60)
    return min(policy.max_delay, exponential) * (0.5 + rand() / 2)


async def enqueue(
    conn: AsyncConnection,
    kind: str,
    payload: Mapping[str, Any],
    *,
    now: datetime,
    tenant_id: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
    unique_key: str | None = None,
) -> str:
    """Add a job in ``conn``'s transaction (it exists if and only if that commits).

    ``kind`` names the handler (lower-case letters, digits, ``._:-``; up to 64);
    ``payload`` must be a JSON object; the job is due at ``run_after`` (default ``now``).
    With a ``unique_key`` (up to 200 characters) a second enqueue of the same key adds
    nothing and returns the first job's id, for as long as that job is kept. Raises
    ``ValueError`` for a bad kind, payload, key or ``max_attempts``. Returns the job id.
    """
    if unique_key is not None and not 0 < len(unique_key) <= 200:
        raise ValueError("unique_key must be 1 to 200 characters")
    _check_options(kind, max_attempts)
    row = _job_row(kind, payload, tenant_id, run_after or now, max_attempts, now)
    row["unique_key"] = unique_key
    if unique_key is None:
        await conn.execute(insert(jobs).values(row))
        return str(row["id"])
    await conn.execute(insert_ignoring_conflicts(conn, jobs).values(row))
    found = await conn.execute(select(jobs.c.id).where(jobs.c.unique_key == unique_key))
    return str(found.scalar_one())


async def enqueue_many(
    conn: AsyncConnection,
    kind: str,
    payloads: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    tenant_id: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
) -> list[str]:
    """Add one job of ``kind`` per payload, all for ``tenant_id``, in ``conn``'s transaction
    and in one statement: :func:`enqueue` for work that comes in batches (no unique keys).
    Raises ``ValueError`` as :func:`enqueue` does, adding none. Returns the ids in order.
    """
    _check_options(kind, max_attempts)
    rows = [_job_row(kind, p, tenant_id, run_after or now, max_attempts, now) for p in payloads]
    if rows:
        await conn.execute(insert(jobs), rows)
    return [str(row["id"]) for row in rows]


def _check_options(kind: str, max_attempts: int | None) -> None:
    if not _KIND.fullmatch(kind):
        raise ValueError(f"job kind {kind[:70]!r}: 1 to 64 of a-z, 0-9, '.', '_', ':', '-'")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1 (or None), not {max_attempts}")


def _job_row(
    kind: str,
    payload: Mapping[str, Any],
    tenant_id: str | None,
    run_after: datetime,
    max_attempts: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The row of a new queued job; raises ``ValueError`` for a payload that is not a JSON
    object."""
    if not isinstance(payload, Mapping):
        raise ValueError("a job payload must be a JSON object")
    try:
        document = json.loads(json.dumps(payload, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the job payload is not JSON: {exc}") from exc
    return {
        "id": new_id(),
        "kind": kind,
        "tenant_id": tenant_id,
        "payload": document,
        "state": QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_after": run_after,
        "last_error": "",
        "unique_key": None,
        "created_at": now,
        "updated_at": now,
    }


async def claim(
    engine: AsyncEngine,
    kinds: Collection[str],
    *,
    limit: int,
    worker: str,
    lease: timedelta,
    now: datetime,
) -> list[Job]:
    """Lease up to ``limit`` due jobs of ``kinds`` to ``worker`` until ``now + lease``.

    Oldest due first. A job taken back from an expired lease has that attempt recorded
    as ``lease_expired``; if it was the job's last allowed attempt the job is ``failed``
    instead of claimed.
    """
    if not kinds or limit < 1:
        return []
    due = or_(
        and_(jobs.c.state == QUEUED, jobs.c.run_after <= now),
        and_(jobs.c.state == RUNNING, jobs.c.lease_until <= now),
    )
    query = select(jobs).where(jobs.c.kind.in_(sorted(kinds)), due)
    claimed: list[Job] = []
    async with write_transaction(engine) as conn:
        rows = await claim_rows(conn, query.order_by(jobs.c.run_after).limit(limit))
        # A lease taken back is rare: its own statements. The rest: one of each.
        taking = [r for r in rows if r.state != RUNNING or await _take_back(conn, r, now)]
        if taking:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id.in_([row.id for row in taking]))
                .values(
                    state=RUNNING,
                    attempts=jobs.c.attempts + 1,
                    lease_owner=worker,
                    lease_until=now + lease,
                    updated_at=now,
                )
            )
            await conn.execute(
                insert(job_attempts),
                [
                    {
                        "job_id": row.id,
                        "tenant_id": row.tenant_id,
                        "attempt": row.attempts + 1,
                        "worker": worker,
                        "start_time": now,
                        "outcome": RUNNING,
                        "error": "",
                    }
                    for row in taking
                ],
            )
        claimed = [
            Job(row.id, row.kind, row.payload, row.tenant_id, row.attempts + 1, row.max_attempts)
            for row in taking
        ]
    return claimed


async def _take_back(conn: AsyncConnection, row: Any, now: datetime) -> bool:
    """Close the attempt whose lease expired; False (and the job failed) if it was the last."""
    error = f"the lease of attempt {row.attempts} expired (its worker stopped or lost the job)"
    await _close_attempt(conn, row.id, row.attempts, LEASE_EXPIRED, error, now)
    if row.max_attempts is None or row.attempts < row.max_attempts:
        return True
    await conn.execute(
        update(jobs)
        .where(jobs.c.id == row.id)
        .values(
            state=FAILED,
            lease_owner=None,
            lease_until=None,
            last_error=error,
            updated_at=now,
            finished_at=now,
        )
    )
    log.error("a job failed for good", extra={"job_id": row.id, "kind": row.kind, "error": error})
    return False


async def _close_attempt(
    conn: AsyncConnection, job_id: str, attempt: int, outcome: str, error: str, now: datetime
) -> None:
    await conn.execute(
        _CLOSE_ATTEMPT,
        {
            "b_job_id": job_id,
            "b_attempt": attempt,
            "b_outcome": outcome,
            "b_error": error[:_MAX_ERROR],
            "b_finish_time": now,
        },
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of one claim of a job, to record (:func:`settle_many`): the attempt's
    ``outcome`` and ``error``, and the job's new ``state`` (``queued`` again at
    ``run_after``, or ``succeeded``/``failed`` for good)."""

    job: Job
    outcome: str
    state: str
    error: str = ""
    run_after: datetime | None = None


def succeeded(job: Job) -> Settlement:
    """``job``'s attempt did its work."""
    return Settlement(job, SUCCEEDED, SUCCEEDED)


def failed(job: Job, error: str, *, retry_at: datetime) -> Settlement:
    """``job``'s attempt failed with ``error``: due again at ``retry_at``, or ``failed`` if
    it was the last allowed attempt."""
    final = job.max_attempts is not None and job.attempt >= job.max_attempts
    if final:
        return Settlement(job, FAILED, FAILED, error[:_MAX_ERROR])
    return Settlement(job, FAILED, QUEUED, error[:_MAX_ERROR], retry_at)


def handed_back(job: Job, *, now: datetime) -> Settlement:
    """``job`` was interrupted: queued again, due at once."""
    return Settlement(job, INTERRUPTED, QUEUED, "", now)


async def settle_many(
    engine: AsyncEngine, settlements: Sequence[Settlement], *, now: datetime
) -> list[bool]:
    """Record ``settlements`` in one transaction and a fixed number of statements,
    whatever their number: each job changes, and its attempt is closed, only if the claim
    is still the settlement's (same ``attempts``, still ``running``: fencing). One bool
    per settlement, in order: False when the claim was no longer its (reclaimed, purged).
    A job may appear once."""
    if not settlements:
        return []
    ids = [s.job.id for s in settlements]
    async with write_transaction(engine) as conn:
        current = {
            row.id: row
            for row in await conn.execute(
                _locked(
                    conn,
                    select(jobs.c.id, jobs.c.attempts, jobs.c.run_after, jobs.c.last_error).where(
                        jobs.c.id.in_(ids), jobs.c.state == RUNNING
                    ),
                )
            )
        }
        ours = [
            s
            for s in settlements
            if (row := current.get(s.job.id)) is not None and row.attempts == s.job.attempt
        ]
        if ours:
            await conn.execute(
                _SETTLE_JOB,
                [_job_change(s, current[s.job.id], now) for s in ours],
            )
            await conn.execute(
                _CLOSE_ATTEMPT,
                [
                    {
                        "b_job_id": s.job.id,
                        "b_attempt": s.job.attempt,
                        "b_outcome": s.outcome,
                        "b_error": s.error[:_MAX_ERROR],
                        "b_finish_time": now,
                    }
                    for s in ours
                ],
            )
    settled = {s.job.id for s in ours}
    for s in ours:
        if s.state == FAILED:
            log.error("a job failed for good", extra={"job_id": s.job.id, "kind": s.job.kind})
    return [s.job.id in settled for s in settlements]


def _locked(conn: AsyncConnection, query: Any) -> Any:
    """``query`` locking its rows (PostgreSQL; SQLite has one writer at a time)."""
    return query.with_for_update() if conn.dialect.name == "postgresql" else query


def _job_change(s: Settlement, row: Any, now: datetime) -> dict[str, Any]:
    finished = s.state in (SUCCEEDED, FAILED)
    return {
        "b_id": s.job.id,
        "b_state": s.state,
        "b_run_after": s.run_after or row.run_after,
        "b_last_error": s.error if s.outcome == FAILED else row.last_error,
        "b_finished_at": now if finished else None,
        "b_updated_at": now,
    }


# executemany: one statement for every job of a settlement batch, and one for attempts.
_SETTLE_JOB = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        run_after=bindparam("b_run_after"),
        last_error=bindparam("b_last_error"),
        finished_at=bindparam("b_finished_at"),
        updated_at=bindparam("b_updated_at"),
        lease_owner=None,
        lease_until=None,
    )
)
_CLOSE_ATTEMPT = (
    update(job_attempts)
    .where(
        job_attempts.c.job_id == bindparam("b_job_id"),
        job_attempts.c.attempt == bindparam("b_attempt"),
    )
    .values(
        outcome=bindparam("b_outcome"),
        error=bindparam("b_error"),
        finish_time=bindparam("b_finish_time"),
    )
)


async def _settle_one(engine: AsyncEngine, settlement: Settlement, now: datetime) -> bool:
    (settled,) = await settle_many(engine, [settlement], now=now)
    return settled


async def succeed(engine: AsyncEngine, job: Job, *, now: datetime) -> bool:
    """Record that ``job``'s attempt did its work; False when the claim was no longer its."""
    return await _settle_one(engine, succeeded(job), now)


async def fail(
    engine: AsyncEngine, job: Job, error: str, *, now: datetime, retry_at: datetime
) -> bool:
    """Record that ``job``'s attempt failed with ``error``: due again at ``retry_at``, or
    ``failed`` if it was the last allowed attempt. False when the claim was no longer its."""
    return await _settle_one(engine, failed(job, error, retry_at=retry_at), now)


async def hand_back(engine: AsyncEngine, job: Job, *, now: datetime) -> bool:
    """Return an interrupted ``job`` to the queue, due at once."""
    return await _settle_one(engine, handed_back(job, now=now), now)


async def extend_lease(engine: AsyncEngine, job: Job, *, until: datetime, now: datetime) -> bool:
    """Keep ``job`` leased until ``until``; False when the claim is no longer its."""
    async with write_transaction(engine) as conn:
        result = await conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id, jobs.c.attempts == job.attempt, jobs.c.state == RUNNING)
            .values(lease_until=until, updated_at=now)
        )
    return result.rowcount == 1


async def delete_finished(engine: AsyncEngine, *, before: datetime, batch_size: int = 1000) -> int:
    """Delete jobs that finished (succeeded or failed) before ``before``, with their
    attempts, ``batch_size`` per transaction; returns how many jobs went."""
    total = 0
    while True:
        chosen = (
            select(jobs.c.id)
            .where(jobs.c.state.in_((SUCCEEDED, FAILED)), jobs.c.finished_at < before)
            .limit(batch_size)
        )
        async with write_transaction(engine) as conn:
            ids = [row.id for row in await claim_rows(conn, chosen)]
            if ids:
                await conn.execute(delete(job_attempts).where(job_attempts.c.job_id.in_(ids)))
                await conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch_size:
            return total


def error_text(exc: BaseException) -> str:
    """An exception as an attempt's error text (type and message, bounded)."""
    text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_ERROR]
