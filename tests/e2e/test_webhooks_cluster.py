"""Webhooks from ``keel serve gateway`` processes on one PostgreSQL and one Redis.

A tenant service runs for the module; each test starts its own gateways (the
webhook dispatcher runs in every gateway) and a real HTTP receiver (aiohttp) on
127.0.0.1. Delivery state lives only in the database: a gateway killed with
SIGKILL mid-delivery loses nothing, and two gateways never deliver one event
twice except as separate recorded attempts.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest
from aiohttp import web
from keel.channels.v1 import channels_pb2 as chat_pb
from keel.channels.v1 import channels_pb2_grpc
from keel.events.v1 import events_pb2 as pb
from keel.events.v1 import events_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from tests.conftest import ADMIN_TOKEN, unique
from tests.e2e.conftest import KeelProcess, PgCluster, bearer, client_metadata
from tests.gateway_bridge.gateway.events.test_service import Hit, Receiver

pytestmark = pytest.mark.e2e

#: Retries every half second for 25 s (the receiver fails on purpose for a while).
SCHEDULE = ",".join(["0.5"] * 50)
#: The longest a test waits for deliveries; a killed gateway's leases last timeout + 30 s.
DELIVERY_WAIT = 90.0
#: The bound for deliveries retaken from a killed gateway whose leases were short (3 s).
SHORT_LEASE_WAIT = 20.0
#: What every gateway of this module gets: webhooks to 127.0.0.1, retried on SCHEDULE.
WEBHOOK_ENV = {
    "KEEL_WEBHOOK_ALLOW_PRIVATE": "1",
    "KEEL_WEBHOOK_RETRY_SCHEDULE": SCHEDULE,
    "KEEL_WEBHOOK_TIMEOUT_SECONDS": "10",
    "KEEL_WEBHOOK_DISABLE_AFTER_FAILURES": "1000000",
}


@dataclass
class Cluster:
    processes: PgCluster

    @property
    def tenant_service(self) -> KeelProcess:
        return self.processes.tenant_service

    async def gateway(self, stack: ExitStack, **changes: str) -> KeelProcess:
        """A ``keel serve gateway`` (started off the event loop, which serves the receiver)."""
        process = await asyncio.to_thread(
            self.processes.start, "gateway", **(WEBHOOK_ENV | changes)
        )
        stack.callback(process.stop)
        return process


@pytest.fixture(scope="module")
def cluster(pg_cluster: Callable[..., PgCluster]) -> Cluster:
    return Cluster(pg_cluster("webhooks"))


class HoldingReceiver(Receiver):
    """A receiver that can also hold requests unanswered (recorded with status 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        if not self.holding:
            return await super()._handle(request)
        body = await request.read()
        self.hits.append(Hit({k.lower(): v for k, v in request.headers.items()}, body, 0))
        self._arrived.set()
        await self.release.wait()
        return web.Response(status=503)

    async def stop(self) -> None:
        self.release.set()
        await super().stop()


@asynccontextmanager
async def receiving() -> AsyncIterator[HoldingReceiver]:
    receiver = HoldingReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@dataclass
class Tenant:
    md: tuple[tuple[str, str], ...]


async def new_tenant(cluster: Cluster) -> Tenant:
    async with grpc.aio.insecure_channel(cluster.tenant_service.addr) as admin:
        created = await tenants_pb2_grpc.TenantServiceStub(admin).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("webhooks"), permissions=["chat:*"])
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
    return Tenant(tuple(client_metadata(created.tenant.client_id, created.client_secret)))


@asynccontextmanager
async def stubs(
    process: KeelProcess,
) -> AsyncIterator[tuple[channels_pb2_grpc.ChannelServiceStub, events_pb2_grpc.EventServiceStub]]:
    async with grpc.aio.insecure_channel(process.addr) as channel:
        yield (
            channels_pb2_grpc.ChannelServiceStub(channel),
            events_pb2_grpc.EventServiceStub(channel),
        )


async def room(chat: channels_pb2_grpc.ChannelServiceStub, tenant: Tenant) -> str:
    response = await chat.CreateChannel(
        chat_pb.CreateChannelRequest(name=unique("room"), created_by="alice"),
        metadata=tenant.md,
        timeout=30,
    )
    return str(response.channel.id)


async def send_all(
    chat: channels_pb2_grpc.ChannelServiceStub, tenant: Tenant, channel_id: str, texts: list[str]
) -> None:
    """Send the messages, ten at a time."""
    for start in range(0, len(texts), 10):
        await asyncio.gather(
            *(
                chat.SendMessage(
                    chat_pb.SendMessageRequest(channel_id=channel_id, user_id="alice", content=t),
                    metadata=tenant.md,
                    timeout=30,
                )
                for t in texts[start : start + 10]
            )
        )


async def deliveries(
    events: events_pb2_grpc.EventServiceStub, tenant: Tenant, webhook_id: str
) -> list[pb.Delivery]:
    found: list[pb.Delivery] = []
    token = ""
    while True:
        page = await events.ListDeliveries(
            pb.ListDeliveriesRequest(webhook_id=webhook_id, page_size=1000, page_token=token),
            metadata=tenant.md,
            timeout=30,
        )
        found += page.deliveries
        token = page.next_page_token
        if not token:
            return found


