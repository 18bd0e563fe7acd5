"""Webhook delivery: from the event log to tenants' HTTP endpoints, signed and retried.

Two loops run in every gateway process. The *fan-out* turns new events of the
log into delivery rows for the webhooks that select them. The *sender* claims
due deliveries (row locks on PostgreSQL keep gateways from taking the same
ones; a lease makes a crashed sender's deliveries due again), POSTs them with
Standard Webhooks signatures, and records each attempt: 2xx succeeds; 410
disables the endpoint; anything else — a destination the outbound guard refuses
included — is retried on the schedule (honouring ``Retry-After`` on 429 and 503)
until it is used up. Everything is in the database, so a restart of any process
loses nothing.

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

from gateway_bridge.gateway.events.store import DueDelivery, SqlEventStore
from gateway_bridge.gateway.events.webhooks import Attempt, next_attempt, parse_retry_after
from service_kit.clock import rfc3339
from service_kit.outbound import OutboundError, OutboundHttp

log = logging.getLogger(__name__)

USER_AGENT: Final = "Keel-Webhooks/1"


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    retry_schedule: Sequence[float]
    timeout_seconds: float = 15.0
    allow_private: bool = False
    disable_after_failures: int = 100
    retention: timedelta = timedelta(days=7)
    concurrency: int = 20
    interval: float = 0.5


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
    """Runs the fan-out, sender and retention loops of one gateway process."""

    def __init__(self, store: SqlEventStore, settings: DispatchSettings) -> None:
        self._store = store
        self._settings = settings
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._http: OutboundHttp | None = None

    def start(self) -> None:
        self._http = OutboundHttp(
            allow_private=self._settings.allow_private,
            timeout_seconds=self._settings.timeout_seconds,
            user_agent=USER_AGENT,
        )
        self._tasks = [
            asyncio.create_task(self._loop(self._fan_out_pass), name="webhook-fan-out"),
            asyncio.create_task(self._loop(self._send_pass), name="webhook-sender"),
            asyncio.create_task(self._retention(), name="event-retention"),
        ]

    def wake(self) -> None:
        """New events or deliveries: look now rather than at the next interval."""
        self._wake.set()

    async def close(self) -> None:
        """Let each loop finish the pass it is in (a pass cancelled in the middle of a
        database write would leave SQLite's write lock held), then stop."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._settings.timeout_seconds + 5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._http is not None:
            await self._http.close()

    async def _loop(self, work: object) -> None:
        assert callable(work)
        while not self._stopping:
            try:
                busy = await work()
            except Exception:
                log.warning("webhook dispatcher pass failed; retrying", exc_info=True)
                busy = False
            if not busy and not self._stopping:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._settings.interval)
                except TimeoutError:
                    pass

    async def _fan_out_pass(self) -> bool:
        handled = await self._store.fan_out()
        if handled:
            self._wake.set()
        return handled > 0

    async def _send_pass(self) -> bool:
        lease = datetime.now(UTC) + timedelta(seconds=self._settings.timeout_seconds + 30)
        due = await self._store.claim_due(limit=self._settings.concurrency, lease_until=lease)
        if due:
            await asyncio.gather(*(self._attempt(d) for d in due))
        return len(due) == self._settings.concurrency

    async def _attempt(self, due: DueDelivery) -> None:
        """One POST of one delivery, recorded whatever happens."""
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
        await self._store.record_attempt(
            due,
            Attempt(started, status, latency_ms, error or disable),
            succeeded=succeeded,
            next_attempt_at=retry_at,
            disable_reason=disable,
            disable_after_failures=self._settings.disable_after_failures,
        )

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
