"""Browser sends over the bridge's Connect stream (``ConnectSend``), not one unary
SendMessage call each: the same answers and error frames as the unary call, a unary call
to a gateway that does not take sends, no message lost or doubled when the stream breaks
mid-send (the browser retries with the same ``client_msg_id``), and each sender's order
kept under concurrent sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from keel.channels.v1 import channels_pb2
from keel.tenants.v1 import tenants_pb2

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.gateway.channels import hub as hub_module
from gateway_bridge.gateway.channels.hub import ConnectHub
from gateway_bridge.gateway.channels.streams import BridgeStream
from gateway_bridge.vocabulary import batch_length
from tests.gateway_bridge.bridge.conftest import WAIT, Dial, Stack, join, running_bridge
from tests.gateway_bridge.conftest import ADMIN, Tenant


class UnaryCalls:
    """Stands in for the link's unary SendMessage, counting calls (and making them)."""

    def __init__(self, bridge: Bridge) -> None:
        self.count = 0
        self._call = bridge.link.stub.SendMessage

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        self.count += 1
        return self._call(*args, **kwargs)  # type: ignore[no-any-return]


def count_unary_sends(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> UnaryCalls:
    calls = UnaryCalls(bridge)
    monkeypatch.setattr(bridge.link.stub, "SendMessage", calls)
    return calls


@pytest.fixture
async def old_gateway_bridge(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Bridge]:
    """A bridge whose Connect stream opened on a gateway that does not take sends (as one
    from before ConnectSend: no CONNECT_SENDS in its initial metadata)."""
    serve = ConnectHub.serve

    def without_sends(self: ConnectHub, requests: Any, context: Any, **_: Any) -> Any:
        return serve(self, requests, context)

    with monkeypatch.context() as patch:
        patch.setattr(ConnectHub, "serve", without_sends)
        async with running_bridge(stack) as bridge:
            assert not bridge.link.stream_sends
            patch.undo()  # only this bridge's stream, opened above
            yield bridge


async def test_a_browser_send_travels_the_connect_stream_not_a_unary_call(
    bridge: Bridge, tenant: Tenant, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    unary = count_unary_sends(bridge, monkeypatch)
    channel = await tenant.group("alice", "bob")
    alice = await join(dial, bridge, tenant, "alice")
    bob = await join(dial, bridge, tenant, "bob")
    await bob.ok("subscribe", channel_id=channel)
    assert bridge.link.stream_sends

    ack = await alice.ok("send", channel_id=channel, content="over the stream", client_msg_id="s1")
    event = await bob.event("message:created", channel)
    retry = await alice.ok(
        "send", channel_id=channel, content="over the stream", client_msg_id="s1"
    )

    assert unary.count == 0
    assert ack["result"] == {
        "message_id": event["data"]["message"]["id"],
        "channel_id": channel,
        "seq": 1,
    }
    assert retry["result"] == ack["result"]  # idempotent by client_msg_id, as before
    stored = await tenant.messages(channel)
    assert [(m.seq, m.user_id, m.content) for m in stored] == [(1, "alice", "over the stream")]


async def test_a_gateway_that_does_not_take_sends_gets_a_unary_call(
    old_gateway_bridge: Bridge, tenant: Tenant, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    unary = count_unary_sends(old_gateway_bridge, monkeypatch)
    channel = await tenant.group("alice")
    alice = await join(dial, old_gateway_bridge, tenant, "alice")
    ack = await alice.ok("send", channel_id=channel, content="unary", client_msg_id="u1")
    assert ack["result"]["seq"] == 1
    assert unary.count == 1


#: Sends the gateway refuses, each with what makes it refuse (docs/protocol.md's codes).
REFUSED: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "not a member": lambda group, _: {"channel_id": group, "content": "hi"},
    "no such channel": lambda _, __: {
        "channel_id": "00000000-0000-4000-8000-000000000000",
        "content": "hi",
    },
    "blank content": lambda group, _: {"channel_id": group, "content": "   "},
    "reply_to not an id": lambda group, _: {"channel_id": group, "content": "x", "reply_to": "z"},
    "U+0000 in content (a bound)": lambda group, _: {"channel_id": group, "content": "a\x00b"},
    "unknown attachment": lambda _, mine: {
        "channel_id": mine,
        "content": "x",
        "attachment_ids": ["00000000-0000-4000-8000-000000000001"],
    },
    "bad message_type": lambda _, mine: {"channel_id": mine, "content": "x", "message_type": "!"},
}


@pytest.mark.parametrize("case", REFUSED)
async def test_a_refused_stream_send_answers_the_error_frame_of_the_unary_call(
    bridge: Bridge,
    old_gateway_bridge: Bridge,
    tenant: Tenant,
    dial: Dial,
    case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = await tenant.group("alice", "bob")  # carol is not a member
    mine = await tenant.group("carol")
    frame = REFUSED[case](group, mine)
    serve, opened = ConnectHub.serve, []

    def counted(self: ConnectHub, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return serve(self, *args, **kwargs)

    monkeypatch.setattr(ConnectHub, "serve", counted)
    frames = []
    for via in (bridge, old_gateway_bridge):
        unary = count_unary_sends(via, monkeypatch)
        carol = await join(dial, via, tenant, "carol")
        frames.append(await carol.error("send", **frame))
        assert unary.count == (0 if via is bridge else 1)
    stream, call = frames
    assert stream == call
    assert stream["code"] in {"permission_denied", "not_found", "invalid_argument"}
    # The refusal was the send's alone: the stream goes on taking sends.
    unary = count_unary_sends(bridge, monkeypatch)
    carol = await join(dial, bridge, tenant, "carol")
    await carol.ok("send", channel_id=mine, content="fine")
    assert unary.count == 0 and bridge.link.stream_sends
    assert opened == []  # no stream ended and was opened again


async def test_an_unanswered_send_fails_unavailable_when_the_link_is_down(
    bridge: Bridge, tenant: Tenant, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing waits past the stream: a send whose answer the gateway never sends ends
    UNAVAILABLE when the stream ends (here: the gateway restarts it)."""
    held = asyncio.Event()
    streams: list[BridgeStream] = []

    async def never_answered(stream: BridgeStream, sends: Any, send: Any) -> None:
        streams.append(stream)
        held.set()

    monkeypatch.setattr(hub_module, "_send", never_answered)
    channel = await tenant.group("alice")
    alice = await join(dial, bridge, tenant, "alice")
    await alice.send({"type": "send", "id": "f1", "channel_id": channel, "content": "x"})
    await asyncio.wait_for(held.wait(), WAIT)
    streams[0].restart()
    refused = await alice.expect(lambda f: f.get("id") == "f1")
    assert (refused["type"], refused["code"]) == ("error", "unavailable")
    assert await tenant.messages(channel) == []


@pytest.mark.parametrize("broken", ["before the commit", "after the commit"])
async def test_a_stream_broken_mid_send_neither_loses_nor_doubles_an_acked_message(
    bridge: Bridge, tenant: Tenant, dial: Dial, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """The stream ends while the send is in flight, before or after the gateway stored it:
    the browser gets ``unavailable``, retries with the same client_msg_id once the link
    is back, and the channel then holds the message exactly once, with the acked id."""
    channel = await tenant.group("alice", "bob")
    alice = await join(dial, bridge, tenant, "alice")
    bob = await join(dial, bridge, tenant, "bob")
    await bob.ok("subscribe", channel_id=channel)
    real_send = hub_module._send
    breaks = 1

    async def break_once(
        stream: BridgeStream, sends: hub_module.Sends, send: channels_pb2.ConnectSend
    ) -> None:
        nonlocal breaks
        if breaks == 0:
            await real_send(stream, sends, send)
            return
        breaks -= 1
        if broken == "after the commit":
            await sends(send)  # stored and published; the answer is lost with the stream
        stream.restart()

    monkeypatch.setattr(hub_module, "_send", break_once)
    frame = {"channel_id": channel, "content": "exactly once", "client_msg_id": "m-1"}
    lost = await alice.error("send", **frame)
    assert lost["code"] == "unavailable"

    # The link went down before the error frame went out; it is back after its backoff.
    async with asyncio.timeout(WAIT):
        await bridge.link.connected.wait()
    assert bridge.link.stream_sends
    ack = await alice.ok("send", **frame)

    stored = await tenant.messages(channel)
    assert [(m.id, m.seq, m.content) for m in stored] == [
        (ack["result"]["message_id"], 1, "exactly once")
    ]
    event = await bob.event("message:created", channel)
    assert event["data"]["message"]["id"] == ack["result"]["message_id"]
    assert [f for f in await bob.flush() if f["type"] == "event"] == []  # once


async def test_concurrent_stream_sends_keep_each_senders_order_and_a_gap_free_seq(
    bridge: Bridge, tenant: Tenant, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten members each pipeline 20 sends (frames written without waiting for acks), all
    at once: every send is acked once, each sender's acks and deliveries keep the order it
    sent in, the channel's seqs are 1..200 without gaps, and every member receives all
    200 in seq order."""
    unary = count_unary_sends(bridge, monkeypatch)
    users = [f"u{i}" for i in range(10)]
    channel = await tenant.group(*users)
    clients = [await join(dial, bridge, tenant, user) for user in users]
    for client in clients:
        await client.ok("subscribe", channel_id=channel)
    per_sender = 20

    async def pipeline(client: Any, user: str) -> list[int]:
        for n in range(per_sender):
            await client.send(
                {
                    "type": "send",
                    "id": f"{user}-{n}",
                    "channel_id": channel,
                    "content": f"{user}:{n}",
                    "client_msg_id": f"{user}-{n}",
                }
            )
        acks = [
            await client.expect(lambda f, n=n: f.get("id") == f"{user}-{n}")
            for n in range(per_sender)
        ]
        assert all(a["type"] == "ack" for a in acks), acks
        return [a["result"]["seq"] for a in acks]

    acked = await asyncio.gather(*(pipeline(c, u) for c, u in zip(clients, users, strict=True)))
    total = per_sender * len(users)
    for seqs in acked:
        assert seqs == sorted(seqs)  # a sender's sends are stored in the order sent
    assert sorted(s for seqs in acked for s in seqs) == list(range(1, total + 1))
    for client in clients:
        assert await client.created_seqs(channel, total) == list(range(1, total + 1))
    stored = await tenant.messages(channel)
    for user in users:
        mine = [m.content for m in stored if m.user_id == user]
        assert mine == [f"{user}:{n}" for n in range(per_sender)]
    assert unary.count == 0


async def test_sends_ready_together_go_up_in_one_request_and_come_back_batched(
    bridge: Bridge, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty sends made at once by the bridge go up as one ConnectSends and their answers
    come back in fewer responses than sends (those ready at once together), each to its
    own caller, with gap-free seqs."""
    channel = await tenant.group("alice")
    link = bridge.link
    requests: list[int] = []
    take_sends = link._take_sends

    def counted_requests() -> channels_pb2.ConnectRequest:
        request = take_sends()
        requests.append(len(request.sends.sends))
        return request

    responses: list[int] = []
    take_results = BridgeStream.take_results

    def counted_responses(stream: BridgeStream) -> channels_pb2.ConnectResponse:
        response = take_results(stream)
        responses.append(len(response.send_results.results))
        return response

    monkeypatch.setattr(link, "_take_sends", counted_requests)
    monkeypatch.setattr(BridgeStream, "take_results", counted_responses)
    sent = await asyncio.gather(
        *(
            link.send_message(
                tenant.id,
                channels_pb2.SendMessageRequest(
                    channel_id=channel, user_id="alice", content=f"m{n}"
                ),
            )
            for n in range(20)
        )
    )
    assert requests == [20]
    assert sum(responses) == 20 and len(responses) < 20, responses
    assert [r.message.content for r in sent] == [f"m{n}" for n in range(20)]
    assert sorted(r.message.seq for r in sent) == list(range(1, 21))


def test_a_batch_ends_at_the_item_that_reaches_its_bytes_or_its_count() -> None:
    assert batch_length([10, 10, 10, 10], max_bytes=25, max_items=100) == 3
    assert batch_length([5_000_000, 1], max_bytes=1 << 20, max_items=100) == 1  # alone
    assert batch_length([1] * 10, max_bytes=1 << 20, max_items=4) == 4
    assert batch_length([], max_bytes=1, max_items=1) == 0


async def test_a_stream_send_over_the_tenant_rate_limit_is_refused_alone(
    bridge: Bridge, stack: Stack, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stream sends draw on the tenant's one rate-limit bucket, as its calls do: past it a
    send is refused ``rate_limited``, takes no seq, and the stream goes
    on (no unary call, no stream opened again)."""
    tenant = await stack.tenant()
    await stack.keel.tenants.UpdateTenant(
        tenants_pb2.UpdateTenantRequest(
            tenant=tenants_pb2.Tenant(
                id=tenant.id,
                rate_limits=tenants_pb2.RateLimits(requests_per_second=1, burst=6),
            ),
            update_mask={"paths": ["rate_limits"]},
        ),
        metadata=ADMIN,
    )
    channel = await tenant.group("alice")  # these calls draw on the same bucket
    alice = await join(dial, bridge, tenant, "alice")
    unary = count_unary_sends(bridge, monkeypatch)
    serve, opened = ConnectHub.serve, []

    def counted(self: ConnectHub, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return serve(self, *args, **kwargs)

    monkeypatch.setattr(ConnectHub, "serve", counted)
    acked: list[int] = []
    for n in range(10):
        reply = await alice.call("send", channel_id=channel, content=f"m{n}")
        if reply["type"] == "error":
            break
        acked.append(reply["result"]["seq"])
    else:
        pytest.fail("ten sends at once never met a burst of six")
    assert reply["code"] == "rate_limited", reply
    assert acked == list(range(1, len(acked) + 1))  # the refused send took no seq
    assert unary.count == 0 and bridge.link.stream_sends and opened == []
