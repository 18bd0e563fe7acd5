"""Wiring of the gateway process: the channel and event services (``keel.channels.v1``,
``keel.events.v1``).

ChannelService: chat store, event relay, the bridges' Connect hub.
EventService: webhooks (their dispatcher runs here, with its own worker of the kit's job
queue for the deliveries' jobs) and event subscriptions, which the process's
authenticator checks again when their tenant changes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
from keel.channels.v1 import channels_pb2_grpc
from keel.events.v1 import events_pb2_grpc

from gateway_bridge.gateway.channels.attachment_links import AttachmentLinks
from gateway_bridge.gateway.channels.hub import ConnectHub
from gateway_bridge.gateway.channels.service import ChatLimits, ChatService
from gateway_bridge.gateway.channels.servicer import ChannelServicer
from gateway_bridge.gateway.channels.store import SqlChatStore
from gateway_bridge.gateway.events.access import StreamAuthorizer
from gateway_bridge.gateway.events.dispatcher import Dispatcher, DispatchSettings
from gateway_bridge.gateway.events.service import EventService
from gateway_bridge.gateway.events.servicer import EventServicer
from gateway_bridge.gateway.events.store import SqlEventStore
from gateway_bridge.gateway.relay import EventRelay
from service_kit import file_links
from service_kit.auth import Authenticator
from service_kit.client_tokens import ClientTokens
from service_kit.interceptor import PEER, tenant_scope
from service_kit.server import Runtime, ServiceSpec

CHANNEL_SERVICE = "keel.channels.v1.ChannelService"
EVENT_SERVICE = "keel.events.v1.EventService"

READ_SCOPE = "chat:read"
READ = tenant_scope(READ_SCOPE)
WRITE = tenant_scope("chat:write")

_CHANNEL_READS = (
    "GetChannel",
    "ListChannels",
    "GetUser",
    "ListUsers",
    "BatchGetUsers",
    "ListMembers",
    "GetMessage",
    "ListMessages",
    "GetUnreadCounts",
)
_EVENT_READS = ("GetWebhook", "ListWebhooks", "ListDeliveries", "SubscribeEvents")


def build(
    runtime: Runtime,
    *,
    authenticator: Authenticator | None = None,
    files_base_url: Callable[[], str] | None = None,
) -> list[ServiceSpec]:
    """The gateway's services for the bootstrap to serve.

    ``authenticator`` is the one the process's server authenticates tenants with: open
    event streams are checked again through it when their tenant changes (without it,
    they keep what they had at open). ``files_base_url`` answers the base URL of the file
    service's HTTP endpoints, under which the download URLs of attachments are signed; by
    default ``KEEL_FILES_PUBLIC_URL``, or ``http(s)://`` + ``KEEL_FILES_HTTP_ADDR``.
    """
    settings = runtime.settings
    if not settings.token_secret:
        raise RuntimeError("the gateway needs KEEL_TOKEN_SECRET to sign client tokens")
    store = SqlChatStore(runtime.engine)
    relay = EventRelay(store, runtime.bus)
    links = AttachmentLinks(
        settings.token_secret,
        base_url=files_base_url
        or (lambda: file_links.files_base_url(settings.files, https=settings.tls.enabled)),
        ttl=timedelta(seconds=settings.files.attachment_url_ttl_seconds),
    )
    hub = ConnectHub(store, runtime.bus, links=links)
    chat = ChatService(
        store,
        relay,
        ClientTokens(settings.token_secret, previous=settings.token_secret_previous),
        limits=ChatLimits(max_message_bytes=settings.max_message_bytes),
    )
    # The bridges' sends on their streams are admitted as the server admits a call.
    servicer = ChannelServicer(
        chat, hub, links, tenants=authenticator, rate_limiter=runtime.rate_limiter
    )
    event_store = SqlEventStore(runtime.engine)
    dispatcher = Dispatcher(
        event_store,
        runtime.engine,
        DispatchSettings(
            retry_schedule=settings.webhook_retry_schedule,
            timeout_seconds=settings.webhook_timeout_seconds,
            allow_private=settings.webhook_allow_private,
            disable_after_failures=settings.webhook_disable_after_failures,
            retention=timedelta(days=settings.event_retention_days),
            lease_margin_seconds=settings.job_lease_margin_seconds,
        ),
    )
    event_service = EventService(
        event_store,
        runtime.bus,
        allow_private=settings.webhook_allow_private,
        wake_dispatcher=dispatcher.wake,
        max_streams_per_tenant=settings.max_event_streams_per_tenant,
        authorizer=StreamAuthorizer(authenticator, scope=READ_SCOPE) if authenticator else None,
    )

    def register(server: grpc.aio.Server) -> None:
        channels_pb2_grpc.add_ChannelServiceServicer_to_server(servicer, server)

    def register_events(server: grpc.aio.Server) -> None:
        events_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(event_service), server)

    async def start() -> None:
        await hub.start()
        relay.start()

    async def stop() -> None:
        await relay.close()
        await hub.close()

    async def start_events() -> None:
        await event_service.start()
        dispatcher.start()

    async def stop_events() -> None:
        await dispatcher.close()
        await event_service.close()

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
        ServiceSpec(
            name=EVENT_SERVICE,
            register=register_events,
            default_policy=WRITE,
            policies=dict.fromkeys(_EVENT_READS, READ),
            on_start=start_events,
            on_stop=stop_events,
        ),
    ]
