"""The durable job queue on SQLite and PostgreSQL: claims, leases, retries, attempts, stops.

Every test uses job kinds of its own, so jobs other tests leave in the shared database are
never claimed here; times come from a :class:`FakeClock` wherever a lease or a backoff is
the point, so nothing waits for real time to pass.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit import jobs
from service_kit.db import create_engine, write_transaction
from service_kit.job_worker import JobWorker
from service_kit.jobs import Job, JobInterrupted, RetryPolicy, retry_delay
from service_kit.schema import job_attempts
from service_kit.schema import jobs as jobs_table

#: How long any wait in these tests may take before the test fails.
WAIT = 10.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def new_kind() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


def epoch() -> FakeClock:
    """A fake clock at a random moment of the year 2001 (far from other tests' times)."""
    offset = timedelta(seconds=uuid.uuid4().int % (300 * 86_400))
    return FakeClock(datetime(2001, 1, 1, tzinfo=UTC) + offset)


async def add(engine: AsyncEngine, kind: str, now: datetime, **options: Any) -> str:
    payload = options.pop("payload", {"n": 1})
    async with write_transaction(engine) as conn:
        return await jobs.enqueue(conn, kind, payload, now=now, **options)


async def job_row(engine: AsyncEngine, job_id: str) -> Mapping[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(jobs_table).where(jobs_table.c.id == job_id))).one()
    return dict(row._mapping)


async def attempts_of(engine: AsyncEngine, job_id: str) -> list[tuple[int, str, str, str]]:
    """(attempt, worker, outcome, error) of each recorded attempt, in order."""
    query = (
        select(job_attempts).where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.attempt)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(r.attempt, r.worker, r.outcome, r.error) for r in rows]


async def wait_until(condition: Any, what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while True:
                if await condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {WAIT}s")


def test_retry_delay_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=2.0, max_delay=60.0)
    lowest = [retry_delay(n, policy, lambda: 0.0) for n in range(1, 8)]
    highest = [retry_delay(n, policy, lambda: 0.999999) for n in range(1, 8)]
    assert lowest == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert all(
        math.isclose(h, 2 * low, rel_tol=1e-5) for h, low in zip(highest, lowest, strict=True)
    )
    # A job retried for ever never overflows the arithmetic.
    assert retry_delay(100_000, policy, lambda: 0.5) == 45.0


async def test_a_job_is_claimed_run_once_and_recorded(engine: AsyncEngine) -> None:
    kind, clock = new_kind(), epoch()
    tenant = str(uuid.uuid4())
    job_id = await add(engine, kind, clock(), payload={"to": "alice"}, tenant_id=tenant)
    seen: list[Job] = []

    async def handler(job: Job) -> None:
        seen.append(job)

    worker = JobWorker(engine, {kind: handler}, clock=clock, name="w1")
    assert await worker.run_due() == 1
    assert await worker.run_due() == 0

    assert [(j.id, dict(j.payload), j.tenant_id, j.attempt) for j in seen] == [
        (job_id, {"to": "alice"}, tenant, 1)
    ]
    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"], row["lease_until"]) == ("succeeded", 1, None)
    assert row["finished_at"] is not None
    assert await attempts_of(engine, job_id) == [(1, "w1", "succeeded", "")]


async def test_a_job_is_not_run_before_its_run_after(engine: AsyncEngine) -> None:
    kind, clock = new_kind(), epoch()
    await add(engine, kind, clock(), run_after=clock() + timedelta(seconds=30))
    ran: list[str] = []

    async def handler(job: Job) -> None:
        ran.append(job.id)

    worker = JobWorker(engine, {kind: handler}, clock=clock)
    assert await worker.run_due() == 0
    clock.advance(30)
    assert await worker.run_due() == 1 and len(ran) == 1


