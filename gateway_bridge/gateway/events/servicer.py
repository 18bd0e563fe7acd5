"""``keel.events.v1.EventService``: protobuf in, :class:`EventService` call, protobuf out.

``SubscribeEvents`` sends its response headers as soon as the stream is open (before
any event), so a client knows from then on that every event committed later reaches
it; it writes with ``context.write`` so that a stream the client cancels is closed at
once (its slot under the per-tenant cap freed), not when a generator is collected.
"""

from __future__ import annotations

from datetime import UTC
from typing import TypeAlias

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from keel.events.v1 import events_pb2, events_pb2_grpc

from gateway_bridge.gateway.events.access import StreamAccess
from gateway_bridge.gateway.events.service import EventService, encode_cursor
from gateway_bridge.gateway.events.webhooks import (
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookState,
    raise_violations,
)
from service_kit.auth import credentials_from_metadata, current_tenant
from service_kit.interceptor import ACTING_FOR_TENANT
from service_kit.protobuf import timestamp
from service_kit.validation import (
    Violations,
    decode_time_position,
    page_size,
    time_page,
    valid_id,
)

Context: TypeAlias = grpc.aio.ServicerContext

STATES = {
    WebhookState.ACTIVE: events_pb2.WEBHOOK_STATE_ACTIVE,
    WebhookState.PAUSED: events_pb2.WEBHOOK_STATE_PAUSED,
    WebhookState.DISABLED: events_pb2.WEBHOOK_STATE_DISABLED,
}
STATES_BY_PROTO = {v: k for k, v in STATES.items()}
STATUSES = {
    DeliveryStatus.PENDING: events_pb2.DELIVERY_STATUS_PENDING,
    DeliveryStatus.SUCCEEDED: events_pb2.DELIVERY_STATUS_SUCCEEDED,
    DeliveryStatus.FAILED: events_pb2.DELIVERY_STATUS_FAILED,
}
STATUSES_BY_PROTO = {v: k for k, v in STATUSES.items()}


def _tenant() -> str:
    return current_tenant().tenant_id


def stream_access(context: Context) -> StreamAccess:
    """How the caller authenticated (the interceptor has checked it), to check it again."""
    metadata = {key: value for key, value in context.invocation_metadata() or ()}
    acting_for = metadata.get(ACTING_FOR_TENANT)
    if acting_for:
        return StreamAccess(acting_for=acting_for)
    return StreamAccess(credentials=credentials_from_metadata(metadata))


def webhook_to_proto(webhook: Webhook) -> events_pb2.Webhook:
    return events_pb2.Webhook(
        id=webhook.id,
        url=webhook.url,
        events=webhook.events,
        channel_ids=webhook.channel_ids,
        description=webhook.description,
        state=STATES[webhook.state],
        create_time=timestamp(webhook.created_at),
        update_time=timestamp(webhook.updated_at),
        disabled_reason=webhook.disabled_reason,
        consecutive_failures=webhook.consecutive_failures,
    )


