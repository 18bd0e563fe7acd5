"""A real gateway (ChannelService) plus tenant service on port 0, and tenant-scoped clients.

Every server runs in-process on the session's database (SQLite and
PostgreSQL, through ``database_url``) and is called with the generated stubs,
as a tenant backend would call it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from file_service import server as file_server
from gateway_bridge.gateway import server as gateway_server
from service_kit.auth import Authenticator
from service_kit.bus import EventBus
from service_kit.config import Address, FileSettings, Settings
from service_kit.server import KeelServer, Runtime, open_runtime
from tenant_service import server as tenant_server
from tests.conftest import ADMIN_TOKEN, settings_for, unique

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
Metadata = Sequence[tuple[str, str]]

#: The longest a test waits for one item of a Connect stream.
STREAM_WAIT = 10.0


@dataclass
class Tenant:
    """One tenant and a ChannelService stub that calls with its credentials."""

    id: str
    client_id: str
    client_secret: str
    stub: channels_pb2_grpc.ChannelServiceStub

    @property
    def md(self) -> Metadata:
        return (("x-client-id", self.client_id), ("x-client-secret", self.client_secret))

    async def group(self, created_by: str = "alice", *members: str, **fields: Any) -> str:
        """A new group channel created by ``created_by`` with ``members``; its id."""
        response = await self.stub.CreateChannel(
            channels_pb2.CreateChannelRequest(
                name=fields.pop("name", unique("group")),
                type=fields.pop("type", channels_pb2.CHANNEL_TYPE_GROUP),
                created_by=created_by,
                member_ids=list(members),
                **fields,
            ),
            metadata=self.md,
        )
        return str(response.channel.id)

    async def public(self, created_by: str = "alice") -> str:
        return await self.group(created_by, type=channels_pb2.CHANNEL_TYPE_PUBLIC)

    async def send(
        self, channel_id: str, content: str, user_id: str = "alice", **fields: Any
    ) -> channels_pb2.Message:
        response = await self.stub.SendMessage(
            channels_pb2.SendMessageRequest(
                channel_id=channel_id, user_id=user_id, content=content, **fields
            ),
            metadata=self.md,
        )
        message: channels_pb2.Message = response.message
        return message

    async def messages(self, channel_id: str, **fields: Any) -> list[channels_pb2.Message]:
        """Every message of the channel, oldest first (all pages)."""
        found: list[channels_pb2.Message] = []
        token = ""
        while True:
            page = await self.stub.ListMessages(
                channels_pb2.ListMessagesRequest(
                    channel_id=channel_id,
                    page_size=1000,
                    page_token=token,
                    order=channels_pb2.MESSAGE_ORDER_OLDEST_FIRST,
                    **fields,
                ),
                metadata=self.md,
            )
            found += page.messages
            token = page.next_page_token
            if not token:
                return found

    async def channel(self, channel_id: str) -> channels_pb2.Channel:
        response = await self.stub.GetChannel(
            channels_pb2.GetChannelRequest(id=channel_id), metadata=self.md
        )
        channel: channels_pb2.Channel = response.channel
        return channel

    async def members(self, channel_id: str) -> list[channels_pb2.Member]:
        response = await self.stub.ListMembers(
            channels_pb2.ListMembersRequest(channel_id=channel_id, page_size=1000),
            metadata=self.md,
        )
        return list(response.members)

    async def snapshot(self, channel_id: str) -> tuple[object, ...]:
        """What a bad request must leave unchanged: the channel's messages and last_seq."""
        channel = await self.channel(channel_id)
        stored = await self.messages(channel_id)
        members = await self.members(channel_id)
        return (
            channel.last_seq,
            channel.member_count,
            [m.SerializeToString(deterministic=True) for m in stored],
            [(m.user_id, m.role) for m in members],
        )


@dataclass
class Keel:
    """A running server: a client channel, its settings, and what a bridge beside it needs
    (the process's runtime, its authenticator and the server's address); ``files`` is the
    file service when it serves too."""

    client: grpc.aio.Channel
    settings: Settings
    runtime: Runtime
    authenticator: Authenticator
    address: str
    files: file_server.FileServer | None = None

    @property
    def files_url(self) -> str:
        """The base URL of the file service's HTTP endpoints (it must be serving)."""
        assert self.files is not None, "this server has no file service"
        return _base_url(self.files)

    @property
    def tenants(self) -> tenants_pb2_grpc.TenantServiceStub:
        return tenants_pb2_grpc.TenantServiceStub(self.client)

    @property
    def chat(self) -> channels_pb2_grpc.ChannelServiceStub:
        return channels_pb2_grpc.ChannelServiceStub(self.client)

    async def tenant(self, *permissions: str) -> Tenant:
        """A new tenant (through the operator API) holding ``permissions`` (chat:* if none)."""
        created = await self.tenants.CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(
                    name=unique("gw"), permissions=list(permissions or ["chat:*"])
                )
            ),
            metadata=ADMIN,
        )
        return Tenant(created.tenant.id, created.tenant.client_id, created.client_secret, self.chat)

    async def set_permissions(self, tenant: Tenant, *permissions: str) -> None:
        await self.tenants.UpdateTenant(
            tenants_pb2.UpdateTenantRequest(
                tenant=tenants_pb2.Tenant(id=tenant.id, permissions=list(permissions)),
                update_mask=field_mask_pb2.FieldMask(paths=["permissions"]),
            ),
            metadata=ADMIN,
        )