async def test_a_failed_job_is_retried_with_backoff_and_every_attempt_recorded(
    engine: AsyncEngine,
) -> None:
    kind, clock = new_kind(), epoch()
    job_id = await add(engine, kind, clock())
    failures = iter(["endpoint down", "still down"])

    async def handler(job: Job) -> None:
        reason = next(failures, None)
        if reason is not None:
            raise RuntimeError(reason)

    retry = RetryPolicy(base_delay=10.0, max_delay=3600.0)
    worker = JobWorker(engine, {kind: handler}, clock=clock, retry=retry, rand=lambda: 0.0)

    assert await worker.run_due() == 1
    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"]) == ("queued", 1)
    assert row["last_error"] == "RuntimeError: endpoint down"
    first_retry = clock() + timedelta(seconds=5)  # 10 s * 2**0, jitter factor 0.5
    assert row["run_after"].replace(tzinfo=UTC) == first_retry

    clock.advance(4.9)
    assert await worker.run_due() == 0  # backing off
    clock.advance(0.1)
    assert await worker.run_due() == 1
    row = await job_row(engine, job_id)
    assert row["run_after"].replace(tzinfo=UTC) == clock() + timedelta(seconds=10)  # doubled

    clock.advance(10)
    assert await worker.run_due() == 1
    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"]) == ("succeeded", 3)
    outcomes = [(n, outcome, error) for n, _, outcome, error in await attempts_of(engine, job_id)]
    assert outcomes == [
        (1, "failed", "RuntimeError: endpoint down"),
        (2, "failed", "RuntimeError: still down"),
        (3, "succeeded", ""),
    ]


async def test_a_job_gives_up_after_its_last_attempt(engine: AsyncEngine) -> None:
    kind, clock = new_kind(), epoch()
    job_id = await add(engine, kind, clock(), max_attempts=2)

    async def handler(job: Job) -> None:
        raise ValueError(f"bad {job.attempt}")

    worker = JobWorker(engine, {kind: handler}, clock=clock, rand=lambda: 0.0)
    assert await worker.run_due() == 1
    clock.advance(3600)
    assert await worker.run_due() == 1
    clock.advance(86_400)
    assert await worker.run_due() == 0
    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"], row["last_error"]) == ("failed", 2, "ValueError: bad 2")
    assert row["finished_at"] is not None


async def test_an_expired_lease_makes_the_job_claimable_and_fences_the_old_claim(
    engine: AsyncEngine,
) -> None:
    """The worker that claimed a job dies (``kill -9``): nothing settles the job, its
    lease runs out, and another worker takes it; the first can then change nothing."""
    kind, clock = new_kind(), epoch()
    job_id = await add(engine, kind, clock())
    lease = timedelta(seconds=60)

    (lost,) = await jobs.claim(engine, {kind}, limit=5, worker="dead", lease=lease, now=clock())
    clock.advance(59)
    assert await jobs.claim(engine, {kind}, limit=5, worker="b", lease=lease, now=clock()) == []
    clock.advance(1)
    (taken,) = await jobs.claim(engine, {kind}, limit=5, worker="b", lease=lease, now=clock())
    assert (taken.id, taken.attempt, lost.attempt) == (job_id, 2, 1)

    assert not await jobs.succeed(engine, lost, now=clock())
    assert not await jobs.extend_lease(engine, lost, until=clock() + lease, now=clock())
    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("running", 2, "b")

    assert await jobs.succeed(engine, taken, now=clock())
    recorded = [(n, worker, outcome) for n, worker, outcome, _ in await attempts_of(engine, job_id)]
    assert recorded == [(1, "dead", "lease_expired"), (2, "b", "succeeded")]


