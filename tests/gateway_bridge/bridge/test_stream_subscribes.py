"""Subscriptions in batches on the Connect stream: the subscriptions a bridge has ready at
once go up as one ``ConnectSubscribes`` and their results come down together
(``SubscribeResults``) where nothing comes between them, each answered as if it had come
alone; a gateway that does not take them gets them one by one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from keel.channels.v1 import channels_pb2

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.gateway.channels import hub as hub_module
from gateway_bridge.gateway.channels.streams import END, BridgeStream
from tests.gateway_bridge.bridge.conftest import WAIT, Dial, Stack, join, running_bridge
from tests.gateway_bridge.conftest import Tenant


def result(key: str) -> channels_pb2.SubscribeResult:
    return channels_pb2.SubscribeResult(subscription_key=key, channel_id="c", last_seq=1)


def outbox(stream: BridgeStream) -> list[Any]:
    """What the stream would send, in order (the outbox emptied)."""
    items = []
    while not stream.outbox.empty():
        items.append(stream.taken(stream.outbox.get_nowait()))
    return items


def test_results_due_one_after_another_go_together_and_nothing_overtakes_an_item() -> None:
    stream = BridgeStream(max_backlog=100)
    stream.batches_subscribe_results = True
    event = channels_pb2.ConnectResponse(event=channels_pb2.ChannelEvent(seq=1))
    stream.subscribed(result("a"))
    stream.subscribed(result("b"))
    stream.send(event)  # due before "c": "c" may not join the batch ahead of it
    stream.subscribed(result("c"))
    stream.subscribed(result("d"))
    items = outbox(stream)
    assert [item.WhichOneof("payload") for item in items] == [
        "subscribe_results",
        "event",
        "subscribe_results",
    ]
    assert [r.subscription_key for r in items[0].subscribe_results.results] == ["a", "b"]
    assert [r.subscription_key for r in items[2].subscribe_results.results] == ["c", "d"]
    # Once taken, a batch is closed: a later result starts the next one.
    stream.subscribed(result("e"))
    assert [r.subscription_key for r in outbox(stream)[0].subscribe_results.results] == ["e"]


def test_a_bridge_that_never_sent_a_batch_gets_one_result_per_response() -> None:
    stream = BridgeStream(max_backlog=100)
    stream.subscribed(result("a"))
    stream.subscribed(result("b"))
    items = outbox(stream)
    assert [(i.subscribe_result.subscription_key, list(i.subscription_keys)) for i in items] == [
        ("a", ["a"]),
        ("b", ["b"]),
    ]


def test_an_overflowed_stream_ends_without_the_results_queued_after() -> None:
    stream = BridgeStream(max_backlog=2)
    stream.batches_subscribe_results = True
    stream.send(channels_pb2.ConnectResponse())
    stream.send(channels_pb2.ConnectResponse())
    stream.subscribed(result("a"))  # the backlog is full: the stream ends
    stream.subscribed(result("b"))
    assert outbox(stream) == [END]


class Counted:
    """The subscriptions per request the link wrote, and the results per response the
    gateway sent."""

    def __init__(self, bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests: list[int] = []
        self.responses: list[int] = []
        self.results: dict[str, channels_pb2.SubscribeResult] = {}
        self.all_in = asyncio.Event()
        self.expected = 0
        link = bridge.link
        take_subscribes, taken, on_response = (
            link._take_subscribes,
            BridgeStream.taken,
            link._on_response,
        )

        def counted_requests(first: Any) -> Any:
            request, after = take_subscribes(first)
            self.requests.append(len(request.subscribes.subscribes) or 1)
            return request, after

        def counted_responses(stream: BridgeStream, item: object) -> object:
            response = taken(stream, item)
            if isinstance(response, channels_pb2.ConnectResponse):
                if response.HasField("subscribe_results"):
                    self.responses.append(len(response.subscribe_results.results))
                elif response.HasField("subscribe_result"):
                    self.responses.append(1)
            return response

        def recorded(response: channels_pb2.ConnectResponse) -> None:
            if response.HasField("subscribe_result"):
                key = response.subscribe_result.subscription_key
                if key.startswith("test:"):
                    self.results[key] = response.subscribe_result
                    if len(self.results) == self.expected:
                        self.all_in.set()
                    return
            on_response(response)

        monkeypatch.setattr(link, "_take_subscribes", counted_requests)
        monkeypatch.setattr(BridgeStream, "taken", counted_responses)
        monkeypatch.setattr(link, "_on_response", recorded)

    async def warm_up(self, bridge: Bridge, tenant: Tenant, channel_id: str) -> None:
        """One subscription through, and the counts reset: the gateway's stream, waiting
        for its next item when the class was patched, took that item unpatched."""
        await self.subscribe_at_once(bridge, tenant, ("test:warm-up", channel_id, "w"))
        self.requests.clear()
        self.responses.clear()
        self.results.clear()
        self.all_in.clear()

    async def subscribe_at_once(self, bridge: Bridge, tenant: Tenant, *asked: Any) -> None:
        """``asked``: (key, channel id, user id) subscribed in one go; wait for every result."""
        self.expected = len(asked)
        for key, channel_id, user_id in asked:
            bridge.link.subscribe(key, tenant.id, channel_id, user_id=user_id, since=0)
        async with asyncio.timeout(WAIT):
            await self.all_in.wait()


async def test_subscriptions_ready_together_go_up_in_one_request_each_answered_alone(
    bridge: Bridge, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty subscriptions made at once go up as one ConnectSubscribes; each gets its own
    result (a non-member of a group channel is refused, a public channel lets anyone read),
    in fewer responses than results."""
    public = await tenant.public()
    group = await tenant.group("alice")
    await tenant.send(public, "one")
    counted = Counted(bridge, monkeypatch)
    await counted.warm_up(bridge, tenant, public)
    assert bridge.link.stream_subscribes
    asked = [(f"test:{n}", public, f"user-{n}") for n in range(28)]
    asked += [("test:member", group, "alice"), ("test:stranger", group, "mallory")]
    await counted.subscribe_at_once(bridge, tenant, *asked)
    assert counted.requests == [30]
    assert sum(counted.responses) == 30 and len(counted.responses) < 30, counted.responses
    codes = {key: (r.code, r.last_seq) for key, r in counted.results.items()}
    assert codes == {
        **{f"test:{n}": (0, 1) for n in range(28)},
        "test:member": (0, 0),
        "test:stranger": (7, 0),  # PERMISSION_DENIED
    }


