"""Wiring of the gateway process: the channel and event services (``keel.channels.v1``,
``keel.events.v1``).

Both APIs are registered so ``grpcurl list``/``describe`` show them; their
methods answer UNIMPLEMENTED until the channels and events issues land. The
policies below already apply: the caller's credentials and scopes are checked
before UNIMPLEMENTED is returned.
"""

from __future__ import annotations

import grpc
from keel.channels.v1 import channels_pb2_grpc
from keel.events.v1 import events_pb2_grpc

from service_kit.interceptor import ADMIN, tenant_scope
from service_kit.server import Runtime, ServiceSpec, unimplemented_servicer

CHANNEL_SERVICE = "keel.channels.v1.ChannelService"
EVENT_SERVICE = "keel.events.v1.EventService"

READ = tenant_scope("chat:read")
WRITE = tenant_scope("chat:write")

_CHANNEL_READS = (
    "GetChannel",
    "ListChannels",
    "GetUser",
    "ListUsers",
    "ListMembers",
    "GetMessage",
    "ListMessages",
    "GetUnreadCounts",
)
_EVENT_READS = ("GetWebhook", "ListWebhooks", "ListDeliveries", "SubscribeEvents")


def build(runtime: Runtime) -> list[ServiceSpec]:
    """The gateway's services for the bootstrap to serve."""

    def register_channels(server: grpc.aio.Server) -> None:
        channels_pb2_grpc.add_ChannelServiceServicer_to_server(
            unimplemented_servicer(channels_pb2_grpc.ChannelServiceServicer), server
        )

    def register_events(server: grpc.aio.Server) -> None:
        events_pb2_grpc.add_EventServiceServicer_to_server(
            unimplemented_servicer(events_pb2_grpc.EventServiceServicer), server
        )

    return [
        ServiceSpec(
            name=CHANNEL_SERVICE,
            register=register_channels,
            default_policy=WRITE,
            # Connect carries many tenants' subscriptions for one bridge process.
            policies={**dict.fromkeys(_CHANNEL_READS, READ), "Connect": ADMIN},
        ),
        ServiceSpec(
            name=EVENT_SERVICE,
            register=register_events,
            default_policy=WRITE,
            policies=dict.fromkeys(_EVENT_READS, READ),
        ),
    ]
