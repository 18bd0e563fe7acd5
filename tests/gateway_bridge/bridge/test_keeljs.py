"""keel.js against a real bridge, under Node's own WebSocket (no browser needed for
behaviour that has nothing to draw): token renewal over the open socket, notifications
pushed live to ``client.inbox``, and the inbox and Web Push API against the real
notification service."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from keel.notifications.v1 import notifications_pb2 as n

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.http import STATIC
from tests.gateway_bridge.bridge.conftest import Stack, token_for, until
from tests.gateway_bridge.bridge.test_inbox import notification, publish
from tests.gateway_bridge.bridge.test_notification_frames import (
    browser_subscription,
    notifications,
    send,
    sending_tenant,
)
from tests.gateway_bridge.bridge.test_revocation import token_with_ttl
from tests.gateway_bridge.conftest import Tenant

NODE = shutil.which("node")
SCRIPTS = Path(__file__).with_name("keeljs")
SCRIPT = SCRIPTS / "renew.mjs"


async def start_node(script: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    if NODE is None:
        pytest.fail("node is missing (apt-get install -y nodejs npm)")
    return await asyncio.create_subprocess_exec(
        NODE,
        "--experimental-websocket",
        "--no-warnings",
        str(script),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def node_result(
    proc: asyncio.subprocess.Process, script: Path, within: float = 30.0
) -> dict[str, Any]:
    """The JSON object the script printed last, once it exited (with 0)."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        pytest.fail(f"{script.name} did not finish within {within}s")
    lines = out.decode().strip().splitlines()
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{err.decode()}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def run_node(script: Path, env: dict[str, str], within: float = 30.0) -> dict[str, Any]:
    return await node_result(await start_node(script, env), script, within)


async def test_keel_js_renews_its_token_before_it_expires(bridge: Bridge, tenant: Tenant) -> None:
    channel = await tenant.public()
    short = await token_with_ttl(tenant, "alice", 2)
    long = await token_with_ttl(tenant, "alice", 600)
    result = await run_node(
        SCRIPT,
        {
            "KEEL_JS": str(STATIC / "keel.js"),
            "KEEL_URL": f"ws://127.0.0.1:{bridge.port}/ws",
            "KEEL_CHANNEL": channel,
            "KEEL_TOKENS": json.dumps([short, long]),
            "KEEL_WAIT_MS": "3500",  # past the first token's expiry
        },
    )
    assert result["errors"] == [], result
    assert result["states"] == [["connecting", 0], ["open", 0]], result  # never reconnected
    assert result["asked"] == 2, result  # the first token, then its renewal
    sent = result["sent"]
    assert isinstance(sent, dict) and sent["seq"] == 1, result


async def test_keel_js_hands_live_notifications_to_its_inbox_listeners(
    stack: Stack, bridge: Bridge
) -> None:
    tenant = await stack.tenant("chat:*", "send:basic")
    proc = await start_node(
        SCRIPTS / "inbox_live.mjs",
        {
            "KEEL_JS": str(STATIC / "keel.js"),
            "KEEL_URL": f"ws://127.0.0.1:{bridge.port}/ws",
            "KEEL_TOKEN": await token_for(tenant, "alice"),
            "KEEL_EXPECT": "2",
            "KEEL_WAIT_MS": "10000",
        },
    )
    await until(lambda: bool(bridge.user_connections(tenant.id, "alice")))
    first, second = notification("alice", "first"), notification("alice", "second")
    await publish(stack, tenant, (first, 4))
    await publish(stack, tenant, (second, 5))
    result = await node_result(proc, SCRIPTS / "inbox_live.mjs")
    assert result["errors"] == [], result
    assert result["option"] == [["first", 4], ["second", 5]], result
    assert result["listener"] == [
        ["first", 4, first.id, "billing", {"url": "/billing", "n": 2}],
        ["second", 5, second.id, "billing", {"url": "/billing", "n": 2}],
    ], result
    assert result["removed"] == ["first"], result
    assert result["counts"] == [4, 5] and result["unreadCount"] == 5, result


async def test_keel_js_inbox_and_push_against_the_notification_service(
    notifying_stack: Stack, notifying_bridge: Bridge
) -> None:
    stack = notifying_stack
    tenant = await sending_tenant(stack, "alice")
    for i in range(3):
        await send(stack, tenant, "alice", f"#{i}")
    subscription = browser_subscription()
    result = await run_node(
        SCRIPTS / "inbox_api.mjs",
        {
            "KEEL_JS": str(STATIC / "keel.js"),
            "KEEL_URL": f"ws://127.0.0.1:{notifying_bridge.port}/ws",
            "KEEL_TOKEN": await token_for(tenant, "alice"),
            "KEEL_P256DH": subscription["keys"]["p256dh"],
            "KEEL_AUTH": subscription["keys"]["auth"],
        },
    )
    assert result["errors"] == [], result
    # The inbox, a page at a time, and the count the answers keep.
    assert result["countBeforeList"] is None, result
    assert result["firstPage"] == ["#2", "#1"] and result["countAfterList"] == 3, result
    assert result["secondPage"] == ["#0"] and result["lastToken"] == "", result
    assert result["markOne"] == {"marked_count": 1, "unread_count": 2}, result
    assert result["unreadOnly"] == ["#1", "#0"], result
    assert result["markAll"] == {"marked_count": 2, "unread_count": 0}, result
    assert result["counts"] == [3, 2, 0] and result["countAfterMarkAll"] == 0, result
    # Web Push: subscribed with the tenant's VAPID key, user-visible only; a subscription
    # made with another key was replaced; Keel knows exactly the subscriptions left.
    key = result["publicKey"]
    point = list(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)))
    for made in (result["a"], result["b"]):
        assert made["options"] == {"userVisibleOnly": True, "key": point}, result
    assert result["a"]["unsubscribed"] == [], result
    assert result["b"]["unsubscribed"] == ["https://push.example.com/send/b-old"], result
    assert result["unsubscribedA"] == {"endpoint": "https://push.example.com/send/a"}, result
    assert result["aAfter"] == ["https://push.example.com/send/a"], result
    assert result["noRegistration"] == "invalid_argument", result
    listed = await notifications(stack).ListPushSubscriptions(
        n.ListPushSubscriptionsRequest(user_id="alice"), metadata=tenant.md
    )
    assert [s.endpoint for s in listed.subscriptions] == ["https://push.example.com/send/b"]