async def test_outcomes_settled_together_each_keep_their_own_fate_and_fencing(
    engine: AsyncEngine,
) -> None:
    """The worker records the outcomes of jobs that end together in one batch: each job
    gets its own state, and a claim that was lost meanwhile changes nothing, while the
    others of its batch are recorded."""
    kind, clock = new_kind(), epoch()
    ids = [await add(engine, kind, clock(), max_attempts=2) for _ in range(4)]
    lease = timedelta(seconds=60)
    claimed = await jobs.claim(engine, {kind}, limit=10, worker="a", lease=lease, now=clock())
    assert sorted(job.id for job in claimed) == sorted(ids) and len(claimed) == 4
    ok, retried, interrupted, lost = claimed
    clock.advance(61)  # the lease of all four runs out; another worker takes back one
    async with write_transaction(engine) as conn:  # the others' leases were kept
        await conn.execute(
            jobs_table.update()
            .where(jobs_table.c.id.in_([ok.id, retried.id, interrupted.id]))
            .values(lease_until=clock() + lease)
        )
    (taken,) = await jobs.claim(engine, {kind}, limit=10, worker="b", lease=lease, now=clock())
    assert (taken.id, taken.attempt) == (lost.id, 2)

    retry_at = clock() + timedelta(seconds=30)
    settled = await jobs.settle_many(
        engine,
        [
            jobs.succeeded(ok),
            jobs.failed(retried, "boom", retry_at=retry_at),
            jobs.handed_back(interrupted, now=clock()),
            jobs.succeeded(lost),
        ],
        now=clock(),
    )
    assert settled == [True, True, True, False]
    states = {i: (await job_row(engine, i)) for i in ids}
    assert states[ok.id]["state"] == "succeeded" and states[ok.id]["finished_at"] is not None
    assert (states[retried.id]["state"], states[retried.id]["last_error"]) == ("queued", "boom")
    assert states[retried.id]["lease_owner"] is None
    assert states[interrupted.id]["state"] == "queued"
    assert (states[lost.id]["state"], states[lost.id]["lease_owner"]) == ("running", "b")
    outcomes = {i: [(n, o) for n, _, o, _ in await attempts_of(engine, i)] for i in ids}
    assert outcomes[ok.id] == [(1, "succeeded")]
    assert outcomes[retried.id] == [(1, "failed")]
    assert outcomes[interrupted.id] == [(1, "interrupted")]
    assert outcomes[lost.id] == [(1, "lease_expired"), (2, "running")]

    # a second failure is the last allowed attempt (an interrupted claim counts too)
    clock.advance(30)
    again = await jobs.claim(engine, {kind}, limit=10, worker="a", lease=lease, now=clock())
    assert sorted(job.id for job in again) == sorted([retried.id, interrupted.id])
    failing = [jobs.failed(job, "x", retry_at=clock()) for job in again]
    assert await jobs.settle_many(engine, failing, now=clock()) == [True, True]
    assert [(await job_row(engine, job.id))["state"] for job in again] == ["failed", "failed"]


async def test_a_job_whose_last_attempt_lost_its_lease_fails(engine: AsyncEngine) -> None:
    kind, clock = new_kind(), epoch()
    job_id = await add(engine, kind, clock(), max_attempts=1)
    lease = timedelta(seconds=10)
    await jobs.claim(engine, {kind}, limit=1, worker="dead", lease=lease, now=clock())
    clock.advance(11)
    assert await jobs.claim(engine, {kind}, limit=1, worker="b", lease=lease, now=clock()) == []
    row = await job_row(engine, job_id)
    assert row["state"] == "failed" and "lease of attempt 1 expired" in row["last_error"]


async def test_a_lease_is_kept_while_the_handler_runs(engine: AsyncEngine) -> None:
    kind = new_kind()
    job_id = await add(engine, kind, datetime.now(UTC))
    extended = asyncio.Event()
    first_lease: list[datetime] = []

    async def handler(job: Job) -> None:
        first_lease.append((await job_row(engine, job.id))["lease_until"])

        async def lease_moved() -> bool:
            return bool((await job_row(engine, job.id))["lease_until"] > first_lease[0])

        await wait_until(lease_moved, "a lease extension")
        extended.set()

    worker = JobWorker(engine, {kind: handler}, lease=timedelta(seconds=0.3))
    assert await worker.run_due() == 1
    assert extended.is_set()
    assert (await job_row(engine, job_id))["state"] == "succeeded"


