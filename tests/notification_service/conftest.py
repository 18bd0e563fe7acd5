"""The notification service as ``keel serve all`` wires it: tenant service, gateway and
notification service in one real gRPC server on port 0 (the notification service checks
recipients with that server's own gateway), on SQLite and PostgreSQL; with recording
senders in place of SMTP, Web Push and webhooks, and the delivery jobs run by a real
:class:`~service_kit.job_worker.JobWorker` that the tests drive (``run_jobs``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.notifications.v1 import notifications_pb2 as pb
from keel.notifications.v1 import notifications_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from sqlalchemy import select

from gateway_bridge.gateway import server as gateway_server
from notification_service import server as notification_server
from notification_service.senders.base import (
    DeliveryFailed,
    NotificationContent,
    OutgoingEmail,
    PushTarget,
    VapidKeys,
)
from service_kit.auth import Authenticator
from service_kit.config import NotificationSettings
from service_kit.job_worker import JobWorker
from service_kit.jobs import Job, RetryPolicy
from service_kit.schema import jobs as jobs_table
from service_kit.server import KeelServer, Runtime, open_runtime
from tenant_service import server as tenant_server
from tests.conftest import ADMIN_TOKEN, settings_for, unique

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
Metadata = Sequence[tuple[str, str]]
#: Attempts of one delivery in these tests.
MAX_ATTEMPTS = 3


# -- recording senders -------------------------------------------------------------------


@dataclass
class RecordingMailer:
    """A Mailer that keeps what it is given; ``failures`` are raised first, in order."""

    sent: list[OutgoingEmail] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)
    calls: int = 0

    async def send(self, email: OutgoingEmail) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(email)

    async def close(self) -> None:
        pass


@dataclass
class RecordingPush:
    """A PushSender that keeps what it is given; ``failures`` are raised first."""

    sent: list[tuple[PushTarget, list[NotificationContent], VapidKeys]] = field(
        default_factory=list
    )
    failures: list[Exception] = field(default_factory=list)

    async def send(
        self,
        target: PushTarget,
        items: Sequence[NotificationContent],
        vapid: VapidKeys,
        *,
        ttl_seconds: int = 86400,
    ) -> int:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((target, list(items), vapid))
        return 201


@dataclass
class RecordingWebhook:
    """A WebhookSender that keeps what it is given; ``failures`` are raised first."""

    sent: list[tuple[str, str, str, list[NotificationContent]]] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)

    async def post(
        self, url: str, secret: str, message_id: str, items: Sequence[NotificationContent]
    ) -> int:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((url, secret, message_id, list(items)))
        return 200


def retryable(status: int = 503) -> DeliveryFailed:
    return DeliveryFailed(f"HTTP {status}", status_code=status)


# -- the world ----------------------------------------------------------------------------


@dataclass
class Tenant:
    """A tenant and the stubs that call with its credentials."""

    id: str
    name: str
    client_id: str
    client_secret: str
    notifications: notifications_pb2_grpc.NotificationServiceStub
    chat: channels_pb2_grpc.ChannelServiceStub

    @property
    def md(self) -> Metadata:
        return (("x-client-id", self.client_id), ("x-client-secret", self.client_secret))

    async def users(self, *user_ids: str) -> None:
        for user_id in user_ids:
            await self.chat.UpsertUser(
                channels_pb2.UpsertUserRequest(user=channels_pb2.User(id=user_id)),
                metadata=self.md,
            )

    async def send(self, *user_ids: str, **fields: Any) -> list[pb.Notification]:
        fields.setdefault("title", "Hello")
        response = await self.notifications.SendNotification(
            pb.SendNotificationRequest(user_ids=list(user_ids), **fields), metadata=self.md
        )
        return list(response.notifications)

    async def preferences(self, user_id: str, *paths: str, **values: Any) -> pb.Preferences:
        response = await self.notifications.UpdatePreferences(
            pb.UpdatePreferencesRequest(
                preferences=pb.Preferences(user_id=user_id, **values),
                update_mask=field_mask_pb2.FieldMask(paths=list(paths or values)),
            ),
            metadata=self.md,
        )
        return response.preferences

    async def settings(self, *paths: str, **values: Any) -> pb.TenantSettings:
        response = await self.notifications.UpdateTenantSettings(
            pb.UpdateTenantSettingsRequest(
                settings=pb.TenantSettings(**values),
                update_mask=field_mask_pb2.FieldMask(paths=list(paths or values)),
            ),
            metadata=self.md,
        )
        return response.settings

    async def get(self, notification_id: str) -> pb.Notification:
        response = await self.notifications.GetNotification(
            pb.GetNotificationRequest(id=notification_id), metadata=self.md
        )
        return response.notification

    async def inbox(self, user_id: str, **fields: Any) -> pb.ListNotificationsResponse:
        return await self.notifications.ListNotifications(  # type: ignore[no-any-return]
            pb.ListNotificationsRequest(user_id=user_id, **fields), metadata=self.md
        )

    async def attempts(self, notification_id: str) -> list[pb.DeliveryAttempt]:
        found: list[pb.DeliveryAttempt] = []
        token = ""
        while True:
            page = await self.notifications.ListDeliveryAttempts(
                pb.ListDeliveryAttemptsRequest(
                    notification_id=notification_id, page_size=1000, page_token=token
                ),
                metadata=self.md,
            )
            found += page.attempts
            token = page.next_page_token
            if not token:
                return found


@dataclass
class World:
    """The running server, its runtime, the recording senders, and the job worker."""

    client: grpc.aio.Channel
    runtime: Runtime
    built: notification_server.NotificationServer
    worker: JobWorker
    mailer: RecordingMailer
    push: RecordingPush
    webhook: RecordingWebhook

    async def tenant(self, *permissions: str) -> Tenant:
        """A new tenant holding ``permissions`` (send:* and chat:* when none)."""
        created = await tenants_pb2_grpc.TenantServiceStub(self.client).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(
                    name=unique("notif"), permissions=list(permissions or ["send:*", "chat:*"])
                )
            ),
            metadata=ADMIN,
        )
        return Tenant(
            created.tenant.id,
            created.tenant.name,
            created.tenant.client_id,
            created.client_secret,
            notifications_pb2_grpc.NotificationServiceStub(self.client),
            channels_pb2_grpc.ChannelServiceStub(self.client),
        )

    async def run_jobs(self) -> int:
        """Run every notification job due now, again and again until none is; how many ran."""
        total = 0
        while ran := await self.worker.run_due():
            total += ran
        return total

    async def job_payloads(self, kind: str, tenant_id: str) -> list[dict[str, Any]]:
        """The payloads of the tenant's jobs of ``kind``, oldest first."""
        query = (
            select(jobs_table.c.payload)
            .where(jobs_table.c.kind == kind, jobs_table.c.tenant_id == tenant_id)
            .order_by(jobs_table.c.created_at)
        )
        async with self.runtime.engine.connect() as conn:
            return [dict(row.payload) for row in (await conn.execute(query)).all()]

    async def run_handler(self, kind: str, payload: dict[str, Any], **job: Any) -> None:
        """Run the handler of ``kind`` on a job with ``payload``, as a worker would."""
        job.setdefault("max_attempts", MAX_ATTEMPTS)
        await self.built.job_handlers[kind](Job(str(uuid.uuid4()), kind, payload, **job))


