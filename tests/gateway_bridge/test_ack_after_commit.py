"""Ack means durable: a send is answered only after its transaction committed.

Every other test reads after the ack, and the commit usually lands first anyway, so a
gateway that answered and committed afterwards would pass them. Here PostgreSQL holds
each commit of a marked message for half a second (a deferred constraint trigger runs
at COMMIT), and another connection reads the message the moment the ack arrives —
over gRPC and over the bridge's WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest
from keel.channels.v1 import channels_pb2
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from gateway_bridge.bridge.server import start_bridge
from service_kit.config import Address
from tests.gateway_bridge.conftest import Keel, Tenant, running_keel

#: How long PostgreSQL holds the commit of a message whose content starts with MARK.
HOLD = 0.5
MARK = "slow-commit:"


@pytest.fixture(scope="module")
async def keel(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keel]:
    async with running_keel(pg_url, tmp_path_factory.mktemp("ack")) as running:
        yield running


@pytest.fixture(scope="module")
async def database(pg_url: str, keel: Keel) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own (another client of the database), with the slow commit
    installed for the module (the schema exists: the server migrated it)."""
    conn = await asyncpg.connect(pg_url)
    await conn.execute(
        f"""
        CREATE OR REPLACE FUNCTION keel_test_hold_commit() RETURNS trigger AS $$
        BEGIN
          IF NEW.content LIKE '{MARK}%' THEN PERFORM pg_sleep({HOLD}); END IF;
          RETURN NULL;
        END $$ LANGUAGE plpgsql;
        DROP TRIGGER IF EXISTS keel_test_hold_commit ON messages;
        CREATE CONSTRAINT TRIGGER keel_test_hold_commit AFTER INSERT ON messages
          DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keel_test_hold_commit();
        """
    )
    try:
        yield conn
    finally:
        await conn.execute("DROP TRIGGER IF EXISTS keel_test_hold_commit ON messages")
        await conn.close()


async def stored(database: asyncpg.Connection, message_id: str) -> bool:
    return bool(await database.fetchval("SELECT count(*) FROM messages WHERE id = $1", message_id))


async def test_a_grpc_send_is_answered_after_its_commit(
    keel: Keel, database: asyncpg.Connection
) -> None:
    tenant = await keel.tenant()
    channel = await tenant.public()
    started = time.monotonic()
    message = await tenant.send(channel, MARK + "grpc")
    held = time.monotonic() - started
    assert await stored(database, message.id), "acknowledged but not committed"
    # The hold did take place (else this test would prove nothing).
    assert held >= HOLD * 0.8, held


async def test_a_bridge_send_is_acked_after_its_commit(
    keel: Keel, database: asyncpg.Connection
) -> None:
    tenant: Tenant = await keel.tenant()
    channel = await tenant.public()
    settings = replace(keel.settings, ws_addr=Address("127.0.0.1", 0))
    bridge = await start_bridge(
        settings, keel.runtime.bus, keel.runtime.redis, keel.authenticator, keel.address
    )
    try:
        async with asyncio.timeout(10):
            await bridge.link.connected.wait()
        token = await tenant.stub.IssueClientToken(
            channels_pb2.IssueClientTokenRequest(user_id="alice"), metadata=tenant.md
        )
        url = f"ws://127.0.0.1:{bridge.port}/ws?token={token.token}"
        async with connect(url, subprotocols=[Subprotocol("keel.v1")], proxy=None) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            started = time.monotonic()
            frame = {"type": "send", "id": "s1", "channel_id": channel, "content": MARK + "ws"}
            await ws.send(json.dumps(frame))
            async with asyncio.timeout(10):
                while (reply := json.loads(await ws.recv())).get("id") != "s1":
                    pass
            held = time.monotonic() - started
            assert reply["type"] == "ack", reply
            assert await stored(database, reply["result"]["message_id"]), "acked, not committed"
            assert held >= HOLD * 0.8, held
    finally:
        await bridge.stop()
