"""Errors of the event service (webhooks, deliveries, event subscriptions).

Exception tree (each a kind of :mod:`service_kit.errors` error, which decides
its gRPC status)::

    KeelError
     ├── InvalidArgument
     │    └── InvalidWebhook           a field of a webhook or subscription request is malformed
     └── NotFound
          ├── WebhookNotFound          no such webhook in this tenant
          └── DeliveryNotFound         no such delivery in this tenant

A webhook URL that cannot be reached from outside, or whose webhook is not
active, is a plain :class:`service_kit.errors.FailedPrecondition`.
"""

from __future__ import annotations

from service_kit.errors import InvalidArgument, NotFound


class InvalidWebhook(InvalidArgument):
    """A field of a webhook or event-subscription request is malformed (the violations
    name which)."""


class WebhookNotFound(NotFound):
    """No webhook with this id in the caller's tenant (another tenant's ids included)."""

    def __init__(self, webhook_id: str) -> None:
        super().__init__(f"webhook {webhook_id!r} not found")


class DeliveryNotFound(NotFound):
    """No delivery with this id in the caller's tenant."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"delivery {delivery_id!r} not found")
