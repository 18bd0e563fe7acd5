"""Wiring of the gateway process: the channel and event services (``keel.channels.v1``,
``keel.events.v1``).

ChannelService is implemented (chat store, event relay, the bridges' Connect
hub); EventService is registered so reflection shows it, and answers
UNIMPLEMENTED until the events issue lands. The policies below apply to both.
"""

from __future__ import annotations

import grpc
from keel.channels.v1 import channels_pb2_grpc
from keel.events.v1 import events_pb2_grpc

from gateway_bridge.chat import ChatLimits, ChatService
from gateway_bridge.connect import ConnectHub
from gateway_bridge.relay import EventRelay
from gateway_bridge.servicer import ChannelServicer
from gateway_bridge.store import SqlChatStore
from gateway_bridge.tokens import ClientTokens
from service_kit.interceptor import PEER, tenant_scope
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
    settings = runtime.settings
    if not settings.token_secret:
        raise RuntimeError("the gateway needs KEEL_TOKEN_SECRET to sign client tokens")
    store = SqlChatStore(runtime.engine)
    relay = EventRelay(store, runtime.bus)
    hub = ConnectHub(store, runtime.bus)
    chat = ChatService(
        store,
        relay,
        ClientTokens(settings.token_secret, previous=settings.token_secret_previous),
        limits=ChatLimits(max_message_bytes=settings.max_message_bytes),
    )
    servicer = ChannelServicer(chat, hub)

    def register(server: grpc.aio.Server) -> None:
        channels_pb2_grpc.add_ChannelServiceServicer_to_server(servicer, server)

    async def start() -> None:
        await hub.start()
        relay.start()

    async def stop() -> None:
        await relay.close()
        await hub.close()

    return [
        ServiceSpec(
            name=CHANNEL_SERVICE,
            register=register,
            default_policy=WRITE,
            # Connect carries many tenants' subscriptions for one bridge process.
            policies={**dict.fromkeys(_CHANNEL_READS, READ), "Connect": PEER},
            on_start=start,
            on_stop=stop,
        ),
        unimplemented_spec(
            EVENT_SERVICE,
            events_pb2_grpc.add_EventServiceServicer_to_server,
            events_pb2_grpc.EventServiceServicer,
            WRITE,
            dict.fromkeys(_EVENT_READS, READ),
        ),
    ]