async def test_stop_hands_a_running_job_back_at_its_checkpoint(engine: AsyncEngine) -> None:
    kind = new_kind()
    job_id = await add(engine, kind, datetime.now(UTC))
    started = asyncio.Event()
    steps: list[int] = []

    async def long_work(job: Job) -> None:
        started.set()
        while True:
            await job.checkpoint()
            steps.append(job.attempt)
            await asyncio.sleep(0.01)

    worker = JobWorker(engine, {kind: long_work}, poll_interval=0.05)
    worker.start()
    async with asyncio.timeout(WAIT):
        await started.wait()
    await worker.stop(grace=WAIT)

    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"], row["lease_until"]) == ("queued", 1, None)
    assert [outcome for _, _, outcome, _ in await attempts_of(engine, job_id)] == ["interrupted"]

    async def quick(job: Job) -> None:
        steps.append(job.attempt)

    assert await JobWorker(engine, {kind: quick}).run_due() == 1
    assert steps[-1] == 2 and (await job_row(engine, job_id))["state"] == "succeeded"


async def test_a_worker_that_lost_the_lease_stops_at_the_next_checkpoint(
    engine: AsyncEngine,
) -> None:
    kind = new_kind()
    job_id = await add(engine, kind, datetime.now(UTC))
    running = asyncio.Event()
    outcome: list[str] = []

    async def long_work(job: Job) -> None:
        running.set()
        try:
            while True:
                await job.checkpoint()
                await asyncio.sleep(0.01)
        except JobInterrupted as exc:
            outcome.append(str(exc))
            raise

    worker = JobWorker(engine, {kind: long_work}, lease=timedelta(seconds=0.3), name="slow")
    run = asyncio.create_task(worker.run_due())
    async with asyncio.timeout(WAIT):
        await running.wait()
    # Another worker whose clock says the lease ran out takes the job over.
    later = datetime.now(UTC) + timedelta(hours=1)
    lease = timedelta(hours=2)
    (taken,) = await jobs.claim(engine, {kind}, limit=1, worker="b", lease=lease, now=later)
    async with asyncio.timeout(WAIT):
        await run

    assert outcome == ["the worker lost the job's lease"]
    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("running", 2, "b")
    assert taken.attempt == 2