async def all_succeeded(
    events: events_pb2_grpc.EventServiceStub, tenant: Tenant, webhook_id: str, count: int
) -> list[pb.Delivery]:
    """Wait (bounded) until the webhook has ``count`` deliveries, every one SUCCEEDED."""
    found: list[pb.Delivery] = []
    try:
        async with asyncio.timeout(DELIVERY_WAIT):
            while True:
                found = await deliveries(events, tenant, webhook_id)
                if len(found) == count and all(
                    d.status == pb.DELIVERY_STATUS_SUCCEEDED for d in found
                ):
                    return found
                await asyncio.sleep(0.2)
    except TimeoutError:
        statuses = Counter(pb.DeliveryStatus.Name(d.status) for d in found)
        pytest.fail(f"after {DELIVERY_WAIT}s: {len(found)} deliveries, {dict(statuses)}")


def contents(hits: list[Hit], secret: str) -> list[str]:
    return [str(h.verified(secret)["data"]["message"]["content"]) for h in hits]


async def test_a_killed_gateway_s_pending_deliveries_are_delivered_after_a_restart(
    cluster: Cluster,
) -> None:
    tenant = await new_tenant(cluster)
    texts = [f"pending #{n}" for n in range(20)]
    with ExitStack() as stack:
        # A short attempt timeout and lease margin: a delivery the killed gateway was
        # attempting is leased for their sum (3 s), then another gateway takes it.
        first = await cluster.gateway(
            stack, KEEL_WEBHOOK_TIMEOUT_SECONDS="1", KEEL_JOB_LEASE_MARGIN_SECONDS="2"
        )
        async with receiving() as receiver:
            receiver.default = (503, {})
            async with stubs(first) as (chat, events):
                created = await events.CreateWebhook(
                    pb.CreateWebhookRequest(url=receiver.url, events=["message:created"]),
                    metadata=tenant.md,
                    timeout=30,
                )
                channel = await room(chat, tenant)
                await send_all(chat, tenant, channel, texts)
            await receiver.wait_until(
                lambda: len({h.id for h in receiver.hits}) == len(texts),
                "a first (refused) attempt of every event",
            )
            assert {h.status for h in receiver.hits} == {503}

            # Hold the next attempts unanswered, and kill the gateway while it waits.
            receiver.holding = True
            await receiver.wait_until(lambda: receiver.hits[-1].status == 0, "a held attempt")
            first.signal(signal.SIGKILL)
            assert await asyncio.to_thread(first.wait) == -signal.SIGKILL
            held = {h.id for h in receiver.hits if h.status == 0}
            assert held

            receiver.holding = False
            receiver.default = (200, {})
            receiver.release.set()
            second = await cluster.gateway(stack)
            # Well under the 31 s a lease of the default margin would take: the held
            # deliveries are retaken because the killed gateway leased them for 3 s.
            await receiver.wait_for_ok(len(texts), within=SHORT_LEASE_WAIT)
            async with stubs(second) as (_chat, events):
                found = await all_succeeded(events, tenant, created.webhook.id, len(texts))

    ok = receiver.ok()
    assert sorted(contents(ok, created.secret)) == sorted(texts)
    # Each event succeeded exactly once, the held ones included (after their lease ran out).
    assert Counter(h.id for h in ok) == Counter({d.event_id: 1 for d in found})
    assert held <= {h.id for h in ok}
    for delivery in found:
        codes = [a.status_code for a in delivery.attempts]
        assert codes[-1] == 200 and set(codes[:-1]) <= {503}, codes


async def test_two_gateways_deliver_every_event_once_per_successful_attempt(
    cluster: Cluster,
) -> None:
    tenant = await new_tenant(cluster)
    with ExitStack() as stack:
        a = await cluster.gateway(stack)
        b = await cluster.gateway(stack)
        async with (
            receiving() as receiver,
            stubs(a) as (chat_a, events_a),
            stubs(b) as (chat_b, events_b),
        ):
            created = await events_a.CreateWebhook(
                pb.CreateWebhookRequest(url=receiver.url, events=["message:created"]),
                metadata=tenant.md,
                timeout=30,
            )
            channel = await room(chat_a, tenant)
            via_a = [f"via A #{n}" for n in range(100)]
            via_b = [f"via B #{n}" for n in range(100)]
            await asyncio.gather(
                send_all(chat_a, tenant, channel, via_a), send_all(chat_b, tenant, channel, via_b)
            )
            await receiver.wait_for_ok(200, within=DELIVERY_WAIT)
            found = await all_succeeded(events_b, tenant, created.webhook.id, 200)

    assert len({d.event_id for d in found}) == 200
    # Every request the receiver got is one recorded attempt: a webhook-id arrives once per
    # attempt of its (single) delivery, and exactly once with success.
    requests = Counter(h.id for h in receiver.hits)
    successes = Counter(h.id for h in receiver.ok())
    for delivery in found:
        assert requests[delivery.event_id] == len(delivery.attempts), delivery
        assert successes[delivery.event_id] == 1, delivery
    assert set(requests) == {d.event_id for d in found}
    assert sorted(set(contents(receiver.ok(), created.secret))) == sorted(via_a + via_b)
