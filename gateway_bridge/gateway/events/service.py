"""The event service's operations: webhooks (with their rules) and event subscriptions.

The servicer converts protobuf; this module validates, checks where a webhook
may point, makes secrets, and opens event streams. Every stream of the process is
fed by one reader of the event log (:mod:`.reader`), at most
``max_streams_per_tenant`` per tenant (:mod:`.streams`), and is checked again
whenever the tenant service announces a change of its tenant, or the bus
reconnects after it may have missed one (:mod:`.access`): a stream whose
credentials or scope no longer hold ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from keel.webhooks import new_secret

from gateway_bridge.gateway.events.access import StreamAccess, StreamAuthorizer
from gateway_bridge.gateway.events.errors import InvalidWebhook
from gateway_bridge.gateway.events.reader import PAGE, SharedLogReader
from gateway_bridge.gateway.events.store import Cursor, SqlEventStore
from gateway_bridge.gateway.events.streams import (
    DEFAULT_QUEUE_SIZE,
    EventStream,
    EventStreams,
    StreamFilter,
)
from gateway_bridge.gateway.events.webhooks import (
    MAX_DESCRIPTION,
    PING,
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookState,
    check_destination,
    check_filters,
    check_url,
    raise_violations,
)
from gateway_bridge.gateway.outbox import ChatEvent, decode_events
from gateway_bridge.vocabulary import CHAT_EVENTS_TOPIC
from service_kit.auth import TENANT_CHANGED_TOPIC
from service_kit.bus import EventBus, Subscription
from service_kit.errors import FailedPrecondition
from service_kit.validation import Violations, is_uuid, new_id

log = logging.getLogger(__name__)

MAX_GRACE_SECONDS = 7 * 86_400
DEFAULT_GRACE_SECONDS = 86_400
MAX_REPLAY = 10_000
DEFAULT_MAX_STREAMS_PER_TENANT = 10

#: What an event stream yields: an event's position in the log, and the event.
Positioned = tuple[Cursor, ChatEvent]


def encode_cursor(cursor: Cursor) -> str:
    """An event's position in the log, as SubscribeEvents hands it out."""
    return f"{cursor[0]}-{cursor[1]}"


def decode_cursor(text: str) -> Cursor:
    """The position :func:`encode_cursor` wrote; INVALID_ARGUMENT for anything else."""
    parts = text.partition("-")[::2]
    # ASCII digits only (isdigit alone takes '²'), each within the database's bigint.
    if not all(p.isascii() and p.isdigit() and len(p) <= 19 and int(p) < 2**63 for p in parts):
        raise InvalidWebhook.for_field("after", "is not a cursor this API returned")
    return int(parts[0]), int(parts[1])