@pytest.fixture
async def second_engine(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """Another engine (its own connections) on the same database, as another process has."""
    other = create_engine(engine.url.render_as_string(hide_password=False))
    yield other
    await other.dispose()


async def test_two_workers_never_run_one_job_at_once(
    engine: AsyncEngine, second_engine: AsyncEngine
) -> None:
    kind = new_kind()
    now = datetime.now(UTC)
    ids = {await add(engine, kind, now, payload={"i": i}) for i in range(40)}
    runs: dict[str, list[str]] = {job_id: [] for job_id in ids}
    active: set[str] = set()
    overlaps: list[str] = []

    def handler_for(name: str) -> jobs.JobHandler:
        async def handler(job: Job) -> None:
            if job.id in active:
                overlaps.append(job.id)
            active.add(job.id)
            runs[job.id].append(name)
            await asyncio.sleep(0.005)
            active.discard(job.id)

        return handler

    workers = [
        JobWorker(engine, {kind: handler_for("a")}, concurrency=4, poll_interval=0.02, name="a"),
        JobWorker(
            second_engine, {kind: handler_for("b")}, concurrency=4, poll_interval=0.02, name="b"
        ),
    ]
    for worker in workers:
        worker.start()

    async def all_done() -> bool:
        async with engine.connect() as conn:
            query = select(func.count()).where(
                jobs_table.c.kind == kind, jobs_table.c.state == "succeeded"
            )
            return int((await conn.execute(query)).scalar_one()) == len(ids)

    try:
        await wait_until(all_done, "every job succeeding")
    finally:
        for worker in workers:
            await worker.stop(grace=WAIT)
    assert overlaps == []
    assert {job_id: len(names) for job_id, names in runs.items()} == dict.fromkeys(ids, 1)


async def test_a_job_locked_by_one_claimer_is_skipped_by_another_without_waiting(
    engine: AsyncEngine, second_engine: AsyncEngine
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: a second claimer waits for the first")
    kind, clock = new_kind(), epoch()
    first = await add(engine, kind, clock())
    second = await add(engine, kind, clock() + timedelta(seconds=1))
    clock.advance(2)
    lease = timedelta(seconds=60)
    async with write_transaction(engine) as conn:
        # An open claim transaction holding the oldest job's row lock.
        query = select(jobs_table.c.id).where(jobs_table.c.id == first).with_for_update()
        await conn.execute(query)
        async with asyncio.timeout(WAIT):
            taken = await jobs.claim(
                second_engine, {kind}, limit=2, worker="b", lease=lease, now=clock()
            )
    assert [job.id for job in taken] == [second]


async def test_a_unique_key_makes_one_job(engine: AsyncEngine) -> None:
    kind, clock = new_kind(), epoch()
    key = f"{kind}:once"
    first = await add(engine, kind, clock(), unique_key=key)
    again = await add(engine, kind, clock(), unique_key=key, payload={"other": True})
    assert again == first
    async with engine.connect() as conn:
        query = select(func.count()).where(jobs_table.c.kind == kind)
        assert (await conn.execute(query)).scalar_one() == 1


@pytest.mark.parametrize(
    ("kind", "payload", "options", "message"),
    [
        ("", {}, {}, "job kind"),
        ("Bad Kind", {}, {}, "job kind"),
        ("x" * 65, {}, {}, "job kind"),
        ("test.ok", {"n": float("nan")}, {}, "not JSON"),
        ("test.ok", {"when": datetime(2001, 1, 1)}, {}, "not JSON"),
        ("test.ok", ["not", "an", "object"], {}, "JSON object"),
        ("test.ok", {}, {"max_attempts": 0}, "max_attempts"),
        ("test.ok", {}, {"unique_key": "k" * 201}, "unique_key"),
    ],
)
async def test_bad_jobs_are_refused_with_a_clear_error_and_store_nothing(
    engine: AsyncEngine, kind: str, payload: Any, options: dict[str, Any], message: str
) -> None:
    async def count() -> int:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(jobs_table))).scalar_one()
            )

    before = await count()
    with pytest.raises(ValueError, match=message):
        await add(engine, kind, datetime.now(UTC), payload=payload, **options)
    assert await count() == before


async def test_finished_jobs_go_after_the_retention_with_their_attempts(
    engine: AsyncEngine,
) -> None:
    kind, clock = new_kind(), epoch()
    done = await add(engine, kind, clock())
    waiting = await add(engine, kind, clock() + timedelta(days=30))

    async def handler(job: Job) -> None:
        pass

    assert await JobWorker(engine, {kind: handler}, clock=clock).run_due() == 1
    assert await jobs.delete_finished(engine, before=clock()) == 0  # not yet past it
    assert await jobs.delete_finished(engine, before=clock() + timedelta(seconds=1)) >= 1
    async with engine.connect() as conn:
        left = (await conn.execute(select(jobs_table.c.id).where(jobs_table.c.kind == kind))).all()
        attempts = await conn.execute(select(func.count()).where(job_attempts.c.job_id == done))
        assert attempts.scalar_one() == 0
    assert [row.id for row in left] == [waiting]