@pytest.fixture
async def old_gateway_bridge(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Bridge]:
    """A bridge whose Connect stream opened on a gateway that does not take subscriptions
    in batches (its initial metadata without CONNECT_SUBSCRIBES)."""
    with monkeypatch.context() as patch:
        patch.setattr(hub_module, "CONNECT_SUBSCRIBES", ("x-keel-something-else", "1"))
        async with running_bridge(stack) as bridge:
            assert not bridge.link.stream_subscribes
            patch.undo()  # only this bridge's stream, opened above
            yield bridge


async def test_a_gateway_that_does_not_take_batches_gets_subscriptions_one_by_one(
    old_gateway_bridge: Bridge, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = await tenant.public()
    counted = Counted(old_gateway_bridge, monkeypatch)
    await counted.warm_up(old_gateway_bridge, tenant, public)
    asked = [(f"test:{n}", public, f"user-{n}") for n in range(5)]
    await counted.subscribe_at_once(old_gateway_bridge, tenant, *asked)
    assert counted.requests == []  # never batched
    assert counted.responses == [1] * 5
    assert {r.code for r in counted.results.values()} == {0}


async def test_browsers_subscribing_at_once_each_get_their_ack_and_events(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    users = [f"user-{n}" for n in range(20)]
    clients = await asyncio.gather(*(join(dial, bridge, tenant, user) for user in users))
    acks = await asyncio.gather(
        *(client.ok("subscribe", channel_id=channel, since_seq=0) for client in clients)
    )
    assert {ack["result"]["last_seq"] for ack in acks} == {0}
    await tenant.send(channel, "to everyone")
    for client in clients:
        event = await client.event("message:created", channel)
        assert event["data"]["message"]["content"] == "to everyone"
