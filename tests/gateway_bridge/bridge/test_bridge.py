"""The WebSocket bridge through real sockets, in front of a real gateway on SQLite.

Each test starts a :class:`~gateway_bridge.bridge.bridge.Bridge` on port 0 the way
``keel serve all`` does (``gateway_bridge.bridge.server.start_bridge``: loopback
gRPC to the gateway, the process's bus, in-memory presence), with the limits
it is about, and talks to it with websockets clients speaking ``keel.v1`` —
or, to be a consumer that stops reading, with a bare socket driven by
websockets' sans-I/O client protocol.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from keel.tenants.v1 import tenants_pb2
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from gateway_bridge.bridge import bridge as bridge_module
from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.gateway.channels.store import SqlChatStore
from service_kit.client_tokens import ISSUER, ClientTokens
from tests.conftest import unique
from tests.gateway_bridge.bridge.conftest import (
    WAIT,
    Dial,
    Json,
    SlowClient,
    Stack,
    join,
    running_bridge,
    start_bridge,
    token_for,
    until,
)
from tests.gateway_bridge.conftest import ADMIN, Tenant

# -- connecting: tokens, origins, limits ---------------------------------------------------


async def test_welcome_names_the_connection_user_and_tenant(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    client = await join(dial, bridge, tenant, "alice")
    assert client.ws.subprotocol == "keel.v1"
    welcome = client.welcome
    assert welcome == {
        "type": "welcome",
        "protocol": "keel.v1",
        "connection_id": welcome["connection_id"],
        "user_id": "alice",
        "tenant_id": tenant.id,
        "expire_time": welcome["expire_time"],
        "files_url": welcome["files_url"],
    }
    assert len(welcome["connection_id"]) == 32
    expires = datetime.fromisoformat(welcome["expire_time"])  # the token's expiry, RFC 3339
    assert (
        datetime.now(UTC) + timedelta(minutes=50)
        < expires
        < datetime.now(UTC) + timedelta(minutes=70)
    )
    other = await join(dial, bridge, tenant, "alice")
    assert other.welcome["connection_id"] != welcome["connection_id"]


async def test_ping_is_answered_with_pong(bridge: Bridge, tenant: Tenant, dial: Dial) -> None:
    client = await join(dial, bridge, tenant, "alice")
    assert await client.call("ping") == {"type": "pong", "id": "ping-1"}
    await client.send({"type": "ping", "id": 42})
    assert await client.expect(lambda f: True) == {"type": "pong", "id": 42}


async def test_the_token_may_come_in_the_first_frame(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    client = await dial(bridge)
    await client.send({"type": "auth", "token": await token_for(tenant, "bob")})
    welcome = await client.expect(lambda f: True)
    assert welcome["type"] == "welcome" and welcome["user_id"] == "bob"
    assert (await client.call("ping"))["type"] == "pong"
    # Once authenticated, another auth frame renews the token (the same user's only).
    error = await client.error("auth", token="x")
    assert error["code"] == "invalid_argument" and "malformed client token" in error["message"]
    assert (await client.call("ping"))["type"] == "pong"


@pytest.mark.parametrize(
    "forge",
    [
        lambda tenant_id, secret: "not-a-token",
        lambda tenant_id, secret: ClientTokens("another-secret-" + "x" * 32).issue(
            tenant_id, "alice", 60
        )[0],
        lambda tenant_id, secret: jwt.encode(
            {"iss": ISSUER, "aud": "elsewhere", "sub": "alice", "tid": tenant_id, "iat": 1}
            | {"exp": 9_999_999_999},
            secret,
            algorithm="HS256",
        ),
        lambda tenant_id, secret: ClientTokens(secret).issue(
            "00000000-0000-4000-8000-000000000000", "alice", 60
        )[0],
    ],
    ids=["garbage", "other-secret", "wrong-audience", "unknown-tenant"],
)
async def test_a_bad_or_forged_token_is_closed_with_4001(
    stack: Stack,
    bridge: Bridge,
    tenant: Tenant,
    dial: Dial,
    forge: Callable[[str, str], str],
) -> None:
    secret = stack.runtime.settings.token_secret
    assert secret is not None
    client = await dial(bridge, forge(tenant.id, secret))
    code, _ = await client.closed()
    assert code == 4001
    assert client.log == []  # never welcomed


async def test_a_bad_first_frame_is_closed_with_4001(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    for first in ('{"type": "ping"}', "not json", '{"type": "auth"}'):
        client = await dial(bridge)
        await client.send(first)
        assert (await client.closed())[0] == 4001, first


async def test_an_expired_token_is_closed_with_4002(
    stack: Stack, bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    secret = stack.runtime.settings.token_secret
    assert secret is not None
    an_hour_ago = ClientTokens(secret, clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    token, expired_at = an_hour_ago.issue(tenant.id, "alice", 60)
    assert expired_at < datetime.now(UTC)
    client = await dial(bridge, token)
    assert await client.closed() == (4002, "client token expired")
    # The same holds when the token comes in the first frame.
    client = await dial(bridge)
    await client.send({"type": "auth", "token": token})
    assert (await client.closed())[0] == 4002


async def test_no_token_within_the_handshake_timeout_is_closed_with_4004(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    async with running_bridge(stack, handshake_timeout=0.5) as bridge:
        client = await dial(bridge)
        started = asyncio.get_running_loop().time()
        code, _ = await client.closed()
        assert code == 4004
        assert 0.4 < asyncio.get_running_loop().time() - started < 5


async def test_origins(stack: Stack, bridge: Bridge, dial: Dial) -> None:
    tenant = await stack.tenant("chat:*", allowed_origins=("https://ok.example",))
    refused = await join_or_close(dial, bridge, tenant, origin="https://evil.example")
    assert refused == (4003, "origin 'https://evil.example' is not allowed")
    assert await join_or_close(dial, bridge, tenant, origin="https://ok.example") == "welcome"
    # Exact match only: another scheme, port or a subdomain is another origin.
    for near_miss in ("http://ok.example", "https://ok.example:8443", "https://a.ok.example"):
        assert (await join_or_close(dial, bridge, tenant, origin=near_miss))[0] == 4003
    # No Origin header: not a browser, accepted unless the tenant requires one.
    assert await join_or_close(dial, bridge, tenant) == "welcome"
    strict = await stack.tenant("chat:*", allowed_origins=("https://ok.example",))
    await stack.keel.tenants.UpdateTenant(
        tenants_pb2.UpdateTenantRequest(
            tenant=tenants_pb2.Tenant(id=strict.id, require_origin=True),
            update_mask={"paths": ["require_origin"]},
        ),
        metadata=ADMIN,
    )
    assert (await join_or_close(dial, bridge, strict))[0] == 4003
    assert await join_or_close(dial, bridge, strict, origin="https://ok.example") == "welcome"
    # The bridge's own origin (its /demo page) is always accepted.
    own = f"http://127.0.0.1:{bridge.port}"
    assert await join_or_close(dial, bridge, strict, origin=own) == "welcome"


async def join_or_close(
    dial: Dial, bridge: Bridge, tenant: Tenant, **options: Any
) -> str | tuple[int, str]:
    client = await dial(bridge, await token_for(tenant, "alice"), **options)
    try:
        async with asyncio.timeout(WAIT):
            first = json.loads(await client.ws.recv())
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code, exc.rcvd.reason
    assert first["type"] == "welcome"
    return "welcome"


async def test_too_many_connections_are_closed_with_4005(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    async with running_bridge(stack, max_connections_per_user=2) as bridge:
        first = await join(dial, bridge, tenant, "alice")
        await join(dial, bridge, tenant, "alice")
        third = await dial(bridge, await token_for(tenant, "alice"))
        assert await third.closed() == (4005, "too many connections for this user")
        await join(dial, bridge, tenant, "bob")  # per user, not per tenant
        await first.ws.close()
        await asyncio.sleep(0.05)
        await join(dial, bridge, tenant, "alice")  # a freed place is reusable
    async with running_bridge(stack, max_connections_per_tenant=2) as bridge:
        await join(dial, bridge, tenant, "alice")
        await join(dial, bridge, tenant, "bob")
        refused = await dial(bridge, await token_for(tenant, "carol"))
        assert await refused.closed() == (4005, "too many connections")
        other_tenant = await stack.tenant()
        await join(dial, bridge, other_tenant, "carol")


async def test_a_frame_over_the_size_limit_is_closed_with_1009(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    async with running_bridge(stack, max_frame_bytes=1024) as bridge:
        client = await join(dial, bridge, tenant, "alice")
        ack = await client.ok("send", channel_id=channel, content="x" * 900)
        assert ack["result"]["seq"] == 1
        await client.send({"type": "send", "channel_id": channel, "content": "x" * 2000})
        assert (await client.closed())[0] == 1009
        assert [m.seq for m in await tenant.messages(channel)] == [1]


async def test_rate_limit_then_close_with_4009_when_flooding(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    async with running_bridge(stack, messages_per_second=2.0, burst=3) as bridge:
        polite = await join(dial, bridge, tenant, "alice")
        for _ in range(3):
            assert (await polite.call("ping"))["type"] == "pong"
        await polite.send({"type": "ping", "id": "over"})
        refused = await polite.expect(lambda f: True)
        assert refused == {
            "type": "error",
            "code": "rate_limited",
            "message": "slow down",
            "id": "over",
        }
        await asyncio.sleep(0.55)  # one token back at 2/s
        assert (await polite.call("ping"))["type"] == "pong"

        flood = await join(dial, bridge, tenant, "bob")
        for i in range(80):
            try:
                await flood.send({"type": "ping", "id": i})
            except ConnectionClosed:
                break
        code, reason = await flood.closed()
        assert (code, reason) == (4009, "rate limited")
        pongs = [f for f in flood.log if f["type"] == "pong"]
        errors = [f for f in flood.log if f["type"] == "error"]
        assert [f["id"] for f in pongs] == [0, 1, 2]
        assert len(errors) == 49  # the 50th refusal in a row closes
        assert all(f["code"] == "rate_limited" for f in errors)
        assert [f["id"] for f in errors] == list(range(3, 52))
        assert (await polite.call("ping"))["type"] == "pong"  # others are unaffected


async def test_stop_closes_every_client_with_1012(stack: Stack, tenant: Tenant, dial: Dial) -> None:
    channel = await tenant.public()
    bridge = await start_bridge(stack)
    try:
        idle = await join(dial, bridge, tenant, "alice")
        subscribed = await join(dial, bridge, tenant, "bob")
        await subscribed.ok("subscribe", channel_id=channel)
    finally:
        await bridge.stop()
    for client in (idle, subscribed):
        assert await client.closed() == (1012, "server restart")


async def test_stop_closes_a_connection_still_authenticating_with_1012(
    stack: Stack, dial: Dial
) -> None:
    bridge = await start_bridge(stack, handshake_timeout=3.0)
    unauthenticated = await dial(bridge)
    stopping = asyncio.create_task(bridge.stop())
    try:
        async with asyncio.timeout(1.5):
            assert await unauthenticated.closed() == (1012, "server restart")
            await stopping
    finally:
        await stopping


async def test_http_endpoints(bridge: Bridge) -> None:
    async def get(path: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            return int(head.split(b" ")[1]), await reader.readexactly(length)
        finally:
            writer.close()
            await writer.wait_closed()

    assert await get("/healthz") == (200, b"ok\n")
    status, body = await get("/ws")
    assert status == 426 and b"keel.v1" in body
    assert (await get("/nope"))[0] == 404
    assert (await get("/keel.js"))[0] == 200
    assert (await get("/demo"))[0] == 200


# -- subscriptions, replay and live delivery -----------------------------------------------


async def test_subscribe_delivers_live_events_only(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    await tenant.send(channel, "before anyone listens")
    alice = await join(dial, bridge, tenant, "alice")
    ack = await alice.ok("subscribe", channel_id=channel)
    assert ack == {
        "type": "ack",
        "id": "subscribe-1",
        "result": {"channel_id": channel, "last_seq": 1},
    }
    await tenant.send(channel, "live", user_id="bob")
    event = await alice.event("message:created", channel)
    assert event["seq"] == 2 and event["event_id"]
    message = event["data"]["message"]
    assert (message["content"], message["user_id"], message["seq"]) == ("live", "bob", 2)
    # Not replayed: seq 1. (bob writing in the public channel joined it: user:joined.)
    assert [f["seq"] for f in alice.log if f.get("event") == "message:created"] == [2]


async def test_subscribing_again_acks_with_the_current_seq(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    first = await alice.ok("subscribe", channel_id=channel)
    assert first["result"] == {"channel_id": channel, "last_seq": 0}
    await tenant.send(channel, "one")
    assert (await alice.event("message:created", channel))["seq"] == 1
    again = await alice.ok("subscribe", channel_id=channel)
    assert again["result"] == {"channel_id": channel, "last_seq": 1}


async def test_subscribe_with_since_seq_replays_then_acks_then_goes_live(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    for i in range(5):
        await tenant.send(channel, f"m{i + 1}")
    alice = await join(dial, bridge, tenant, "alice")
    ack = await alice.ok("subscribe", channel_id=channel, since_seq=2)
    assert ack["result"] == {"channel_id": channel, "last_seq": 5}
    replayed = [f for f in alice.log if f["type"] == "event"]
    assert [f["seq"] for f in replayed] == [3, 4, 5]
    assert [f["data"]["message"]["content"] for f in replayed] == ["m3", "m4", "m5"]
    assert all(f["event"] == "message:created" for f in replayed)
    alice.inbox.clear()
    await tenant.send(channel, "m6")
    assert (await alice.event("message:created", channel))["seq"] == 6


@pytest.mark.parametrize("room_already_live", [False, True], ids=["new-room", "shared-room"])
@pytest.mark.parametrize("since_seq", [0, 7])
async def test_no_gap_and_no_duplicate_at_the_replay_live_seam(
    bridge: Bridge,
    tenant: Tenant,
    dial: Dial,
    room_already_live: bool,
    since_seq: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The replay reads the database only once two more messages were stored (and
    # published) meanwhile, so live events certainly arrive while it runs.
    list_messages = SqlChatStore.list_messages
    progress = {"stored": 0, "sending": False}

    async def slow_list_messages(self: SqlChatStore, *args: Any, **kwargs: Any) -> Any:
        wanted = progress["stored"] + 2
        for _ in range(200):
            if progress["stored"] >= wanted or not progress["sending"]:
                break
            await asyncio.sleep(0.005)
        return await list_messages(self, *args, **kwargs)

    monkeypatch.setattr(SqlChatStore, "list_messages", slow_list_messages)
    total, before = 60, 15
    for _ in range(3):
        channel = await tenant.public()
        for i in range(before):
            await tenant.send(channel, f"m{i + 1}")
        watcher = await join(dial, bridge, tenant, "bob")
        if room_already_live:
            await watcher.ok("subscribe", channel_id=channel)
        reader = await join(dial, bridge, tenant, "carol")

        async def send_the_rest(channel: str = channel) -> None:
            try:
                for i in range(before, total):
                    await tenant.send(channel, f"m{i + 1}")
                    progress["stored"] += 1
            finally:
                progress["sending"] = False

        progress["sending"] = True
        sender = asyncio.create_task(send_the_rest())
        await asyncio.sleep(0.02)  # messages are being sent while the replay runs
        ack = await reader.ok("subscribe", channel_id=channel, since_seq=since_seq)
        await sender
        seqs = await reader.created_seqs(channel, until=total)
        assert seqs == list(range(since_seq + 1, total + 1))

        # Replayed events come before the ack, live ones after it; the replay covered
        # messages sent during the subscribe, and live ones followed.
        at = reader.log.index(ack)
        last = ack["result"]["last_seq"]
        assert before + 2 <= last < total
        replayed = [f["seq"] for f in reader.log[:at] if f["type"] == "event"]
        live = [f["seq"] for f in reader.log[at:] if f["type"] == "event"]
        assert replayed == list(range(since_seq + 1, last + 1))
        assert live == list(range(last + 1, total + 1))
        assert [f for f in await reader.flush() if f["type"] == "event"] == []
        if room_already_live:
            assert await watcher.created_seqs(channel, until=total) == list(
                range(before + 1, total + 1)
            )


async def test_unsubscribe_stops_events(bridge: Bridge, tenant: Tenant, dial: Dial) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    bob = await join(dial, bridge, tenant, "bob")
    await alice.ok("subscribe", channel_id=channel)
    await bob.ok("subscribe", channel_id=channel)
    await tenant.send(channel, "one")
    assert (await alice.event("message:created"))["seq"] == 1
    assert (await bob.event("message:created"))["seq"] == 1
    ack = await alice.ok("unsubscribe", channel_id=channel)
    assert ack["result"] == {"channel_id": channel}
    await tenant.send(channel, "two")
    assert (await bob.event("message:created"))["seq"] == 2
    # The bridge writes an event to every subscriber in one go: had alice been sent
    # seq 2, it would have arrived before the pong.
    assert [f for f in await alice.flush() if f["type"] == "event"] == []
    again = await alice.error("unsubscribe", channel_id=channel)
    assert again["code"] == "not_subscribed"
    # Subscribing again resumes.
    await alice.ok("subscribe", channel_id=channel, since_seq=1)
    assert (await alice.event("message:created"))["seq"] == 2


async def test_max_subscriptions(stack: Stack, tenant: Tenant, dial: Dial) -> None:
    first, second = await tenant.public(), await tenant.public()
    async with running_bridge(stack, max_subscriptions=1) as bridge:
        alice = await join(dial, bridge, tenant, "alice")
        await alice.ok("subscribe", channel_id=first)
        error = await alice.error("subscribe", channel_id=second)
        assert error["code"] == "too_many_subscriptions"
        await alice.ok("unsubscribe", channel_id=first)
        await alice.ok("subscribe", channel_id=second)


# -- writing: send, edit, delete, react, read ----------------------------------------------


async def test_send_acks_durably_and_reaches_other_subscribers(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    bob = await join(dial, bridge, tenant, "bob")
    await alice.ok("subscribe", channel_id=channel)
    await bob.ok("subscribe", channel_id=channel)
    ack = await alice.ok("send", channel_id=channel, content="hello", client_msg_id="c-1")
    result = ack["result"]
    assert result == {"message_id": result["message_id"], "channel_id": channel, "seq": 1}
    stored = await tenant.messages(channel)
    assert [(m.id, m.seq, m.user_id, m.content) for m in stored] == [
        (result["message_id"], 1, "alice", "hello")
    ]
    event = await bob.event("message:created", channel)
    assert event["data"]["message"]["id"] == result["message_id"]
    assert (await alice.event("message:created", channel))["seq"] == 1  # the sender too

    # A retry with the same client_msg_id is the same message, stored once.
    retry = await alice.ok("send", channel_id=channel, content="hello", client_msg_id="c-1")
    assert retry["result"] == result
    assert len(await tenant.messages(channel)) == 1
    assert [f for f in await bob.flush() if f["type"] == "event"] == []
    # client_msg_id is the user's own: bob's "c-1" is another message.
    other = await bob.ok("send", channel_id=channel, content="hi", client_msg_id="c-1")
    assert other["result"]["seq"] == 2 and other["result"]["message_id"] != result["message_id"]
    reply = await bob.ok(
        "send", channel_id=channel, content="re", reply_to=result["message_id"], message_type="text"
    )
    assert reply["result"]["seq"] == 3
    created = await alice.event("message:created", channel)
    assert created["seq"] == 2
    created = await alice.event("message:created", channel)
    assert created["data"]["message"]["reply_to"] == result["message_id"]


async def test_edit_delete_react_unreact(bridge: Bridge, tenant: Tenant, dial: Dial) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    bob = await join(dial, bridge, tenant, "bob")
    await bob.ok("subscribe", channel_id=channel)
    sent = await alice.ok("send", channel_id=channel, content="frist")
    message_id = sent["result"]["message_id"]
    await bob.event("message:created", channel)

    edited = await alice.ok("edit", channel_id=channel, message_id=message_id, content="first")
    assert edited["result"] == {"message_id": message_id}
    event = await bob.event("message:updated", channel)
    assert event["data"]["message"]["content"] == "first" and event["data"]["message"]["edited"]

    reacted = await bob.ok("react", channel_id=channel, message_id=message_id, emoji="👍")
    assert reacted["result"] == {"message_id": message_id, "reactions": {"👍": 1}}
    await alice.ok("subscribe", channel_id=channel)
    reacted = await alice.ok("react", channel_id=channel, message_id=message_id, emoji="👍")
    assert reacted["result"]["reactions"] == {"👍": 2}
    added = await bob.event("reaction:added", channel)
    assert added["data"]["user_id"] == "bob"
    added = await bob.event("reaction:added", channel)
    assert added["data"]["user_id"] == "alice"
    unreacted = await bob.ok("unreact", channel_id=channel, message_id=message_id, emoji="👍")
    assert unreacted["result"] == {"message_id": message_id, "reactions": {"👍": 1}}
    assert (await alice.event("reaction:removed", channel))["data"]["user_id"] == "bob"

    # Only the sender edits.
    refused = await bob.error("edit", channel_id=channel, message_id=message_id, content="mine")
    assert refused["code"] == "permission_denied"
    deleted = await alice.ok("delete", channel_id=channel, message_id=message_id)
    assert deleted["result"] == {"message_id": message_id}
    event = await bob.event("message:deleted", channel)
    assert event["data"]["message"]["id"] == message_id and event["data"]["message"]["deleted"]


async def test_read_acks_the_last_read_seq(bridge: Bridge, tenant: Tenant, dial: Dial) -> None:
    channel = await tenant.group("alice", "bob")
    alice = await join(dial, bridge, tenant, "alice")
    for text in ("a", "b", "c"):
        await tenant.send(channel, text, user_id="bob")
    ack = await alice.ok("read", channel_id=channel, seq=2)
    assert ack["result"] == {"last_read_seq": 2}
    members = {m.user_id: m.last_read_seq for m in await tenant.members(channel)}
    assert members["alice"] == 2


# -- typing and presence -------------------------------------------------------------------


async def test_typing_reaches_others_but_not_the_sender(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    bob = await join(dial, bridge, tenant, "bob")
    error = await alice.error("typing", channel_id=channel)
    assert error["code"] == "not_subscribed"
    await alice.ok("subscribe", channel_id=channel)
    await bob.ok("subscribe", channel_id=channel)
    assert await alice.call("typing", channel_id=channel) == {"type": "ack", "id": "typing-3"}
    typing = await bob.expect(lambda f: f["type"] == "typing")
    assert typing == {"type": "typing", "channel_id": channel, "user_id": "alice"}
    assert [f for f in await alice.flush() if f["type"] == "typing"] == []
    # Without an id, typing is not acknowledged.
    await bob.send({"type": "typing", "channel_id": channel})
    assert (await alice.expect(lambda f: f["type"] == "typing"))["user_id"] == "bob"
    assert [f for f in await bob.flush() if f["type"] in ("typing", "ack")] == []


async def test_presence_lists_users_and_announces_arrivals_and_departures(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant("chat:*", "presence:*")
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    error = await alice.error("presence", channel_id=channel)
    assert error["code"] == "not_subscribed"
    await alice.ok("subscribe", channel_id=channel)
    online = await alice.event("presence:online", channel)
    assert online == {
        "type": "event",
        "event": "presence:online",
        "channel_id": channel,
        "seq": 0,
        "event_id": "",
        "data": {"user_id": "alice"},
    }
    assert await alice.call("presence", channel_id=channel) == {
        "type": "presence",
        "channel_id": channel,
        "users": ["alice"],
        "id": "presence-3",
    }
    bob = await join(dial, bridge, tenant, "bob")
    await bob.ok("subscribe", channel_id=channel)
    assert (await alice.event("presence:online", channel))["data"] == {"user_id": "bob"}
    assert (await alice.call("presence", channel_id=channel))["users"] == ["alice", "bob"]
    # A second connection of bob's changes nothing; his last one leaving does.
    bob_again = await join(dial, bridge, tenant, "bob")
    await bob_again.ok("subscribe", channel_id=channel)
    await bob.ws.close()
    assert (await alice.call("presence", channel_id=channel))["users"] == ["alice", "bob"]
    await bob_again.ws.close()
    offline = await alice.event("presence:offline", channel)
    assert offline["data"] == {"user_id": "bob"}
    assert (await alice.call("presence", channel_id=channel))["users"] == ["alice"]
    assert [f for f in alice.log if f.get("event") == "presence:online"] == [
        online,
        {**online, "data": {"user_id": "bob"}},
    ]


async def test_presence_needs_the_presence_scope(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    await alice.ok("subscribe", channel_id=channel)
    bob = await join(dial, bridge, tenant, "bob")
    await bob.ok("subscribe", channel_id=channel)
    error = await alice.error("presence", channel_id=channel)
    assert error["code"] == "permission_denied"
    assert [f for f in await alice.flush() if f.get("event", "").startswith("presence:")] == []


# -- bad input -----------------------------------------------------------------------------


async def still_delivering(bridge: Bridge, tenant: Tenant, dial: Dial, channel: str) -> None:
    """Another client of the bridge still receives the channel's messages."""
    witness = await join(dial, bridge, tenant, unique("witness"))
    await witness.ok("subscribe", channel_id=channel)
    sent = await tenant.send(channel, "still here")
    assert (await witness.event("message:created", channel))["seq"] == sent.seq