@asynccontextmanager
async def running_world(
    database_url: str,
    tmp_path: Path,
    *,
    real_senders: bool = False,
    started_worker_poll: float | None = None,
    **changes: Any,
) -> AsyncIterator[World]:
    """The server and worker; with ``real_senders`` the notification service sends Web
    Push and webhooks as in production (through the outbound guard, which lets 127.0.0.1
    through here) instead of recording them, and has no SMTP. The worker runs only when
    the test drives it (``run_jobs``), unless ``started_worker_poll`` is given: then it
    runs in the background, polling that often, woken by sends as in ``keel serve``."""
    notifications = NotificationSettings(max_attempts=MAX_ATTEMPTS, timeout_seconds=5)
    settings = settings_for(
        database_url, tmp_path, webhook_allow_private=True, notifications=notifications
    )
    settings = replace(settings, **changes)
    runtime = await open_runtime(settings)
    mailer, push, webhook = RecordingMailer(), RecordingPush(), RecordingWebhook()
    port: list[int] = []
    workers: list[JobWorker] = []
    try:
        tenants = tenant_server.build(runtime)
        authenticator = Authenticator(tenants.directory, lookup=tenants.directory)
        await authenticator.follow_changes(runtime.bus)
        built = notification_server.build(
            runtime,
            gateway_addr=lambda: f"127.0.0.1:{port[0]}",
            on_jobs_enqueued=lambda: workers[0].wake(),
            **({} if real_senders else {"mailer": mailer, "push": push, "webhook": webhook}),
        )
        server = KeelServer(
            runtime,
            [tenants.spec, *gateway_server.build(runtime, authenticator=authenticator), built.spec],
            authenticator=authenticator,
        )
        await server.start()
        port.append(server.port)
        worker = JobWorker(
            runtime.engine,
            built.job_handlers,
            concurrency=16,
            retry=RetryPolicy(base_delay=0.0, max_delay=0.0),
            poll_interval=started_worker_poll or 1.0,
        )
        workers.append(worker)
        if started_worker_poll is not None:
            worker.start()
        client = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield World(client, runtime, built, worker, mailer, push, webhook)
        finally:
            await client.close()
            await worker.stop(1)
            await server.stop(1)
            await authenticator.close()
    finally:
        await runtime.close()


@pytest.fixture(scope="module")
async def world(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """One server per test module and database; tests isolate themselves by tenant."""
    async with running_world(database_url, tmp_path_factory.mktemp("notifications")) as running:
        yield running


@pytest.fixture
async def tenant(world: World) -> Tenant:
    return await world.tenant()


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    """Await an RPC that must fail; return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value
