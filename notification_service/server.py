"""Wiring of ``keel.notifications.v1.NotificationService``: store, recipients (the
gateway), senders, service, servicer, the spec the bootstrap serves, and the handlers
of the delivery jobs its process runs.

Every method needs ``send:basic`` (which ``send:*`` grants); changing the tenant's
settings needs ``send:*``; ``Unsubscribe`` needs the peer token (the bridge calls it when
an email's link is followed). What ``send:basic`` may not do besides is checked by the
service (:mod:`notification_service.service`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from keel.notifications.v1 import notifications_pb2_grpc

from notification_service.deliveries import DeliveryJobs, DeliveryOptions, Senders
from notification_service.errors import BASIC_SCOPE, FULL_SCOPE
from notification_service.live import BusLivePublisher
from notification_service.recipients import GatewayRecipients
from notification_service.senders import unsubscribe
from notification_service.senders.base import Mailer, PushSender, WebhookSender
from notification_service.senders.email import SmtpMailer, SmtpMailerPool
from notification_service.senders.push import WebPushSender, generate_vapid_keys
from notification_service.senders.webhook import HttpWebhookSender
from notification_service.service import NotificationService, SendingOptions
from notification_service.servicer import NotificationServicer, TokenReader
from notification_service.store import SqlNotificationStore
from service_kit.clock import Clock, utcnow
from service_kit.config import Settings
from service_kit.interceptor import PEER, tenant_scope
from service_kit.jobs import JobHandler
from service_kit.outbound import OutboundHttp
from service_kit.server import Runtime, ServiceSpec
from service_kit.tls import http_scheme

SERVICE_NAME = "keel.notifications.v1.NotificationService"
#: SMTP connections a process sends over at once (each reused).
SMTP_CONNECTIONS = 4
USER_AGENT = "Keel-Notifications/1"


@dataclass(frozen=True)
class NotificationServer:
    """The built service: its spec for the server, the service for in-process callers, and
    the handlers of the jobs its process runs (for a
    :class:`~service_kit.job_worker.JobWorker` with ``settings.notifications.concurrency``)."""

    spec: ServiceSpec
    service: NotificationService
    job_handlers: Mapping[str, JobHandler]


def build(
    runtime: Runtime,
    *,
    gateway_addr: str | Callable[[], str | None] | None = None,
    mailer: Mailer | None = None,
    push: PushSender | None = None,
    webhook: WebhookSender | None = None,
    clock: Clock = utcnow,
    on_jobs_enqueued: Callable[[], None] = lambda: None,
) -> NotificationServer:
    """Everything needed to serve ``keel.notifications.v1.NotificationService`` here.

    ``gateway_addr``: the gateway's ``HOST:PORT`` (or a function giving it once the
    process listens, for ``keel serve all``); ``KEEL_GATEWAY_ADDR`` by default.
    ``mailer``, ``push``, ``webhook``: the senders; by default SMTP (when
    ``KEEL_SMTP_URL`` is set), Web Push and webhooks through the outbound guard.
    ``on_jobs_enqueued``: called when a send committed deliveries due at once (the
    process wakes the job worker of ``job_handlers`` with it).
    """
    settings = runtime.settings
    notifications = settings.notifications
    store = SqlNotificationStore(runtime.engine)
    address = gateway_addr if gateway_addr is not None else settings.gateway_addr
    recipients = GatewayRecipients(
        address if callable(address) else lambda: address,
        settings.peer_token or settings.admin_token,
        tls=settings.tls,
    )
    http: OutboundHttp | None = None
    if push is None or webhook is None:
        http = OutboundHttp(
            allow_private=settings.webhook_allow_private,
            timeout_seconds=notifications.timeout_seconds,
            user_agent=USER_AGENT,
        )
        push = push or WebPushSender(http)
        webhook = webhook or HttpWebhookSender(http)
    own_mailer = mailer is None and notifications.smtp_url is not None
    if own_mailer and notifications.smtp_url:
        mailer = SmtpMailerPool(
            [
                SmtpMailer(notifications.smtp_url, timeout_seconds=notifications.timeout_seconds)
                for _ in range(SMTP_CONNECTIONS)
            ]
        )
    service = NotificationService(
        store,
        recipients,
        BusLivePublisher(runtime.bus),
        options=SendingOptions(
            max_attempts=notifications.max_attempts,
            smtp_configured=mailer is not None,
            push_available=True,
            webhook_available=True,
            allow_private=settings.webhook_allow_private,
        ),
        new_vapid_keys=lambda: _vapid_keys(notifications.vapid_subject),
        clock=clock,
        on_jobs_enqueued=on_jobs_enqueued,
    )
    jobs = DeliveryJobs(
        store,
        service,
        Senders(mailer, push, webhook),
        DeliveryOptions(
            default_from=notifications.smtp_from,
            timeout_seconds=notifications.timeout_seconds,
            vapid_subject=notifications.vapid_subject,
            max_attempts=notifications.max_attempts,
            unsubscribe_links=_unsubscribe_links(settings),
        ),
        clock=clock,
    )
    servicer = NotificationServicer(service, read_unsubscribe_token=_token_reader(settings))

    def register(server: grpc.aio.Server) -> None:
        notifications_pb2_grpc.add_NotificationServiceServicer_to_server(servicer, server)

    async def stop() -> None:
        await recipients.close()
        if own_mailer and mailer is not None:
            await mailer.close()
        if http is not None:
            await http.close()

    spec = ServiceSpec(
        name=SERVICE_NAME,
        register=register,
        default_policy=tenant_scope(BASIC_SCOPE),
        policies={"UpdateTenantSettings": tenant_scope(FULL_SCOPE), "Unsubscribe": PEER},
        on_stop=stop,
    )
    return NotificationServer(spec, service, jobs.handlers())


def _vapid_keys(subject: str) -> tuple[str, str]:
    keys = generate_vapid_keys(subject)
    return keys.private_pem, keys.public_key


def _public_url(settings: Settings) -> str:
    """Where browsers reach the bridge's HTTP port (the unsubscribe links point there)."""
    return settings.notifications.public_url or f"{http_scheme(settings.tls)}://{settings.ws_addr}"


def _unsubscribe_links(settings: Settings) -> Callable[[str, str, str], str] | None:
    secret = settings.token_secret
    if not secret:
        return None
    base = _public_url(settings)

    def link(tenant_id: str, user_id: str, category: str) -> str:
        token = unsubscribe.make_token(secret, tenant_id, user_id, category)
        return unsubscribe.unsubscribe_url(base, token)

    return link


def _token_reader(settings: Settings) -> TokenReader | None:
    secrets = [s for s in (settings.token_secret, settings.token_secret_previous) if s]
    if not secrets:
        return None

    def read(token: str) -> tuple[str, str, str]:
        claim = unsubscribe.read_token(secrets, token)
        return claim.tenant_id, claim.user_id, claim.category

    return read
