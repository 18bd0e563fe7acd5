"""Wiring of ``keel.notifications.v1.NotificationService``.

Registered so the platform's whole API is visible; its methods answer
UNIMPLEMENTED (after authentication: every method needs ``send:basic``, which
``send:*`` grants) until the notifications issue lands.
"""

from __future__ import annotations

from keel.notifications.v1 import notifications_pb2_grpc

from service_kit.interceptor import tenant_scope
from service_kit.server import Runtime, ServiceSpec, unimplemented_spec

SERVICE_NAME = "keel.notifications.v1.NotificationService"


def build(runtime: Runtime) -> list[ServiceSpec]:
    """The notification service for the bootstrap to serve."""
    return [
        unimplemented_spec(
            SERVICE_NAME,
            notifications_pb2_grpc.add_NotificationServiceServicer_to_server,
            notifications_pb2_grpc.NotificationServiceServicer,
            tenant_scope("send:basic"),
        )
    ]
