"""Wiring of the gateway process: the channel and event services (``keel.channels.v1``,
``keel.events.v1``).

Both APIs are registered so ``grpcurl list``/``describe`` show them; their
methods answer UNIMPLEMENTED until the channels and events issues land. The
policies below already apply: the caller's credentials and scopes are checked
before UNIMPLEMENTED is returned.
"""

from __future__ import annotations

from keel.channels.v1 import channels_pb2_grpc
from keel.events.v1 import events_pb2_grpc

from service_kit.interceptor import ADMIN, tenant_scope
from service_kit.server import Runtime, ServiceSpec, unimplemented_spec

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
    return [
        unimplemented_spec(
            CHANNEL_SERVICE,
            channels_pb2_grpc.add_ChannelServiceServicer_to_server,
            channels_pb2_grpc.ChannelServiceServicer,
            WRITE,
            # Connect carries many tenants' subscriptions for one bridge process.
            {**dict.fromkeys(_CHANNEL_READS, READ), "Connect": ADMIN},
        ),
        unimplemented_spec(
            EVENT_SERVICE,
            events_pb2_grpc.add_EventServiceServicer_to_server,
            events_pb2_grpc.EventServiceServicer,
            WRITE,
            dict.fromkeys(_EVENT_READS, READ),
        ),
    ]
