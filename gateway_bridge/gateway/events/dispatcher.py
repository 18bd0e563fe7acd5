"""Webhook delivery: from the event log to tenants' HTTP endpoints, signed and retried.

Every gateway process runs a dispatcher. Its *fan-out* loop turns new events of the
log into delivery rows for the webhooks that select them, each with its job on the
kit's durable queue (:mod:`gateway_bridge.gateway.events.store.delivery_jobs`). Its
:class:`~service_kit.job_worker.JobWorker` claims those jobs (row locks on
PostgreSQL keep gateways from taking the same one; a lease of the attempt timeout
plus 30 s, kept while the attempt runs, makes a crashed gateway's jobs due again)
and makes one attempt per claim (:meth:`Dispatcher.deliver`): POST with Standard
Webhooks signatures, and record it on the delivery. 2xx succeeds; 410 disables the
endpoint; anything else — a destination the outbound guard refuses included — is
retried on the webhook schedule (honouring ``Retry-After`` on 429 and 503), which the
job follows (:class:`~service_kit.jobs.RetryAt`), until it is used up. Everything is
in the database, so a restart of any process loses nothing.

Every POST goes through :class:`service_kit.outbound.OutboundHttp`, which resolves
the host once, checks every address and connects to the address it checked. The
body of a delivery is the same bytes on every attempt (:func:`body_of`); only the
``webhook-timestamp`` header and the signature over it change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from keel.webhooks import sign
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway_bridge.gateway.events.store import DELIVERY_JOB, DueDelivery, SqlEventStore
from gateway_bridge.gateway.events.webhooks import Attempt, next_attempt, parse_retry_after
from service_kit.clock import rfc3339
from service_kit.job_worker import JobWorker
from service_kit.jobs import Job, RetryAt
from service_kit.outbound import OutboundError, OutboundHttp

log = logging.getLogger(__name__)

USER_AGENT: Final = "Keel-Webhooks/1"


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """How a gateway delivers webhooks: the retry schedule (seconds after each failed
    attempt), the attempt timeout, whether private addresses may be reached, failures in
    a row before a webhook is disabled, how long the event log keeps events, attempts
    at once, how often the fan-out and the job worker look for work, and how long past
    the attempt timeout a job stays leased to a gateway that stopped answering."""

    retry_schedule: Sequence[float]
    timeout_seconds: float = 15.0
    allow_private: bool = False
    disable_after_failures: int = 100
    retention: timedelta = timedelta(days=7)
    concurrency: int = 20
    interval: float = 0.5
    #: A job is leased for the attempt timeout plus this (KEEL_JOB_LEASE_MARGIN_SECONDS).
    lease_margin_seconds: float = 30.0


def body_of(payload: Mapping[str, Any], created_at: datetime) -> bytes:
    """The request body: the seed's ``{"event", "data", "timestamp"}`` plus ids and seq.

    A function of the stored delivery alone, so every attempt sends the same bytes:
    ``timestamp`` is the event's own time when the payload carries it, else the
    delivery's ``created_at`` (when it was queued) — never the attempt's time.
    """
    body = dict(payload)
    body.setdefault("timestamp", rfc3339(created_at))
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class Dispatcher:
    """Runs the fan-out and retention loops, and the job worker that attempts deliveries,
    of one gateway process."""

    def __init__(
        self, store: SqlEventStore, engine: AsyncEngine, settings: DispatchSettings
    ) -> None:
        self._store = store
        self._settings = settings
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._http: OutboundHttp | None = None
        self._worker = JobWorker(
            engine,
            {DELIVERY_JOB: self.deliver},
            concurrency=settings.concurrency,
            # An attempt ends within the timeout, so a lease never runs out under a live
            # attempt even if it cannot be extended; a dead gateway's jobs wait this long.
            lease=timedelta(seconds=settings.timeout_seconds + settings.lease_margin_seconds),
            poll_interval=settings.interval,
        )

    def start(self) -> None:
        self._http = OutboundHttp(
            allow_private=self._settings.allow_private,
            timeout_seconds=self._settings.timeout_seconds,
            user_agent=USER_AGENT,
        )
        self._tasks = [
            asyncio.create_task(self._fan_out(), name="webhook-fan-out"),
            asyncio.create_task(self._retention(), name="event-retention"),
        ]
        self._worker.start()

    def wake(self) -> None:
        """New events or deliveries: look now rather than at the next interval."""
        self._wake.set()
        self._worker.wake()

    async def close(self) -> None:
        """Stop: let the loops finish the pass they are in (a pass cancelled in the middle
        of a database write would leave SQLite's write lock held) and the attempts under
        way finish (an attempt not yet started goes back to the queue, due at once)."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        grace = self._settings.timeout_seconds + 5
        await self._worker.stop(grace)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._http is not None:
            await self._http.close()

    async def _fan_out(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                handled = await self._store.fan_out()
            except Exception:
                log.warning("webhook fan-out pass failed; retrying", exc_info=True)
                handled = 0
            if handled:
                self._worker.wake()  # their deliveries are due now
                continue
            if not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._settings.interval)
                except TimeoutError:
                    pass

    async def deliver(self, job: Job) -> None:
        """The handler of :data:`DELIVERY_JOB`: one attempt of the job's delivery, if it
        is still to be attempted (see :meth:`SqlEventStore.take`).

        Raises :class:`RetryAt` with the schedule's time when the attempt failed and
        the delivery stays pending, or when the delivery is not due yet (its job came
        back early: the lease of a gateway that died after recording an attempt)."""
        due = await self._store.take(str(job.payload["delivery_id"]))
        if due is None:
            return
        next_at = due.delivery.next_attempt_at
        if next_at is not None and next_at > datetime.now(UTC):
            raise RetryAt(next_at, "the delivery's next attempt is not due yet")
        await job.checkpoint()  # stopping, or the lease lost: leave the attempt to others
        retry_at, error = await self._attempt(due)
        if retry_at is not None:
            raise RetryAt(retry_at, error)

    async def _attempt(self, due: DueDelivery) -> tuple[datetime | None, str]:
        """One POST of one delivery, recorded whatever happens; when to try again (None:
        never, the delivery is settled) and why."""
        assert self._http is not None
        started = datetime.now(UTC)
        timestamp = int(time.time())
        body = body_of(due.delivery.payload, due.delivery.created_at)
        headers = {
            "content-type": "application/json",
            "webhook-id": due.delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(due.secrets, due.delivery.event_id, timestamp, body),
        }
        status, error, retry_after, disable = 0, "", None, ""
        clock = time.perf_counter()
        try:
            response = await self._http.post(due.url, body=body, headers=headers)
        except OutboundError as exc:
            error = exc.message
        else:
            status = response.status
            if status in (429, 503):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 410:
                disable = "the endpoint answered 410 Gone"
            elif not 200 <= status < 300:
                error = f"HTTP {status}"
        latency_ms = int((time.perf_counter() - clock) * 1000)
        succeeded = 200 <= status < 300
        attempts_made = due.delivery.attempt_count + 1
        retry_at = (
            None
            if succeeded or disable
            else next_attempt(
                self._settings.retry_schedule, attempts_made, datetime.now(UTC), retry_after
            )
        )
        recorded = await self._store.record_attempt(
            due,
            Attempt(started, status, latency_ms, error or disable),
            succeeded=succeeded,
            next_attempt_at=retry_at,
            disable_reason=disable,
            disable_after_failures=self._settings.disable_after_failures,
        )
        return (retry_at if recorded else None), error

    async def _retention(self) -> None:
        while not self._stopping:
            try:
                removed = await self._store.prune(datetime.now(UTC) - self._settings.retention)
                if removed:
                    log.info("removed old events", extra={"count": removed})
            except Exception:
                log.warning("event retention pass failed", exc_info=True)
            try:
                await asyncio.wait_for(self._stopped.wait(), 60)
            except TimeoutError:
                pass
