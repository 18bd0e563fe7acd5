"""The event service's operations: webhooks (with their rules) and event subscriptions.

The servicer converts protobuf; this module validates, checks where a webhook
may point, makes secrets, and reads the event log for subscriptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from keel.webhooks import new_secret

from gateway_bridge.gateway.events.errors import InvalidWebhook
from gateway_bridge.gateway.events.store import Cursor, SqlEventStore
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
    matches,
    raise_violations,
)
from gateway_bridge.gateway.outbox import ChatEvent
from gateway_bridge.vocabulary import CHAT_EVENTS_TOPIC
from service_kit.bus import EventBus, Subscription
from service_kit.errors import FailedPrecondition
from service_kit.validation import Violations, is_uuid, new_id

MAX_GRACE_SECONDS = 7 * 86_400
DEFAULT_GRACE_SECONDS = 86_400
MAX_REPLAY = 10_000
_PAGE = 500


def encode_cursor(cursor: Cursor) -> str:
    """An event's position in the log, as SubscribeEvents hands it out."""
    return f"{cursor[0]}-{cursor[1]}"


def decode_cursor(text: str) -> Cursor:
    """The position :func:`encode_cursor` wrote; INVALID_ARGUMENT for anything else."""
    txid, _, event_id = text.partition("-")
    if not (txid.isdigit() and event_id.isdigit()):
        raise InvalidWebhook.for_field("after", "is not a cursor this API returned")
    return int(txid), int(event_id)


class EventService:
    """Webhooks and event subscriptions for tenants."""

    def __init__(
        self,
        store: SqlEventStore,
        bus: EventBus,
        *,
        allow_private: bool,
        wake_dispatcher: Any = None,
        poll_interval: float = 1.0,
    ) -> None:
        self._store = store
        self._bus = bus
        self._allow_private = allow_private
        self._wake_dispatcher = wake_dispatcher or (lambda: None)
        self._poll = poll_interval
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(CHAT_EVENTS_TOPIC, self._on_event)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()

    def _on_event(self, payload: bytes) -> None:
        # The dispatcher is not woken here: it looks at the log twice a second, and a
        # pass per chat event would cost more than it saves.
        tenant_id = ChatEvent.decode(payload).tenant_id
        for waiter in self._waiters.get(tenant_id, ()):
            waiter.set()

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

    async def subscribe(
        self,
        tenant_id: str,
        *,
        events: Sequence[str],
        channel_ids: Sequence[str],
        after: str,
    ) -> AsyncIterator[tuple[str, ChatEvent]]:
        """The tenant's events in commit order, from after the cursor (or from now), live
        and without end; each with its cursor. Raises OUT_OF_RANGE for a cursor older
        than the log keeps."""
        v = Violations()
        if events:
            check_filters(v, events, channel_ids)
        for i, channel_id in enumerate(channel_ids):
            v.check(is_uuid(channel_id), f"channel_ids[{i}]", "is not a valid id")
        raise_violations(v)
        cursor = decode_cursor(after) if after else await self._store.head(tenant_id)
        wanted_channels = set(channel_ids)
        waiter = asyncio.Event()
        self._waiters.setdefault(tenant_id, set()).add(waiter)
        try:
            while True:
                waiter.clear()
                batch = await self._store.events_after(tenant_id, cursor, limit=_PAGE)
                for position, event in batch:
                    cursor = position
                    if wanted_channels and event.channel_id not in wanted_channels:
                        continue
                    if events and not matches(events, event.name):
                        continue
                    yield encode_cursor(position), event
                if len(batch) < _PAGE:
                    try:
                        await asyncio.wait_for(waiter.wait(), self._poll)
                    except TimeoutError:
                        pass
        finally:
            waiters = self._waiters.get(tenant_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[tenant_id]
