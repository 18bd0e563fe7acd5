"""Attachments over ``keel.v1``, as a browser uses them: ``welcome`` names the file
endpoints, the browser uploads there with its client token (tus), sends a message naming
the file, and every member's ``event`` frame lists it with URLs that download it. Real
tenant service, gateway, file service and bridge, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.server import start_bridge
from service_kit.config import Address, BridgeSettings
from tests.gateway_bridge.bridge.conftest import WAIT, Client, Dial, join, token_for
from tests.gateway_bridge.conftest import Keel, Tenant, running_keel_with_files

NOTES = b"the plan, version 2\n"


@pytest.fixture(scope="module")
async def keel(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keel]:
    tmp = tmp_path_factory.mktemp("bridge-attachments")
    async with running_keel_with_files(database_url, tmp) as running:
        yield running


@pytest.fixture
async def bridge(keel: Keel) -> AsyncIterator[Bridge]:
    """A bridge beside the server, told the file endpoints' URL as ``keel serve all`` does."""
    settings = replace(keel.settings, ws_addr=Address("127.0.0.1", 0), bridge=BridgeSettings())
    started = await start_bridge(
        settings,
        keel.runtime.bus,
        keel.runtime.redis,
        keel.authenticator,
        keel.address,
        files_url=lambda: keel.files_url,
    )
    try:
        async with asyncio.timeout(WAIT):
            await started.link.connected.wait()
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def tenant(keel: Keel) -> Tenant:
    return await keel.tenant("chat:*", "upload:*")


async def tus_upload(
    http: aiohttp.ClientSession, files_url: str, token: str, body: bytes, filename: str
) -> str:
    """Upload ``body`` as a browser does (tus creation, then one PATCH); the file's id."""
    name = base64.b64encode(filename.encode()).decode()
    auth = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {token}"}
    creation = {**auth, "Upload-Length": str(len(body)), "Upload-Metadata": f"filename {name}"}
    async with http.post(f"{files_url}/files/tus", headers=creation) as created:
        assert created.status == 201, await created.text()
        location = created.headers["Location"]
    url = location if location.startswith("http") else files_url + location
    patch = {**auth, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    async with http.patch(url, headers=patch, data=body) as patched:
        assert patched.status == 204, await patched.text()
    return url.rsplit("/", 1)[1]


async def member(dial: Dial, bridge: Bridge, tenant: Tenant, user_id: str, channel: str) -> Client:
    client = await join(dial, bridge, tenant, user_id)
    await client.ok("subscribe", channel_id=channel)
    return client


async def test_welcome_names_the_file_endpoints_a_browser_uploads_to(
    keel: Keel, bridge: Bridge, tenant: Tenant, dial: Dial, http: aiohttp.ClientSession
) -> None:
    client = await join(dial, bridge, tenant, "alice")

    assert client.welcome["files_url"] == keel.files_url
    token = await token_for(tenant, "alice")
    file_id = await tus_upload(http, client.welcome["files_url"], token, NOTES, "plan.txt")
    assert len(file_id) == 36


async def test_a_send_frame_with_files_reaches_every_member_with_urls_that_download_them(
    bridge: Bridge, tenant: Tenant, dial: Dial, http: aiohttp.ClientSession
) -> None:
    channel_id = await tenant.group("alice", "bob")
    alice = await member(dial, bridge, tenant, "alice", channel_id)
    bob = await member(dial, bridge, tenant, "bob", channel_id)
    token = await token_for(tenant, "alice")
    file_id = await tus_upload(http, alice.welcome["files_url"], token, NOTES, "plan.txt")

    ack = await alice.ok("send", channel_id=channel_id, content="", attachment_ids=[file_id])
    frames = [await c.event("message:created", channel_id) for c in (alice, bob)]

    assert ack["result"]["seq"] == frames[0]["seq"]
    for frame in frames:
        message = frame["data"]["message"]
        assert message["attachment_ids"] == [file_id]
        (attachment,) = message["attachments"]
        assert attachment == {
            "file_id": file_id,
            "filename": "plan.txt",
            "content_type": "text/plain",
            "size_bytes": len(NOTES),
            "thumbnail_width": 0,
            "thumbnail_height": 0,
            "url": attachment["url"],
            "thumbnail_url": "",
            "url_expire_time": attachment["url_expire_time"],
        }
        async with http.get(attachment["url"]) as download:
            assert (download.status, await download.read()) == (200, NOTES)
    # Signed once for the event, not per recipient: both got the same text.
    assert frames[0]["data"] == frames[1]["data"]


async def test_a_send_frame_naming_no_ready_file_is_refused_by_position(
    bridge: Bridge, tenant: Tenant, dial: Dial
) -> None:
    channel_id = await tenant.group("alice")
    alice = await member(dial, bridge, tenant, "alice", channel_id)
    unknown = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

    refused = await alice.error(
        "send", channel_id=channel_id, content="hi", attachment_ids=[unknown]
    )
    too_many = await alice.error(
        "send", channel_id=channel_id, content="hi", attachment_ids=[unknown] * 21
    )

    assert refused["code"] == "invalid_argument"
    assert refused["fields"] == [
        {"field": "attachment_ids[0]", "description": "is not a ready file of this tenant"}
    ]
    assert too_many["code"] == "bad_frame"
    assert (await tenant.channel(channel_id)).last_seq == 0


async def test_a_replayed_message_carries_freshly_signed_urls(
    bridge: Bridge, tenant: Tenant, dial: Dial, http: aiohttp.ClientSession
) -> None:
    channel_id = await tenant.group("alice", "bob")
    alice = await member(dial, bridge, tenant, "alice", channel_id)
    token = await token_for(tenant, "alice")
    file_id = await tus_upload(http, alice.welcome["files_url"], token, NOTES, "plan.txt")
    await alice.ok("send", channel_id=channel_id, content="", attachment_ids=[file_id])

    bob = await join(dial, bridge, tenant, "bob")
    await bob.ok("subscribe", channel_id=channel_id, since_seq=0)
    replayed = await bob.event("message:created", channel_id)

    (attachment,) = replayed["data"]["message"]["attachments"]
    assert attachment["file_id"] == file_id
    async with http.get(attachment["url"]) as download:
        assert (download.status, await download.read()) == (200, NOTES)
