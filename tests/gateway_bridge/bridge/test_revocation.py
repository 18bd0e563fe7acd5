"""What an open connection may still do (``gateway_bridge.bridge.revocation``, and the
per-frame scope check of ``commands.py``): its tenant's scopes as they are now, its
tenant's deletion and secret rotation, its token's expiry, and renewing the token.
"""

from __future__ import annotations

import asyncio

from keel.channels.v1 import channels_pb2
from keel.tenants.v1 import tenants_pb2

from gateway_bridge.bridge.bridge import Bridge
from tests.gateway_bridge.bridge.conftest import Dial, Stack, join, token_for
from tests.gateway_bridge.conftest import ADMIN, Tenant


async def token_with_ttl(tenant: Tenant, user_id: str, ttl_seconds: int) -> str:
    response = await tenant.stub.IssueClientToken(
        channels_pb2.IssueClientTokenRequest(user_id=user_id, ttl_seconds=ttl_seconds),
        metadata=tenant.md,
    )
    return str(response.token)


async def test_each_frame_needs_its_scope_as_the_tenant_holds_it_now(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant()
    channel = await tenant.public()
    await tenant.send(channel, "hello")
    alice = await join(dial, bridge, tenant, "alice")
    await stack.keel.set_permissions(tenant, "chat:write")
    error = await alice.error("subscribe", channel_id=channel, since_seq=0)
    assert error["code"] == "permission_denied" and "chat:read" in error["message"]
    assert [f for f in await alice.flush() if f["type"] == "event"] == []  # nothing replayed
    await stack.keel.set_permissions(tenant, "chat:read")
    await alice.ok("subscribe", channel_id=channel, since_seq=0)
    error = await alice.error("typing", channel_id=channel)
    assert error["code"] == "permission_denied" and "chat:write" in error["message"]
    error = await alice.error("presence", channel_id=channel)
    assert error["code"] == "permission_denied" and "presence:read" in error["message"]


async def test_losing_chat_read_ends_open_subscriptions_with_an_error_naming_the_channel(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant()
    channel = await tenant.public()
    alice = await join(dial, bridge, tenant, "alice")
    await alice.ok("subscribe", channel_id=channel)
    await stack.keel.set_permissions(tenant, "chat:write")
    ended = await alice.expect(lambda f: f["type"] == "error" and "channel_id" in f)
    assert ended["code"] == "permission_denied" and ended["channel_id"] == channel
    await tenant.send(channel, "not for alice any more")
    assert [f for f in await alice.flush() if f["type"] == "event"] == []
    assert (await alice.error("unsubscribe", channel_id=channel))["code"] == "not_subscribed"


async def test_a_deleted_tenants_connections_are_closed_with_4001(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant()
    other = await stack.tenant()
    alice = await join(dial, bridge, tenant, "alice")
    bob = await join(dial, bridge, other, "bob")
    await stack.keel.tenants.DeleteTenant(
        tenants_pb2.DeleteTenantRequest(id=tenant.id), metadata=ADMIN
    )
    assert await alice.closed() == (4001, "the tenant was deleted")
    assert (await bob.call("ping"))["type"] == "pong"


async def test_rotating_the_secret_revokes_tokens_issued_before(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant()
    old_token = await token_for(tenant, "alice")
    alice = await dial(bridge, old_token)
    assert (await alice.expect(lambda f: True))["type"] == "welcome"
    await asyncio.sleep(1.05)  # tokens carry whole seconds: issue the next one later
    rotated = await stack.keel.tenants.RotateSecret(
        tenants_pb2.RotateSecretRequest(id=tenant.id), metadata=ADMIN
    )
    code, reason = await alice.closed()
    assert code == 4001 and "revoked" in reason
    again = await dial(bridge, old_token)
    assert (await again.closed())[0] == 4001
    fresh = Tenant(tenant.id, tenant.client_id, rotated.client_secret, tenant.stub)
    carol = await join(dial, bridge, fresh, "carol")
    assert (await carol.call("ping"))["type"] == "pong"


async def test_a_connection_is_closed_with_4002_when_its_token_expires(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant()
    alice = await dial(bridge, await token_with_ttl(tenant, "alice", 2))
    assert (await alice.expect(lambda f: True))["type"] == "welcome"
    assert await alice.closed() == (4002, "client token expired")


async def test_a_fresh_token_over_the_socket_keeps_the_connection_open(
    stack: Stack, bridge: Bridge, dial: Dial
) -> None:
    tenant = await stack.tenant()
    channel = await tenant.public()
    alice = await dial(bridge, await token_with_ttl(tenant, "alice", 2))
    assert (await alice.expect(lambda f: True))["type"] == "welcome"
    await alice.ok("subscribe", channel_id=channel)
    # Another user's token does not renew this connection.
    wrong = await alice.error("auth", token=await token_for(tenant, "mallory"))
    assert wrong["code"] == "invalid_argument" and "another user" in wrong["message"]
    renewed = await alice.ok("auth", token=await token_with_ttl(tenant, "alice", 600))
    assert renewed["result"]["expire_time"].endswith("Z")
    await asyncio.sleep(3)  # past the first token's expiry
    await tenant.send(channel, "still here")
    assert (await alice.event("message:created", channel))["data"]["message"]["content"] == (
        "still here"
    )