def delivery_to_proto(delivery: Delivery) -> events_pb2.Delivery:
    attempts = []
    for attempt in delivery.attempts:
        latency = duration_pb2.Duration()
        latency.FromMilliseconds(attempt.latency_ms)
        attempts.append(
            events_pb2.Attempt(
                attempt_time=timestamp(attempt.attempt_time),
                status_code=attempt.status_code,
                latency=latency,
                error=attempt.error,
            )
        )
    return events_pb2.Delivery(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_id=delivery.event_id,
        event=delivery.event,
        status=STATUSES[delivery.status],
        attempts=attempts,
        next_attempt_time=timestamp(delivery.next_attempt_at),
        create_time=timestamp(delivery.created_at),
    )


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """The gRPC face of :class:`EventService`."""

    def __init__(self, service: EventService) -> None:
        self._service = service

    async def CreateWebhook(
        self, request: events_pb2.CreateWebhookRequest, context: Context
    ) -> events_pb2.CreateWebhookResponse:
        webhook, secret = await self._service.create_webhook(
            _tenant(),
            url=request.url,
            events=list(request.events),
            channel_ids=list(request.channel_ids),
            description=request.description,
        )
        return events_pb2.CreateWebhookResponse(webhook=webhook_to_proto(webhook), secret=secret)

    async def GetWebhook(
        self, request: events_pb2.GetWebhookRequest, context: Context
    ) -> events_pb2.GetWebhookResponse:
        webhook = await self._service.get_webhook(_tenant(), valid_id("id", request.id))
        return events_pb2.GetWebhookResponse(webhook=webhook_to_proto(webhook))

    async def ListWebhooks(
        self, request: events_pb2.ListWebhooksRequest, context: Context
    ) -> events_pb2.ListWebhooksResponse:
        limit = page_size(request.page_size)
        after = decode_time_position(request.page_token, query="webhooks")
        found = await self._service.list_webhooks(_tenant(), limit=limit + 1, after=after)
        page, token = time_page(found, limit, lambda x: (x.created_at, x.id), query="webhooks")
        return events_pb2.ListWebhooksResponse(
            webhooks=[webhook_to_proto(w) for w in page], next_page_token=token
        )

    async def UpdateWebhook(
        self, request: events_pb2.UpdateWebhookRequest, context: Context
    ) -> events_pb2.UpdateWebhookResponse:
        hook = request.webhook
        webhook = await self._service.update_webhook(
            _tenant(),
            valid_id("webhook.id", hook.id),
            fields=list(request.update_mask.paths),
            url=hook.url,
            events=list(hook.events),
            channel_ids=list(hook.channel_ids),
            description=hook.description,
            state=STATES_BY_PROTO.get(hook.state),
        )
        return events_pb2.UpdateWebhookResponse(webhook=webhook_to_proto(webhook))

    async def DeleteWebhook(
        self, request: events_pb2.DeleteWebhookRequest, context: Context
    ) -> events_pb2.DeleteWebhookResponse:
        await self._service.delete_webhook(_tenant(), valid_id("id", request.id))
        return events_pb2.DeleteWebhookResponse()

    async def RotateWebhookSecret(
        self, request: events_pb2.RotateWebhookSecretRequest, context: Context
    ) -> events_pb2.RotateWebhookSecretResponse:
        webhook, secret, until = await self._service.rotate_secret(
            _tenant(), valid_id("id", request.id), request.grace_period_seconds
        )
        return events_pb2.RotateWebhookSecretResponse(
            webhook=webhook_to_proto(webhook),
            secret=secret,
            previous_secret_expire_time=timestamp(until),
        )

    async def TestWebhook(
        self, request: events_pb2.TestWebhookRequest, context: Context
    ) -> events_pb2.TestWebhookResponse:
        delivery = await self._service.test_webhook(_tenant(), valid_id("id", request.id))
        return events_pb2.TestWebhookResponse(delivery=delivery_to_proto(delivery))

    async def ListDeliveries(
        self, request: events_pb2.ListDeliveriesRequest, context: Context
    ) -> events_pb2.ListDeliveriesResponse:
        webhook_id = valid_id("webhook_id", request.webhook_id)
        limit = page_size(request.page_size)
        query = f"deliveries:{webhook_id}:{request.status}"
        after = decode_time_position(request.page_token, query=query)
        found = await self._service.list_deliveries(
            _tenant(),
            webhook_id,
            status=STATUSES_BY_PROTO.get(request.status),
            limit=limit + 1,
            after=after,
        )
        page, token = time_page(found, limit, lambda x: (x.created_at, x.id), query=query)
        return events_pb2.ListDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in page], next_page_token=token
        )

    async def RedeliverEvent(
        self, request: events_pb2.RedeliverEventRequest, context: Context
    ) -> events_pb2.RedeliverEventResponse:
        delivery = await self._service.redeliver(
            _tenant(), valid_id("delivery_id", request.delivery_id)
        )
        return events_pb2.RedeliverEventResponse(delivery=delivery_to_proto(delivery))

    async def ReplayEvents(
        self, request: events_pb2.ReplayEventsRequest, context: Context
    ) -> events_pb2.ReplayEventsResponse:
        webhook_id = valid_id("webhook_id", request.webhook_id)
        v = Violations()
        v.check(request.HasField("since_time"), "since_time", "is required")
        raise_violations(v)
        since = request.since_time.ToDatetime(tzinfo=UTC)
        count = await self._service.replay(_tenant(), webhook_id, since)
        return events_pb2.ReplayEventsResponse(count=count)

    async def SubscribeEvents(  # type: ignore[override]  # writes; yields nothing
        self, request: events_pb2.SubscribeEventsRequest, context: Context
    ) -> None:
        opened = self._service.open_stream(
            _tenant(),
            events=list(request.events),
            channel_ids=list(request.channel_ids),
            after=request.after,
            access=stream_access(context),
        )
        async with opened as items:
            await context.send_initial_metadata(())
            async for position, event in items:
                data = struct_pb2.Struct()
                json_format.ParseDict(dict(event.data), data)
                await context.write(
                    events_pb2.SubscribeEventsResponse(
                        cursor=encode_cursor(position),
                        event=event.name,
                        channel_id=event.channel_id,
                        seq=event.seq,
                        data=data,
                        create_time=timestamp(event.created_at),
                        event_id=event.event_id,
                    )
                )