async def test_bad_frames_get_an_error_and_the_connection_stays_open(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    for text in ("{not json", "[1, 2]", '"ping"'):
        await alice.send(text)
        error = await alice.expect(lambda f: f["type"] == "error")
        assert error["code"] == "bad_frame" and "id" not in error
    await alice.send(b'{"type": "ping", "id": "b"}')
    error = await alice.expect(lambda f: f["type"] == "error")
    assert error["code"] == "bad_frame" and "binary" in error["message"]
    cases = [
        ({"type": "shout", "id": "u1"}, "unknown frame type"),
        ({"type": "send", "id": "m1", "channel_id": channel}, '"content" is required'),
        ({"type": "subscribe", "id": "m2"}, '"channel_id" is required'),
        ({"type": "read", "id": "w1", "channel_id": channel, "seq": "2"}, '"seq" must be'),
        ({"type": "subscribe", "id": 7, "channel_id": channel, "since_seq": -1}, "since_seq"),
    ]
    for frame, words in cases:
        await alice.send(frame)
        error = await alice.expect(lambda f, i=frame["id"]: f.get("id") == i)
        assert error["type"] == "error" and error["code"] == "bad_frame", error
        assert words in error["message"]
    assert (await alice.call("ping"))["type"] == "pong"
    await alice.ok("subscribe", channel_id=channel)
    await still_delivering(bridge, tenant, dial, channel)


async def test_numbers_past_64_bits_lone_surrogates_and_deep_nesting_keep_the_connection(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    """Each would fail further in (a protobuf field, a UTF-8 encoder, the JSON parser's
    recursion): the bridge answers ``bad_frame`` and nothing is sent or closed (no 1011)."""
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    await alice.ok("subscribe", channel_id=channel)
    at = f'"channel_id":"{channel}"'
    nasty = [
        f'{{"type":"read","id":"r",{at},"seq":{2**64}}}',
        f'{{"type":"send","id":"s",{at},"content":"\\ud800"}}',
        f'{{"type":"react","id":"e",{at},"message_id":"m","emoji":"\\udfff"}}',
        '{"type":"ping","id":"\\ud800"}',
        '{"type":"ping","x":' + "[" * 20_000 + "]" * 20_000 + "}",  # within 64 KiB
    ]
    for text in nasty:
        await alice.send(text)
        error = await alice.expect(lambda f: f["type"] == "error")
        assert error["code"] == "bad_frame", error
    assert (await alice.call("ping"))["type"] == "pong"
    assert await tenant.messages(channel) == []
    await still_delivering(bridge, tenant, dial, channel)


async def test_another_tenants_channel_is_not_found(
    stack: Stack, bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    other = await stack.tenant()
    theirs = await other.public()
    await other.send(theirs, "private to the other tenant")
    alice = await join(dial, bridge, tenant, "alice")
    error = await alice.error("subscribe", channel_id=theirs, since_seq=0)
    assert error["code"] == "not_found"
    assert (await alice.error("send", channel_id=theirs, content="x"))["code"] == "not_found"
    assert [f for f in await alice.flush() if f["type"] == "event"] == []
    assert len(await other.messages(theirs)) == 1
    await still_delivering(bridge, other, dial, theirs)


async def test_another_tenants_channel_is_not_found_without_a_replay(
    stack: Stack, bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    """Without ``since_seq`` nothing is read back, so only the subscription's own tenant
    check stands between a client and another tenant's live events."""
    other = await stack.tenant()
    theirs = await other.public()
    alice = await join(dial, bridge, tenant, "alice")
    error = await alice.error("subscribe", channel_id=theirs)
    assert error["code"] == "not_found"
    await other.send(theirs, "live in the other tenant")
    assert [f for f in await alice.flush() if f["type"] == "event"] == []
    error = await alice.error("typing", channel_id=theirs)
    assert error["code"] == "not_subscribed"
    await still_delivering(bridge, other, dial, theirs)


async def test_a_tenant_without_chat_write_cannot_write_through_the_bridge(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    """The bridge acts for the tenant; the gateway checks the tenant's current scopes on
    every call it makes, as it does for the tenant's own calls (docs/auth.md)."""
    tenant = await stack.tenant()
    channel = await tenant.public()
    message = await tenant.send(channel, "before the scope was taken away")
    alice = await join(dial, bridge, tenant, "alice")
    await alice.ok("subscribe", channel_id=channel)
    await stack.keel.set_permissions(tenant, "chat:read")
    ids = {"channel_id": channel, "message_id": message.id}
    for kind, fields in [
        ("send", {"channel_id": channel, "content": "x", "client_msg_id": "c1"}),
        ("edit", {**ids, "content": "changed"}),
        ("delete", ids),
        ("react", {**ids, "emoji": "x"}),
        ("unreact", {**ids, "emoji": "x"}),
        ("read", {"channel_id": channel, "seq": 1}),
    ]:
        error = await alice.error(kind, **fields)
        assert error["code"] == "permission_denied", (kind, error)
        assert "chat:write" in error["message"], (kind, error)
    await stack.keel.set_permissions(tenant, "chat:*")
    stored = await tenant.messages(channel)
    assert [(m.content, m.edited, m.deleted, list(m.reaction_counts)) for m in stored] == [
        ("before the scope was taken away", False, False, [])
    ]
    assert [f for f in await alice.flush() if f["type"] == "event"] == []


async def test_a_non_member_of_a_group_is_denied_without_a_replay(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.group("alice", "bob")
    mallory = await join(dial, bridge, tenant, "mallory")
    error = await mallory.error("subscribe", channel_id=channel)
    assert error["code"] == "permission_denied" and "mallory" in error["message"]
    await tenant.send(channel, "members only")
    assert [f for f in await mallory.flush() if f["type"] == "event"] == []


async def test_a_non_member_of_a_group_is_denied(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.group("alice", "bob")
    await tenant.send(channel, "members only")
    mallory = await join(dial, bridge, tenant, "mallory")
    error = await mallory.error("subscribe", channel_id=channel, since_seq=0)
    assert error["code"] == "permission_denied" and "mallory" in error["message"]
    refused = await mallory.error("send", channel_id=channel, content="let me in")
    assert refused["code"] == "permission_denied"
    assert [f for f in await mallory.flush() if f["type"] == "event"] == []
    assert len(await tenant.messages(channel)) == 1
    bob = await join(dial, bridge, tenant, "bob")
    await bob.ok("subscribe", channel_id=channel)
    await tenant.send(channel, "still members only")
    assert (await bob.event("message:created", channel))["seq"] == 2


async def test_invalid_arguments(bridge: Bridge, tenant: Tenant, dial: Dial) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    for kind, fields in [
        ("subscribe", {}),
        ("send", {"content": "x"}),
        ("typing", {}),
        ("read", {"seq": 1}),
    ]:
        error = await alice.error(kind, channel_id="not-a-uuid", **fields)
        assert error["code"] == "invalid_argument" and "not-a-uuid" in error["message"]
    empty = await alice.error("send", channel_id=channel, content="")
    assert empty["code"] == "invalid_argument"
    assert await tenant.messages(channel) == []
    await still_delivering(bridge, tenant, dial, channel)


# -- slow consumers ------------------------------------------------------------------------


async def test_a_slow_consumer_is_closed_with_4008_and_others_get_everything(
    stack: Stack, tenant: Tenant, dial: Dial, monkeypatch: pytest.MonkeyPatch
) -> None:
    # carol reads again only after the checks below; on a busy machine that can take
    # longer than the bridge's 2 s close timeout, after which it drops the socket without
    # the close frame (the next test pins that). Here the close frame itself is checked.
    monkeypatch.setattr(bridge_module, "_CLOSE_TIMEOUT", WAIT)
    limit, total = 8192, 60
    content = "y" * 3000
    channel = await tenant.public()
    async with running_bridge(stack, send_buffer_bytes=limit) as bridge:
        fast = await join(dial, bridge, tenant, "bob")
        await fast.ok("subscribe", channel_id=channel)
        slow = await SlowClient.open(bridge.port, await token_for(tenant, "carol"))
        try:
            (welcome,) = await slow.read()
            assert isinstance(welcome, dict) and welcome["type"] == "welcome"
            await slow.send({"type": "subscribe", "id": "s", "channel_id": channel})
            (ack,) = await slow.read()
            assert isinstance(ack, dict) and ack["type"] == "ack"
            # The slow connection as the bridge holds it; a small kernel send buffer
            # makes the backlog show up in the bridge's own buffer at once.
            conn = bridge.connection(welcome["connection_id"])
            assert conn is not None
            transport = conn.ws.transport
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, transport.get_write_buffer_size())
                    await asyncio.sleep(0.001)

            watcher = asyncio.create_task(watch())
            try:
                # carol stops reading; the channel carries traffic.
                for i in range(total):
                    await tenant.send(channel, f"{i + 1}:{content}")
                assert await fast.created_seqs(channel, until=total) == list(range(1, total + 1))
                await until(lambda: conn.closed)
            finally:
                watcher.cancel()
            frame_size = len(content) + 2000
            assert limit < peak <= limit + frame_size, peak
            assert [c.user_id for c in bridge.live_connections(tenant.id, channel)] == ["bob"]

            # carol reads again: what was sent is a gap-free prefix, then close 4008.
            received: list[Json | Close] = []
            while not received or not isinstance(received[-1], Close):
                received += await slow.read()
            close = received.pop()
            assert isinstance(close, Close) and (close.code, close.reason) == (
                4008,
                "slow consumer",
            )
            seqs = [f["seq"] for f in received if isinstance(f, dict)]
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < total
        finally:
            slow.close()

        # She resumes from the last seq she has and misses nothing.
        carol = await join(dial, bridge, tenant, "carol")
        await carol.ok("subscribe", channel_id=channel, since_seq=seqs[-1] if seqs else 0)
        assert await carol.created_seqs(channel, until=total) == list(
            range(len(seqs) + 1, total + 1)
        )
        await tenant.send(channel, "after")
        assert (await fast.event("message:created", channel))["seq"] == total + 1


async def test_a_slow_consumer_that_never_reads_is_disconnected_within_the_close_timeout(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    async with running_bridge(stack, send_buffer_bytes=8192) as bridge:
        slow = await SlowClient.open(bridge.port, await token_for(tenant, "carol"))
        try:
            (welcome,) = await slow.read()
            assert isinstance(welcome, dict)
            await slow.send({"type": "subscribe", "id": "s", "channel_id": channel})
            await slow.read()
            conn = bridge.connection(welcome["connection_id"])
            assert conn is not None
            conn.ws.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            i = 0
            # With no send-buffer limit this loop would never end: fail fast instead.
            async with asyncio.timeout(WAIT):
                while not conn.closed:
                    i += 1
                    await tenant.send(channel, f"{i}:" + "y" * 3000)
            # The bridge's close_timeout is 2 s; give it 4.
            async with asyncio.timeout(4):
                await conn.ws.wait_closed()
        finally:
            slow.close()


# -- the gateway link ----------------------------------------------------------------------


async def test_after_the_connect_stream_ends_delivery_resumes_without_gap_or_duplicate(
    stack: Stack, bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    await alice.ok("subscribe", channel_id=channel)
    for i in range(5):
        await tenant.send(channel, f"m{i + 1}")
    assert await alice.created_seqs(channel, until=5) == [1, 2, 3, 4, 5]
    # The bus reconnecting makes the gateway end every Connect stream (events may have
    # been missed); the bridge reconnects and resubscribes from the seqs it delivered.
    stack.runtime.bus.announce_reconnect()
    for i in range(5, 20):
        await tenant.send(channel, f"m{i + 1}")
        await asyncio.sleep(0.01)
    assert await alice.created_seqs(channel, until=20) == list(range(6, 21))
    assert [f for f in await alice.flush() if f["type"] == "event"] == []


async def test_subscribing_while_the_link_resubscribes(
    stack: Stack, tenant: Tenant, dial: Dial
) -> None:
    followed = [await tenant.public() for _ in range(60)]
    new = [await tenant.public() for _ in range(40)]
    async with running_bridge(stack, burst=1000) as bridge:
        await subscribe_while_resubscribing(stack, bridge, tenant, dial, followed, new)


async def subscribe_while_resubscribing(
    stack: Stack, bridge: Bridge, tenant: Tenant, dial: Dial, followed: list[str], new: list[str]
) -> None:
    alice = await join(dial, bridge, tenant, "alice")
    for channel in followed:
        await alice.ok("subscribe", channel_id=channel)
    bob = await join(dial, bridge, tenant, "bob")
    stack.runtime.bus.announce_reconnect()
    for i, channel in enumerate(new):
        await bob.send({"type": "subscribe", "id": f"n{i}", "channel_id": channel})
        await asyncio.sleep(0.005)
    for i in range(len(new)):
        reply = await bob.expect(lambda f, i=i: f.get("id") == f"n{i}", within=3)
        assert reply["type"] == "ack", reply
    await tenant.send(followed[-1], "still live")
    assert (await alice.event("message:created", followed[-1]))["seq"] == 1