@asynccontextmanager
async def running_keel(
    database_url: str,
    tmp_path: Path,
    *,
    wrap_bus: Callable[[EventBus], EventBus] | None = None,
    serve_files: bool = False,
    **changes: object,
) -> AsyncIterator[Keel]:
    """The tenant and gateway services in one server on port 0, wired as ``keel serve
    all`` wires them; stopped on exit.

    ``wrap_bus`` may put a stand-in around the process's event bus (to delay a publish);
    ``serve_files`` adds the file service (its HTTP endpoints on a port of their own),
    whose base URL the gateway signs attachments' URLs under.
    """
    settings = settings_for(database_url, tmp_path, **changes)
    runtime = await open_runtime(settings)
    if wrap_bus is not None:
        runtime.bus = wrap_bus(runtime.bus)
    try:
        tenants = tenant_server.build(runtime)
        authenticator = Authenticator(
            tenants.directory, lookup=tenants.directory, ttl=settings.auth_cache_seconds
        )
        await authenticator.follow_changes(runtime.bus)
        files = file_server.build(runtime) if serve_files else None
        try:
            server = KeelServer(
                runtime,
                [
                    tenants.spec,
                    *gateway_server.build(
                        runtime,
                        authenticator=authenticator,
                        files_base_url=(lambda: _base_url(files)) if files else None,
                    ),
                    *([files.spec] if files else []),
                ],
                authenticator=authenticator,
            )
            await server.start()
            try:
                address = f"127.0.0.1:{server.port}"
                client = grpc.aio.insecure_channel(address)
                try:
                    yield Keel(client, settings, runtime, authenticator, address, files)
                finally:
                    await client.close()
            finally:
                await server.stop(1)
        finally:
            await authenticator.close()
    finally:
        await runtime.close()


@asynccontextmanager
async def running_keel_with_files(
    database_url: str, tmp_path: Path, **file_changes: Any
) -> AsyncIterator[Keel]:
    """:func:`running_keel` with the file service: blobs on local disk under ``tmp_path``,
    HTTP endpoints on a free port, ``file_changes`` applied to its settings."""
    files = FileSettings(
        local_dir=tmp_path / "blobs",
        http_addr=Address("127.0.0.1", 0),
        uploads_per_minute=100_000,
        **file_changes,
    )
    async with running_keel(database_url, tmp_path, serve_files=True, files=files) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client (downloads, tus uploads)."""
    async with aiohttp.ClientSession() as session:
        yield session


def _base_url(files: file_server.FileServer) -> str:
    assert files.process.links is not None, "the file service has not started"
    return files.process.links.base_url


@pytest.fixture(scope="module")
async def keel(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keel]:
    """One server per test module and database; tests isolate themselves by tenant."""
    async with running_keel(database_url, tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture
async def tenant(keel: Keel) -> Tenant:
    return await keel.tenant()


# -- errors ---------------------------------------------------------------------------------


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """Await an RPC that must fail; return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields a google.rpc.BadRequest detail of ``error`` names."""
    status = rpc_status.from_call(error)
    fields: list[str] = []
    for detail in status.details if status else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [v.field for v in bad_request.field_violations]
    return fields


# -- the bridge's Connect stream ------------------------------------------------------------


class Bridge:
    """A Connect stream as a bridge process holds it: write commands, read items (bounded)."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def subscribe(
        self,
        key: str,
        tenant_id: str,
        channel_id: str,
        *,
        user_id: str = "",
        since_seq: int | None = None,
    ) -> None:
        position = channels_pb2.ChannelPosition(channel_id=channel_id)
        if since_seq is not None:
            position.since_seq = since_seq
        await self.call.write(
            channels_pb2.ConnectRequest(
                subscribe=channels_pb2.ConnectSubscribe(
                    subscription_key=key, tenant_id=tenant_id, user_id=user_id, channels=[position]
                )
            )
        )

    async def unsubscribe(self, key: str, *channel_ids: str) -> None:
        await self.call.write(
            channels_pb2.ConnectRequest(
                unsubscribe=channels_pb2.ConnectUnsubscribe(
                    subscription_key=key, channel_ids=list(channel_ids)
                )
            )
        )

    async def read(self, within: float = STREAM_WAIT) -> channels_pb2.ConnectResponse:
        try:
            item = await asyncio.wait_for(self.call.read(), within)
        except TimeoutError:
            pytest.fail(f"nothing arrived on the Connect stream within {within}s")
        assert item is not grpc.aio.EOF, "the Connect stream ended"
        return item  # type: ignore[no-any-return]

    async def result(self) -> channels_pb2.SubscribeResult:
        item = await self.read()
        assert item.WhichOneof("payload") == "subscribe_result", item
        return item.subscribe_result

    async def event(self) -> channels_pb2.ConnectResponse:
        item = await self.read()
        assert item.WhichOneof("payload") == "event", item
        return item


@asynccontextmanager
async def connect(
    stub: channels_pb2_grpc.ChannelServiceStub, metadata: Metadata = ADMIN
) -> AsyncIterator[Bridge]:
    """A Connect stream; on exit the bridge says it is done and drains to the end."""
    call = stub.Connect(metadata=metadata)
    try:
        yield Bridge(call)
        await call.done_writing()
        async with asyncio.timeout(STREAM_WAIT):
            while await call.read() is not grpc.aio.EOF:
                pass
    finally:
        call.cancel()