async def test_a_handler_raising_retry_at_is_due_again_when_it_said(engine: AsyncEngine) -> None:
    kind, clock = new_kind(), epoch()
    job_id = await add(engine, kind, clock(), max_attempts=2)
    later = clock() + timedelta(minutes=7)

    async def handler(job: Job) -> None:
        raise jobs.RetryAt(later, "the endpoint asked for 7 minutes")

    worker = JobWorker(engine, {kind: handler}, clock=clock, rand=lambda: 0.0)
    assert await worker.run_due() == 1
    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"]) == ("queued", 1)
    assert row["run_after"].replace(tzinfo=UTC) == later  # not the worker's backoff
    assert await attempts_of(engine, job_id) == [
        (1, worker.name, "failed", "the endpoint asked for 7 minutes")
    ]
    clock.advance(7 * 60 - 1)
    assert await worker.run_due() == 0
    clock.advance(1)
    assert await worker.run_due() == 1
    # Its second attempt was its last allowed one: the handler's time does not keep it.
    row = await job_row(engine, job_id)
    assert (row["state"], row["attempts"]) == ("failed", 2)


async def test_enqueue_many_adds_one_job_per_payload_in_order_or_none(
    engine: AsyncEngine,
) -> None:
    kind, clock = new_kind(), epoch()
    tenant = str(uuid.uuid4())
    async with write_transaction(engine) as conn:
        ids = await jobs.enqueue_many(
            conn, kind, [{"n": n} for n in range(3)], now=clock(), tenant_id=tenant
        )
    seen: list[tuple[str, int, str | None]] = []

    async def handler(job: Job) -> None:
        seen.append((job.id, job.payload["n"], job.tenant_id))

    assert await JobWorker(engine, {kind: handler}, clock=clock).run_due() == 3
    assert sorted(seen) == sorted(zip(ids, range(3), [tenant] * 3, strict=True))

    with pytest.raises(ValueError, match="not JSON"):
        async with write_transaction(engine) as conn:
            await jobs.enqueue_many(conn, kind, [{"n": 4}, {"n": float("inf")}], now=clock())
    async with engine.connect() as conn:
        query = select(func.count()).where(jobs_table.c.kind == kind)
        assert (await conn.execute(query)).scalar_one() == 3


async def test_wake_runs_a_new_job_without_waiting_for_the_next_poll(engine: AsyncEngine) -> None:
    kind = new_kind()
    ran: list[int] = []
    second = asyncio.Event()

    async def handler(job: Job) -> None:
        ran.append(int(job.payload["n"]))
        if len(ran) == 2:
            second.set()

    # A poll interval far longer than the test: once the worker has found nothing more to
    # do it sleeps, and only wake() brings it back in time.
    worker = JobWorker(engine, {kind: handler}, poll_interval=3600)
    await add(engine, kind, datetime.now(UTC), payload={"n": 1})
    worker.start()
    try:
        await wait_until(lambda: _ran(ran, 1), "the first job")
        await add(engine, kind, datetime.now(UTC), payload={"n": 2})
        worker.wake()
        async with asyncio.timeout(WAIT):
            await second.wait()
    finally:
        await worker.stop(5)
    assert ran == [1, 2]


async def _ran(ran: list[int], count: int) -> bool:
    return len(ran) >= count


async def test_a_database_error_without_text_is_logged_and_the_worker_keeps_polling(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A TimeoutError raised while claiming (e.g. a pool checkout timing out) has no text:
    # the warning names its type, and the loop goes on to the next poll.
    worker = JobWorker(engine, {new_kind(): lambda job: asyncio.sleep(0)}, poll_interval=0.01)
    passes = 0
    polled_again = asyncio.Event()

    async def failing_claim() -> list[asyncio.Task[None]]:
        nonlocal passes
        passes += 1
        if passes == 1:
            raise TimeoutError()
        polled_again.set()
        return []

    monkeypatch.setattr(worker, "_claim", failing_claim)
    with caplog.at_level("WARNING", logger="service_kit.job_worker"):
        worker.start()
        async with asyncio.timeout(WAIT):
            await polled_again.wait()
        await worker.stop(grace=WAIT)
    warnings = [r for r in caplog.records if "cannot reach the database" in r.getMessage()]
    assert [getattr(r, "error", None) for r in warnings] == ["TimeoutError"]