class EventService:
    """Webhooks and event subscriptions for tenants.

    About 300 lines because it is the one face of the service: each method is a short
    validate-then-delegate step (to the store, the shared reader of ``reader.py``, the
    stream limits of ``streams.py`` and the access checks of ``access.py``)."""

    def __init__(
        self,
        store: SqlEventStore,
        bus: EventBus,
        *,
        allow_private: bool,
        wake_dispatcher: Any = None,
        poll_interval: float = 1.0,
        max_streams_per_tenant: int = DEFAULT_MAX_STREAMS_PER_TENANT,
        stream_queue_size: int = DEFAULT_QUEUE_SIZE,
        read_page: int = PAGE,
        authorizer: StreamAuthorizer | None = None,
    ) -> None:
        """``authorizer`` checks open streams again when their tenant changes; without one
        (a process that does not authenticate tenants) streams keep what they had.

        A stream's queue holds at least one read of the log (``read_page`` events): a
        stream that keeps up takes each read's events before the next read, so only one
        that falls behind overflows."""
        if stream_queue_size < read_page:
            raise ValueError("stream_queue_size must be at least read_page")
        self._store = store
        self._bus = bus
        self._allow_private = allow_private
        self._wake_dispatcher = wake_dispatcher or (lambda: None)
        self._streams = EventStreams(max_per_tenant=max_streams_per_tenant)
        self._reader = SharedLogReader(
            store, self._streams, poll_interval=poll_interval, page=read_page
        )
        self._queue_size = stream_queue_size
        self._authorizer = authorizer
        self._subscriptions: list[Subscription] = []
        self._checks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        self._subscriptions.append(await self._bus.subscribe(CHAT_EVENTS_TOPIC, self._on_event))
        if self._authorizer is not None:
            self._subscriptions.append(
                await self._bus.subscribe(TENANT_CHANGED_TOPIC, self._on_tenant_change)
            )
            self._bus.on_reconnect(self._on_bus_reconnect)
        self._reader.start()

    async def close(self) -> None:
        self._closed = True
        for subscription in self._subscriptions:
            await subscription.close()
        for task in list(self._checks):
            task.cancel()
        await self._reader.close()

    def _on_event(self, payload: bytes) -> None:
        # The dispatcher is not woken here: it looks at the log twice a second, and a
        # pass per chat event would cost more than it saves.
        for tenant_id in {event.tenant_id for event in decode_events(payload)}:
            self._reader.wake(tenant_id)

    # -- webhooks -----------------------------------------------------------------------

    async def create_webhook(
        self,
        tenant_id: str,
        *,
        url: str,
        events: Sequence[str],
        channel_ids: Sequence[str],
        description: str,
    ) -> tuple[Webhook, str]:
        v = Violations()
        check_url(v, url)
        check_filters(v, events, channel_ids)
        v.text("description", description, max_length=MAX_DESCRIPTION, required=False)
        raise_violations(v)
        await check_destination(url, allow_private=self._allow_private)
        secret = new_secret()
        webhook = await self._store.create_webhook(
            tenant_id,
            url=url,
            events_filter=list(events),
            channel_ids=list(channel_ids),
            description=description,
            secret=secret,
        )
        return webhook, secret

    async def get_webhook(self, tenant_id: str, webhook_id: str) -> Webhook:
        return await self._store.get_webhook(tenant_id, webhook_id)

    async def list_webhooks(
        self, tenant_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[Webhook]:
        return await self._store.list_webhooks(tenant_id, limit=limit, after=after)

    async def update_webhook(
        self,
        tenant_id: str,
        webhook_id: str,
        *,
        fields: Sequence[str],
        url: str,
        events: Sequence[str],
        channel_ids: Sequence[str],
        description: str,
        state: WebhookState | None,
    ) -> Webhook:
        v = Violations()
        allowed = {"url", "events", "channel_ids", "description", "state"}
        unknown = set(fields) - allowed
        v.check(
            bool(fields), "update_mask", f"list the fields to change: {', '.join(sorted(allowed))}"
        )
        v.check(not unknown, "update_mask", f"cannot change: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        if "url" in fields:
            check_url(v, url)
            values["url"] = url
        if "events" in fields or "channel_ids" in fields:
            current = await self._store.get_webhook(tenant_id, webhook_id)
            new_events = list(events) if "events" in fields else list(current.events)
            new_channels = (
                list(channel_ids) if "channel_ids" in fields else list(current.channel_ids)
            )
            check_filters(v, new_events, new_channels)
            values["events"], values["channel_ids"] = new_events, new_channels
        if "description" in fields:
            v.text("description", description, max_length=MAX_DESCRIPTION, required=False)
            values["description"] = description
        if "state" in fields:
            v.check(
                state in (WebhookState.ACTIVE, WebhookState.PAUSED),
                "webhook.state",
                "may be set to ACTIVE or PAUSED (Keel alone disables)",
            )
            if state is not None:
                values["state"] = state.value
                if state is WebhookState.ACTIVE:
                    values["disabled_reason"] = ""
                    values["consecutive_failures"] = 0
        raise_violations(v)
        if "url" in values:
            await check_destination(url, allow_private=self._allow_private)
        webhook = await self._store.update_webhook(tenant_id, webhook_id, values)
        self._wake_dispatcher()
        return webhook

    async def delete_webhook(self, tenant_id: str, webhook_id: str) -> None:
        await self._store.delete_webhook(tenant_id, webhook_id)

    async def rotate_secret(
        self, tenant_id: str, webhook_id: str, grace_seconds: int
    ) -> tuple[Webhook, str, datetime]:
        v = Violations()
        v.check(
            0 <= grace_seconds <= MAX_GRACE_SECONDS,
            "grace_period_seconds",
            f"must be between 0 (meaning {DEFAULT_GRACE_SECONDS}) and {MAX_GRACE_SECONDS}",
        )
        raise_violations(v)
        until = datetime.now(UTC) + timedelta(seconds=grace_seconds or DEFAULT_GRACE_SECONDS)
        secret = new_secret()
        webhook = await self._store.rotate_secret(tenant_id, webhook_id, secret, until)
        return webhook, secret, until

    async def test_webhook(self, tenant_id: str, webhook_id: str) -> Delivery:
        """Queue a ``ping`` event to an active webhook now."""
        webhook = await self._store.get_webhook(tenant_id, webhook_id)
        if webhook.state is not WebhookState.ACTIVE:
            raise FailedPrecondition(
                f"webhook {webhook.id!r} is {webhook.state.value}: set it active first"
            )
        delivery = await self._store.add_delivery(
            tenant_id,
            webhook.id,
            {
                "event": PING,
                "event_id": new_id(),
                "channel_id": "",
                "seq": 0,
                "data": {"webhook_id": webhook.id},
            },
        )
        self._wake_dispatcher()
        return delivery

    async def list_deliveries(
        self,
        tenant_id: str,
        webhook_id: str,
        *,
        status: DeliveryStatus | None,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Delivery]:
        return await self._store.list_deliveries(
            tenant_id, webhook_id, status=status, limit=limit, after=after
        )

    async def redeliver(self, tenant_id: str, delivery_id: str) -> Delivery:
        """Queue the delivery's event again (a new delivery, same ``webhook-id``)."""
        previous = await self._store.get_delivery(tenant_id, delivery_id)
        webhook = await self._store.get_webhook(tenant_id, previous.webhook_id)
        if webhook.state is not WebhookState.ACTIVE:
            raise FailedPrecondition(
                f"webhook {webhook.id!r} is {webhook.state.value}: set it active first"
            )
        delivery = await self._store.add_delivery(
            tenant_id, previous.webhook_id, dict(previous.payload)
        )
        self._wake_dispatcher()
        return delivery

    async def replay(self, tenant_id: str, webhook_id: str, since: datetime) -> int:
        count = await self._store.replay(tenant_id, webhook_id, since, limit=MAX_REPLAY)
        self._wake_dispatcher()
        return count

    # -- subscriptions ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        tenant_id: str,
        *,
        events: Sequence[str],
        channel_ids: Sequence[str],
        after: str,
        access: StreamAccess,
    ) -> AsyncIterator[AsyncIterator[Positioned]]:
        """Open an event stream; inside, it yields the tenant's events in commit order,
        from after the cursor (or from now), live and without end.

        Once it is open, every event committed later reaches it. Raises INVALID_ARGUMENT
        for bad filters or a malformed cursor, RESOURCE_EXHAUSTED when the tenant has
        the most streams open, UNAUTHENTICATED or PERMISSION_DENIED when ``access`` no
        longer holds, OUT_OF_RANGE for a cursor older than the log keeps; the events
        raise what the stream was ended with (:mod:`.streams`, :mod:`.access`).
        """
        v = Violations()
        if events:
            check_filters(v, events, channel_ids)
        for i, channel_id in enumerate(channel_ids):
            v.check(is_uuid(channel_id), f"channel_ids[{i}]", "is not a valid id")
        raise_violations(v)
        cursor = decode_cursor(after) if after else None
        wanted = StreamFilter(tuple(events), frozenset(channel_ids))
        stream = EventStream(tenant_id, wanted, access, queue_size=self._queue_size)
        self._streams.admit(stream)
        try:
            # Registered first, checked after: a change announced from now on re-checks
            # this stream, and one announced before has already reached the authenticator.
            if self._authorizer is not None:
                error = await self._authorizer.check(tenant_id, access)
                if error is not None:
                    raise error
            self._reader.wake(tenant_id)
            if cursor is None:
                stream.start = await self._store.start(tenant_id)
                stream.cursor = stream.start.cursor
            else:
                await self._store.check_cursor(cursor)
                stream.cursor = cursor
            async with contextlib.aclosing(self._reader.follow(stream)) as items:
                yield items
        finally:
            self._streams.release(stream)

    def _on_tenant_change(self, payload: bytes) -> None:
        tenant_id = payload.decode()
        if self._streams.of(tenant_id):
            self._spawn(self.recheck(tenant_id))

    def _on_bus_reconnect(self) -> None:
        # Announcements may have been missed while the bus was down.
        if not self._closed and self._streams.tenants():
            self._spawn(self.recheck(None))

    def _spawn(self, check: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(check)
        self._checks.add(task)
        task.add_done_callback(self._check_done)

    def _check_done(self, task: asyncio.Task[None]) -> None:
        self._checks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("re-checking event streams failed", exc_info=task.exception())

    async def recheck(self, tenant_id: str | None) -> None:
        """Check every open stream of ``tenant_id`` (of every tenant for None) again with
        the access it opened with; end the ones that no longer hold."""
        if self._authorizer is None:
            return
        self._authorizer.forget(tenant_id)
        tenants = self._streams.tenants() if tenant_id is None else [tenant_id]
        for tenant in tenants:
            by_access: dict[StreamAccess, list[EventStream]] = {}
            for stream in self._streams.of(tenant):
                by_access.setdefault(stream.access, []).append(stream)
            for access, streams in by_access.items():
                error = await self._authorizer.check(tenant, access)
                if error is not None:
                    fields = {"tenant_id": tenant, "streams": len(streams)}
                    log.info(
                        "ending event streams of a changed tenant",
                        extra={**fields, "code": error.code.name},
                    )
                    for stream in streams:
                        stream.end(error)
