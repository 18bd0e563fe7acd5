"""Two ``keel serve gateway`` processes on one PostgreSQL and one Redis, with a tenant service.

A message sent through gateway A must reach a bridge's Connect stream on
gateway B exactly once and in seq order, and the other way round: the
processes share nothing but the database and the bus.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest
from keel.channels.v1 import channels_pb2 as pb
from keel.channels.v1 import channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from tests.conftest import ADMIN_TOKEN, unique
from tests.e2e.conftest import KeelProcess, PgCluster, bearer, client_metadata
from tests.gateway_bridge.conftest import Bridge, connect

pytestmark = pytest.mark.e2e

#: The longest the subscriber waits for all the messages of one test to arrive.
DELIVERY_WAIT = 15.0


@dataclass
class Gateways:
    tenant_service: KeelProcess
    a: KeelProcess
    b: KeelProcess


@pytest.fixture(scope="module")
def gateways(pg_cluster: Callable[..., PgCluster]) -> Gateways:
    """A tenant service and two gateways (A and B) sharing the database, Redis and secrets."""
    processes = pg_cluster("gateways")
    return Gateways(
        processes.tenant_service, processes.start("gateway"), processes.start("gateway")
    )


@dataclass
class Clients:
    tenant_id: str
    md: tuple[tuple[str, str], ...]
    a: channels_pb2_grpc.ChannelServiceStub
    b: channels_pb2_grpc.ChannelServiceStub


@asynccontextmanager
async def clients(gateways: Gateways) -> AsyncIterator[Clients]:
    """A new tenant (made on the tenant service) and ChannelService stubs for A and B."""
    async with (
        grpc.aio.insecure_channel(gateways.tenant_service.addr) as admin,
        grpc.aio.insecure_channel(gateways.a.addr) as to_a,
        grpc.aio.insecure_channel(gateways.b.addr) as to_b,
    ):
        created = await tenants_pb2_grpc.TenantServiceStub(admin).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("gateways"), permissions=["chat:*"])
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
        yield Clients(
            created.tenant.id,
            tuple(client_metadata(created.tenant.client_id, created.client_secret)),
            channels_pb2_grpc.ChannelServiceStub(to_a),
            channels_pb2_grpc.ChannelServiceStub(to_b),
        )


async def group(stub: channels_pb2_grpc.ChannelServiceStub, md: object) -> str:
    response = await stub.CreateChannel(
        pb.CreateChannelRequest(name=unique("room"), created_by="alice", member_ids=["bob"]),
        metadata=md,
        timeout=30,
    )
    return str(response.channel.id)


async def send(
    stub: channels_pb2_grpc.ChannelServiceStub, md: object, channel_id: str, user: str, text: str
) -> pb.Message:
    response = await stub.SendMessage(
        pb.SendMessageRequest(channel_id=channel_id, user_id=user, content=text),
        metadata=md,
        timeout=30,
    )
    message: pb.Message = response.message
    return message


async def created_events(
    bridge: Bridge, channel_id: str, through_seq: int
) -> list[pb.ChannelEvent]:
    """The channel's ``message:created`` events, up to the one with ``through_seq`` (bounded)."""
    found: list[pb.ChannelEvent] = []
    try:
        async with asyncio.timeout(DELIVERY_WAIT):
            while not found or found[-1].seq < through_seq:
                item = await bridge.read(within=DELIVERY_WAIT)
                if item.WhichOneof("payload") != "event":
                    continue
                if item.event.channel_id == channel_id and item.event.event == "message:created":
                    found.append(item.event)
    except TimeoutError:
        pytest.fail(
            f"within {DELIVERY_WAIT}s the subscriber got seqs {[e.seq for e in found]},"
            f" not all through {through_seq}"
        )
    return found


async def test_messages_sent_through_a_reach_a_subscriber_on_b_once_in_order(
    gateways: Gateways,
) -> None:
    async with clients(gateways) as c:
        channel = await group(c.a, c.md)
        async with connect(c.b) as bridge:
            await bridge.subscribe("on-b", c.tenant_id, channel, user_id="alice")
            result = await bridge.result()
            assert (result.code, result.last_seq) == (0, 0), result.message

            async def sender(user: str) -> list[pb.Message]:
                return [await send(c.a, c.md, channel, user, f"{user} #{n}") for n in range(25)]

            sent = [
                m for batch in await asyncio.gather(sender("alice"), sender("bob")) for m in batch
            ]
            assert sorted(m.seq for m in sent) == list(range(1, 51))
            # One more message after the 50 marks the end: whatever arrives before it,
            # duplicates included, is counted.
            last = await send(c.a, c.md, channel, "alice", "the end")
            assert last.seq == 51

            events = await created_events(bridge, channel, through_seq=51)
            assert [e.seq for e in events] == list(range(1, 52))
            by_seq = {m.seq: m for m in [*sent, last]}
            for event in events:
                message = json.loads(event.data_json)["message"]
                assert (message["id"], message["content"]) == (
                    by_seq[event.seq].id,
                    by_seq[event.seq].content,
                )
            assert len({e.event_id for e in events}) == 51

        stored = await c.b.ListMessages(
            pb.ListMessagesRequest(
                channel_id=channel, page_size=100, order=pb.MESSAGE_ORDER_OLDEST_FIRST
            ),
            metadata=c.md,
            timeout=30,
        )
        assert [m.seq for m in stored.messages] == list(range(1, 52))
        assert [m.id for m in stored.messages] == [by_seq[s].id for s in range(1, 52)]


async def test_an_event_sent_through_b_reaches_a_subscriber_on_a(gateways: Gateways) -> None:
    async with clients(gateways) as c:
        channel = await group(c.b, c.md)
        async with connect(c.a) as bridge:
            await bridge.subscribe("on-a", c.tenant_id, channel, user_id="bob")
            assert (await bridge.result()).code == 0

            sent = [await send(c.b, c.md, channel, "bob", f"from B {n}") for n in range(3)]
            events = await created_events(bridge, channel, through_seq=3)
            assert [e.seq for e in events] == [1, 2, 3]
            assert [json.loads(e.data_json)["message"]["id"] for e in events] == [
                m.id for m in sent
            ]

            edited = await c.b.EditMessage(
                pb.EditMessageRequest(channel_id=channel, message_id=sent[0].id, content="fixed"),
                metadata=c.md,
                timeout=30,
            )
            item = await bridge.event()
            assert (item.event.event, item.event.seq) == ("message:updated", 1)
            assert json.loads(item.event.data_json)["message"]["content"] == edited.message.content

            # A subscriber joining later on A replays what B stored, from the shared database.
            await bridge.subscribe("late-on-a", c.tenant_id, channel, user_id="alice", since_seq=0)
            replayed = [await bridge.event() for _ in range(3)]
            assert [r.event.seq for r in replayed] == [1, 2, 3]
            assert all(list(r.subscription_keys) == ["late-on-a"] for r in replayed)
            assert (await bridge.result()).last_seq == 3
