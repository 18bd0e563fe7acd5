"""Notification deliveries from ``keel serve notification-service`` processes on one
PostgreSQL and one Redis.

A tenant service and a gateway run for the module (the notification service checks
recipients there); each test starts its own notification services, a real HTTP webhook
receiver (aiohttp) on 127.0.0.1 and, for email, a real SMTP server (aiosmtpd). The
webhook receiver behaves as the docs tell one to: it checks the Standard Webhooks
signature, keeps each ``webhook-id`` (the notification's id) once and counts every
request, so the tests see both what a deduplicating receiver ends up with and every raw
resend; emails are told apart by their ``Message-ID``.

Deliveries are jobs on the durable queue: a notification service killed with SIGKILL
while requests are in flight loses none of them (another process takes them once their
lease runs out, resending exactly the ones in flight: at least once), and two processes
on one database send each delivery once.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from aiohttp import web
from google.protobuf import field_mask_pb2
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.notifications.v1 import notifications_pb2 as pb
from keel.notifications.v1 import notifications_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from keel.webhooks import WebhookVerificationError, new_secret, verify

from tests.conftest import ADMIN_TOKEN, unique
from tests.e2e.conftest import KeelProcess, PgCluster, bearer, client_metadata
from tests.notification_service.senders.conftest import Mailbox, smtp_server

pytestmark = pytest.mark.e2e

PEER_TOKEN = "test-peer-token-0123456789abcdef"
WEBHOOK = pb.NOTIFICATION_CHANNEL_WEBHOOK
EMAIL = pb.NOTIFICATION_CHANNEL_EMAIL
#: Users (one notification each) per test.
USERS = 200
#: Deliveries each notification service runs at once.
CONCURRENCY = 8
#: The attempt timeout and lease margin of the process that is killed: its deliveries are
#: leased for their sum (5 s), which is how long the restarted process waits for the ones
#: in flight.
KILLED_TIMEOUT, KILLED_LEASE_MARGIN = "3", "2"
#: Bounds of the waits (none is asserted on): for the held requests to arrive, and for
#: every delivery to be recorded (past a killed process's leases).
ARRIVAL_WAIT = 10.0
DELIVERY_WAIT = 60.0
#: The bound for deliveries retaken from the killed process (its leases: 5 s): well under
#: the 33 s a lease with the default margin would take.
SHORT_LEASE_WAIT = 25.0


# --- the cluster ---------------------------------------------------------------------------


@dataclass
class Cluster:
    processes: PgCluster
    gateway: KeelProcess

    async def notification_service(self, stack: ExitStack, **changes: str) -> KeelProcess:
        """A ``keel serve notification-service`` (started off the event loop, which serves
        the receiver), stopped when ``stack`` closes."""
        process = await asyncio.to_thread(
            self.processes.start,
            "notification-service",
            KEEL_GATEWAY_ADDR=self.gateway.addr,
            KEEL_NOTIFICATION_CONCURRENCY=str(CONCURRENCY),
            **changes,
        )
        stack.callback(process.stop)
        return process


@pytest.fixture(scope="module")
def cluster(pg_cluster: Callable[..., PgCluster]) -> Cluster:
    processes = pg_cluster(
        "notifications", KEEL_PEER_TOKEN=PEER_TOKEN, KEEL_WEBHOOK_ALLOW_PRIVATE="1"
    )
    return Cluster(processes, processes.start("gateway"))


@dataclass
class Tenant:
    id: str
    md: tuple[tuple[str, str], ...]
    user_ids: list[str]
    secret: str = field(default_factory=new_secret)


async def new_tenant(cluster: Cluster) -> Tenant:
    """A tenant that may send webhooks (``send:*``), with ``USERS`` users at the gateway."""
    async with grpc.aio.insecure_channel(cluster.processes.tenant_service.addr) as admin:
        created = await tenants_pb2_grpc.TenantServiceStub(admin).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(
                    name=unique("notifications"), permissions=["chat:*", "send:*"]
                )
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
    md = tuple(client_metadata(created.tenant.client_id, created.client_secret))
    tenant = Tenant(created.tenant.id, md, [f"user-{n:03}" for n in range(USERS)])
    async with grpc.aio.insecure_channel(cluster.gateway.addr) as channel:
        chat = channels_pb2_grpc.ChannelServiceStub(channel)
        for start in range(0, USERS, 50):
            await asyncio.gather(
                *(
                    chat.UpsertUser(
                        channels_pb2.UpsertUserRequest(user=channels_pb2.User(id=user_id)),
                        metadata=md,
                        timeout=30,
                    )
                    for user_id in tenant.user_ids[start : start + 50]
                )
            )
    return tenant


@asynccontextmanager
async def notifications(
    process: KeelProcess,
) -> AsyncIterator[notifications_pb2_grpc.NotificationServiceStub]:
    async with grpc.aio.insecure_channel(process.addr) as channel:
        yield notifications_pb2_grpc.NotificationServiceStub(channel)


async def point_webhooks_at(
    stub: notifications_pb2_grpc.NotificationServiceStub, tenant: Tenant, url: str
) -> None:
    """Make ``url`` the tenant's webhook (signed with the tenant's secret) for every user."""
    await stub.UpdateTenantSettings(
        pb.UpdateTenantSettingsRequest(
            settings=pb.TenantSettings(webhook_url=url, webhook_secret=tenant.secret),
            update_mask=field_mask_pb2.FieldMask(paths=["webhook_url", "webhook_secret"]),
        ),
        metadata=tenant.md,
        timeout=30,
    )


async def give_email_addresses(
    stub: notifications_pb2_grpc.NotificationServiceStub, tenant: Tenant
) -> None:
    """Give every user of the tenant the address ``<user id>@example.com``."""
    for start in range(0, USERS, 50):
        await asyncio.gather(
            *(
                stub.UpdatePreferences(
                    pb.UpdatePreferencesRequest(
                        preferences=pb.Preferences(user_id=user_id, email=f"{user_id}@example.com"),
                        update_mask=field_mask_pb2.FieldMask(paths=["email"]),
                    ),
                    metadata=tenant.md,
                    timeout=30,
                )
                for user_id in tenant.user_ids[start : start + 50]
            )
        )


async def send(
    stub: notifications_pb2_grpc.NotificationServiceStub,
    tenant: Tenant,
    user_ids: Sequence[str],
    channels: Sequence[pb.NotificationChannel],
) -> list[str]:
    """One notification to each user through ``channels``; their ids."""
    response = await stub.SendNotification(
        pb.SendNotificationRequest(
            user_ids=list(user_ids), title="Build finished", channels=list(channels)
        ),
        metadata=tenant.md,
        timeout=30,
    )
    return [n.id for n in response.notifications]


async def all_sent(
    stub: notifications_pb2_grpc.NotificationServiceStub,
    tenant: Tenant,
    ids: Sequence[str],
    channels: Sequence[pb.NotificationChannel],
) -> list[pb.Notification]:
    """Wait (bounded) until every notification is SENT on each of ``channels``; return them."""
    found: list[pb.Notification] = []

    async def get(notification_id: str) -> pb.Notification:
        response: pb.GetNotificationResponse = await stub.GetNotification(
            pb.GetNotificationRequest(id=notification_id), metadata=tenant.md, timeout=30
        )
        return response.notification

    try:
        async with asyncio.timeout(DELIVERY_WAIT):
            while True:
                found = list(await asyncio.gather(*(get(i) for i in ids)))
                if all(states_of(n) == dict.fromkeys(channels, "SENT") for n in found):
                    return found
                await asyncio.sleep(0.25)
    except TimeoutError:
        states = Counter(str(states_of(n)) for n in found)
        pytest.fail(f"after {DELIVERY_WAIT}s the deliveries' states are {dict(states)}")


def states_of(notification: pb.Notification) -> dict[int, str]:
    """The state of each of the notification's deliveries, by channel."""
    return {
        d.channel: pb.DeliveryState.Name(d.state).removeprefix("DELIVERY_STATE_")
        for d in notification.deliveries
    }


async def all_attempts(
    stub: notifications_pb2_grpc.NotificationServiceStub, tenant: Tenant, ids: Sequence[str]
) -> dict[str, list[pb.DeliveryAttempt]]:
    """The recorded delivery attempts of each notification."""

    async def attempts_of(notification_id: str) -> list[pb.DeliveryAttempt]:
        response = await stub.ListDeliveryAttempts(
            pb.ListDeliveryAttemptsRequest(notification_id=notification_id, page_size=1000),
            metadata=tenant.md,
            timeout=30,
        )
        assert not response.next_page_token
        return list(response.attempts)

    return dict(zip(ids, await asyncio.gather(*(attempts_of(i) for i in ids)), strict=True))


async def attempts_by_worker(pg_url: str, tenant_id: str) -> Counter[str]:
    """The attempts of the tenant's notification jobs per worker process id (from
    ``job_attempts``, whose ``worker`` is ``host:pid:suffix``)."""
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT a.worker FROM job_attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE a.tenant_id = $1 AND j.kind LIKE 'notification.%'",
            tenant_id,
        )
    finally:
        await conn.close()
    return Counter(str(row["worker"]).split(":")[1] for row in rows)


# --- the receiver --------------------------------------------------------------------------


class DedupingReceiver:
    """A webhook endpoint on 127.0.0.1 that keeps each ``webhook-id`` once.

    Each request is verified and *kept* (the first body of its id) before it is answered,
    as a receiver that processes and then acknowledges does; ``arrivals`` lists every
    request's id. Requests from number ``hold_from`` on (0-based; None: none) are not
    answered until :attr:`release` is set, or, with ``release_at_in_flight``, until that
    many are waiting at once.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.port = 0
        self.arrivals: list[str] = []
        self.kept: dict[str, dict[str, Any]] = {}
        self.rejected: list[str] = []
        self.waiting: set[str] = set()
        self.most_waiting = 0
        self.hold_from: int | None = None
        self.release_at_in_flight: int | None = None
        self.release = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notifications"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/notifications", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            payload = verify(self.secret, headers, body)
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return web.Response(status=400)
        number = len(self.arrivals)
        webhook_id = headers["webhook-id"]
        self.arrivals.append(webhook_id)
        self.kept.setdefault(webhook_id, payload)
        self._changed.set()
        if self.hold_from is not None and number >= self.hold_from:
            await self._hold(webhook_id)
        return web.Response(status=200)

    async def _hold(self, webhook_id: str) -> None:
        self.waiting.add(webhook_id)
        self.most_waiting = max(self.most_waiting, len(self.waiting))
        if self.release_at_in_flight is not None:
            if len(self.waiting) >= self.release_at_in_flight:
                self.release.set()
        self._changed.set()
        try:
            await self.release.wait()
        finally:
            self.waiting.discard(webhook_id)

    async def wait_until(self, done: Callable[[], bool], what: str, within: float) -> None:
        """Wait (at most ``within`` seconds) until ``done()``, checked at each request."""
        try:
            async with asyncio.timeout(within):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(
                f"no {what} within {within}s: {len(self.arrivals)} requests,"
                f" {len(self.kept)} ids, {len(self.waiting)} waiting, rejected {self.rejected[:3]}"
            )


@asynccontextmanager
async def receiving(secret: str) -> AsyncIterator[DedupingReceiver]:
    receiver = DedupingReceiver(secret)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


# --- the tests -----------------------------------------------------------------------------


async def test_a_killed_notification_service_loses_no_delivery_and_resends_only_those_in_flight(
    cluster: Cluster,
) -> None:
    tenant = await new_tenant(cluster)
    first_batch = 40  # answered at once; the next requests wait until the kill
    with ExitStack() as stack:
        first = await cluster.notification_service(
            stack,
            KEEL_NOTIFICATION_TIMEOUT_SECONDS=KILLED_TIMEOUT,
            KEEL_JOB_LEASE_MARGIN_SECONDS=KILLED_LEASE_MARGIN,
        )
        async with receiving(tenant.secret) as receiver, notifications(first) as stub:
            receiver.hold_from = first_batch
            await point_webhooks_at(stub, tenant, receiver.url)
            ids = await send(stub, tenant, tenant.user_ids, [WEBHOOK])
            # Every slot of the process waits for an answer: the deliveries before these
            # were settled (a slot frees only once its delivery is recorded).
            await receiver.wait_until(
                lambda: len(receiver.waiting) == CONCURRENCY,
                "full set of held requests",
                ARRIVAL_WAIT,
            )
            in_flight, arrived = set(receiver.waiting), len(receiver.arrivals)
            first.signal(signal.SIGKILL)
            assert await asyncio.to_thread(first.wait) == -signal.SIGKILL
            receiver.hold_from = None
            receiver.release.set()

            second = await cluster.notification_service(stack)
            async with notifications(second) as stub:
                await receiver.wait_until(
                    lambda: set(receiver.kept) == set(ids), "request for every id", DELIVERY_WAIT
                )
                # The deliveries in flight at the kill come again once their 5 s leases end.
                await receiver.wait_until(
                    lambda: all(receiver.arrivals.count(i) > 1 for i in in_flight),
                    "a second request for each delivery in flight at the kill",
                    SHORT_LEASE_WAIT,
                )
                found = await all_sent(stub, tenant, ids, [WEBHOOK])
                attempts = await all_attempts(stub, tenant, ids)

    arrivals = Counter(receiver.arrivals)
    duplicates = {i for i, count in arrivals.items() if count > 1}
    print(
        f"\nkill -9 with {len(in_flight)} requests in flight after {arrived}"
        f" arrivals: {len(receiver.arrivals)} requests for {len(arrivals)} ids"
        f" ({len(receiver.arrivals) - len(arrivals)} raw duplicates)"
    )
    assert not receiver.rejected
    # None lost: the deduplicating receiver holds every notification, as sent.
    assert set(receiver.kept) == set(ids) and len(ids) == USERS
    assert {p["data"]["id"] for p in receiver.kept.values()} == set(ids)
    assert {p["data"]["user_id"] for p in receiver.kept.values()} == set(tenant.user_ids)
    # At least once, and no more: exactly the requests in flight at the kill were resent,
    # once each (the killed process had recorded every delivery it had answered).
    assert len(in_flight) == CONCURRENCY
    assert duplicates == in_flight
    assert max(arrivals.values()) == 2
    assert all(states_of(n) == {WEBHOOK: "SENT"} for n in found)
    # The record shows one successful attempt each: the killed attempts were never recorded.
    for notification_id, recorded in attempts.items():
        assert [(a.state, a.status_code) for a in recorded] == [(pb.DELIVERY_STATE_SENT, 200)], (
            notification_id,
            recorded,
        )


async def test_two_notification_services_send_each_delivery_once(
    cluster: Cluster, pg_url: str
) -> None:
    tenant = await new_tenant(cluster)
    mailbox = Mailbox()
    with ExitStack() as stack:
        smtp = stack.enter_context(smtp_server(mailbox))
        a, b = await asyncio.gather(
            *(
                cluster.notification_service(stack, KEEL_SMTP_URL=f"smtp://127.0.0.1:{smtp.port}")
                for _ in range(2)
            )
        )
        async with (
            receiving(tenant.secret) as receiver,
            notifications(a) as via_a,
            notifications(b) as via_b,
        ):
            # No webhook is answered until more wait than one process runs at once: both
            # processes must be delivering.
            receiver.hold_from = 0
            receiver.release_at_in_flight = CONCURRENCY + 1
            await point_webhooks_at(via_a, tenant, receiver.url)
            await give_email_addresses(via_b, tenant)
            half = USERS // 2
            sent = await asyncio.gather(
                send(via_a, tenant, tenant.user_ids[:half], [WEBHOOK, EMAIL]),
                send(via_b, tenant, tenant.user_ids[half:], [WEBHOOK, EMAIL]),
            )
            ids = sent[0] + sent[1]
            await receiver.wait_until(
                receiver.release.is_set, "webhooks from both processes at once", ARRIVAL_WAIT
            )
            await receiver.wait_until(
                lambda: set(receiver.kept) == set(ids), "webhook for every id", DELIVERY_WAIT
            )
            found = await all_sent(via_b, tenant, ids, [WEBHOOK, EMAIL])
            attempts = await all_attempts(via_a, tenant, ids)
            workers = await attempts_by_worker(pg_url, tenant.id)

    emails = Counter(str(r.message["Message-ID"]) for r in mailbox.received)
    pids = {str(a.process.pid), str(b.process.pid)}
    print(
        f"\ntwo processes: {len(receiver.arrivals)} webhook requests for"
        f" {len(set(receiver.arrivals))} ids (at most {receiver.most_waiting} waiting at once),"
        f" {len(mailbox.received)} emails for {len(emails)} Message-IDs;"
        f" job attempts per process {dict(workers)}"
    )
    assert not receiver.rejected
    assert len(ids) == USERS
    # Each delivery arrived once (the receivers got no duplicate to drop) ...
    assert Counter(receiver.arrivals) == Counter({i: 1 for i in ids})
    assert emails == Counter({f"<{i}.email@keel>": 1 for i in ids})
    assert sorted(r.rcpt_tos[0] for r in mailbox.received) == [
        f"{u}@example.com" for u in tenant.user_ids
    ]
    # ... and was attempted once, successfully, as recorded.
    assert all(states_of(n) == {WEBHOOK: "SENT", EMAIL: "SENT"} for n in found)
    for notification_id, recorded in attempts.items():
        assert sorted((a.channel, a.state, a.status_code) for a in recorded) == [
            (EMAIL, pb.DELIVERY_STATE_SENT, 0),
            (WEBHOOK, pb.DELIVERY_STATE_SENT, 200),
        ], (notification_id, recorded)
    # One claim per delivery in all, and both processes made some.
    assert set(workers) == pids and sum(workers.values()) == 2 * USERS
