"""TenantService through a real grpc.aio server on port 0, called with the generated stubs."""

from __future__ import annotations

import asyncio
import collections
import secrets
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from gateway_bridge.gateway import server as gateway_server
from service_kit.auth import Authenticator
from service_kit.config import Settings, load_settings
from service_kit.server import KeelServer, open_runtime
from tenant_service import server as tenant_server
from tests.conftest import ADMIN_TOKEN, settings_for, unique

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@asynccontextmanager
async def server_at(settings: Settings) -> AsyncIterator[str]:
    """The address of a server with the tenant and gateway services, per ``settings``."""
    runtime = await open_runtime(settings)
    tenants = tenant_server.build(runtime)
    authenticator = Authenticator(tenants.directory)
    await authenticator.follow_changes(runtime.bus)
    server = KeelServer(
        runtime, [tenants.spec, *gateway_server.build(runtime)], authenticator=authenticator
    )
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop(1)
        await authenticator.close()
        await runtime.close()


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to a server with the tenant and gateway services, per ``settings``."""
    async with server_at(settings) as address:
        client = grpc.aio.insecure_channel(address)
        try:
            yield client
        finally:
            await client.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings for a server on the test database (with the tests' cheap hashing)."""
    return settings_for(database_url, tmp_path)


@pytest.fixture
async def channel(settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to a server on the test database (with the tests' cheap hashing)."""
    async with serving(settings) as client:
        yield client


def details(error: grpc.aio.AioRpcError) -> list[object]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: list[object] = []
    for any_detail in status.details if status else ():
        for kind in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            message = kind()
            if any_detail.Unpack(message):
                found.append(message)
    return found


async def create(
    stub: tenants_pb2_grpc.TenantServiceStub, **fields: object
) -> tenants_pb2.CreateTenantResponse:
    tenant = tenants_pb2.Tenant(name=unique("svc"), **fields)  # type: ignore[arg-type]
    return await stub.CreateTenant(tenants_pb2.CreateTenantRequest(tenant=tenant), metadata=ADMIN)


async def test_create_get_list_update_rotate_delete(channel: grpc.aio.Channel) -> None:
    stub = tenants_pb2_grpc.TenantServiceStub(channel)
    created = await create(stub, permissions=["chat:*"])
    tenant_id = created.tenant.id
    got = await stub.GetTenant(tenants_pb2.GetTenantRequest(id=tenant_id), metadata=ADMIN)
    assert got.tenant == created.tenant

    listed: list[str] = []
    token = ""
    while True:
        page = await stub.ListTenants(
            tenants_pb2.ListTenantsRequest(page_size=2, page_token=token), metadata=ADMIN
        )
        listed += [t.id for t in page.tenants]
        token = page.next_page_token
        if not token:
            break
    assert tenant_id in listed and len(listed) == len(set(listed))

    changed = await stub.UpdateTenant(
        tenants_pb2.UpdateTenantRequest(
            tenant=tenants_pb2.Tenant(
                id=tenant_id, allowed_origins=["https://app.example.com"], require_origin=True
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["allowed_origins", "require_origin"]),
        ),
        metadata=ADMIN,
    )
    assert list(changed.tenant.allowed_origins) == ["https://app.example.com"]
    assert changed.tenant.require_origin and list(changed.tenant.permissions) == ["chat:*"]

    rotated = await stub.RotateSecret(tenants_pb2.RotateSecretRequest(id=tenant_id), metadata=ADMIN)
    assert rotated.client_secret != created.client_secret
    valid = await stub.ValidateCredentials(
        tenants_pb2.ValidateCredentialsRequest(
            client_id=created.tenant.client_id, client_secret=rotated.client_secret
        )
    )
    assert valid.tenant_id == tenant_id and list(valid.allowed_origins) == [
        "https://app.example.com"
    ]

    await stub.DeleteTenant(tenants_pb2.DeleteTenantRequest(id=tenant_id), metadata=ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTenant(tenants_pb2.GetTenantRequest(id=tenant_id), metadata=ADMIN)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_requests_get_field_violations_and_store_nothing(
    channel: grpc.aio.Channel,
) -> None:
    stub = tenants_pb2_grpc.TenantServiceStub(channel)

    async def count() -> int:
        total, token = 0, ""
        while True:
            page = await stub.ListTenants(
                tenants_pb2.ListTenantsRequest(page_size=1000, page_token=token), metadata=ADMIN
            )
            total += len(page.tenants)
            token = page.next_page_token
            if not token:
                return total

    before = await count()
    bad = [
        tenants_pb2.Tenant(name="x" * 300),
        tenants_pb2.Tenant(name=unique(), permissions=["not a scope"]),
        tenants_pb2.Tenant(name=unique(), permissions=["chat:*\n"]),
        tenants_pb2.Tenant(name=unique(), client_id="forum-app\n"),
        tenants_pb2.Tenant(name=unique(), rate_limits=tenants_pb2.RateLimits(burst=-5)),
    ]
    for tenant in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateTenant(tenants_pb2.CreateTenantRequest(tenant=tenant), metadata=ADMIN)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        (bad_request,) = details(caught.value)
        assert isinstance(bad_request, error_details_pb2.BadRequest)
        assert bad_request.field_violations[0].field.startswith("tenant.")
    assert await count() == before

    for request, code in [
        (tenants_pb2.GetTenantRequest(id="not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            tenants_pb2.GetTenantRequest(id="00000000-0000-4000-8000-000000000000"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetTenant(request, metadata=ADMIN)
        assert caught.value.code() == code

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListTenants(
            tenants_pb2.ListTenantsRequest(page_token="garbage!"), metadata=ADMIN
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListTenants(tenants_pb2.ListTenantsRequest(page_size=5000), metadata=ADMIN)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_administration_needs_the_operator_token(channel: grpc.aio.Channel) -> None:
    stub = tenants_pb2_grpc.TenantServiceStub(channel)
    for metadata in [(), (("authorization", "Bearer wrong-token-wrong-token"),)]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListTenants(tenants_pb2.ListTenantsRequest(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "operator token" in (caught.value.details() or "")


async def test_requests_carry_a_request_id_back(channel: grpc.aio.Channel) -> None:
    stub = tenants_pb2_grpc.TenantServiceStub(channel)
    call = stub.ListTenants(
        tenants_pb2.ListTenantsRequest(), metadata=(*ADMIN, ("x-request-id", "trace-42"))
    )
    await call
    assert ("x-request-id", "trace-42") in tuple(await call.trailing_metadata())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTenant(tenants_pb2.GetTenantRequest(id="bad"), metadata=ADMIN)
    assert any(k == "x-request-id" for k, _ in caught.value.trailing_metadata() or ())


async def test_tenant_calls_check_credentials_scope_and_rate(channel: grpc.aio.Channel) -> None:
    stub = tenants_pb2_grpc.TenantServiceStub(channel)
    chat = channels_pb2_grpc.ChannelServiceStub(channel)
    reader = await create(
        stub,
        permissions=["chat:read"],
        rate_limits=tenants_pb2.RateLimits(requests_per_second=1, burst=3),
    )
    creds = (
        ("x-client-id", reader.tenant.client_id),
        ("x-client-secret", reader.client_secret),
    )

    async def code_of(call: object) -> grpc.StatusCode:
        try:
            await call  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    send = channels_pb2.SendMessageRequest(channel_id="c", content="hi")
    assert await code_of(chat.SendMessage(send, metadata=creds)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await code_of(chat.GetChannel(channels_pb2.GetChannelRequest(), metadata=creds)) == (
        grpc.StatusCode.INVALID_ARGUMENT  # authorized; an empty id is no channel
    )
    wrong = (("x-client-id", reader.tenant.client_id), ("x-client-secret", "wrong-secret"))
    assert await code_of(chat.GetChannel(channels_pb2.GetChannelRequest(), metadata=wrong)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    # The burst of 3 was partly used above; a quick run of calls must hit the limit.
    limited = None
    for _ in range(5):
        try:
            await chat.GetChannel(channels_pb2.GetChannelRequest(), metadata=creds)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                limited = exc
                break
    assert limited is not None, "five quick calls never hit the 1 request/s limit"
    (retry,) = details(limited)
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.nanos > 0


async def test_scope_change_applies_at_once_despite_the_cache(channel: grpc.aio.Channel) -> None:
    stub = tenants_pb2_grpc.TenantServiceStub(channel)
    chat = channels_pb2_grpc.ChannelServiceStub(channel)
    created = await create(stub, permissions=["chat:*"])
    creds = (
        ("x-client-id", created.tenant.client_id),
        ("x-client-secret", created.client_secret),
    )
    send = channels_pb2.SendMessageRequest(channel_id="c", content="hi")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat.SendMessage(send, metadata=creds)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # authorized and cached
    await stub.UpdateTenant(
        tenants_pb2.UpdateTenantRequest(
            tenant=tenants_pb2.Tenant(id=created.tenant.id, permissions=["chat:read"]),
            update_mask=field_mask_pb2.FieldMask(paths=["permissions"]),
        ),
        metadata=ADMIN,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat.SendMessage(send, metadata=creds)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "chat:write" in (caught.value.details() or "")


async def test_an_unknown_client_id_is_refused_like_a_wrong_secret(
    database_url: str, tmp_path: Path
) -> None:
    """Refusals must not tell which client ids exist. A tenant with a generated secret is
    checked with the fast hash, an unknown client id against a dummy fast hash: the same
    status, the same message, and refusal times whose medians (interleaved samples) agree
    within a factor of two either way. At the real cost, a slow hash on one side only (a
    generated secret hashed with scrypt, or unknown ids checked against a scrypt dummy)
    takes tens of milliseconds against about one."""
    settings = settings_for(
        database_url,
        tmp_path,
        secret_hash_cost=load_settings({}).secret_hash_cost,  # the real cost, not the tests'
        validate_failures_per_minute=10_000,  # the failure limit must not answer instead
    )
    async with serving(settings) as client:
        stub = tenants_pb2_grpc.TenantServiceStub(client)
        client_id = (await create(stub)).tenant.client_id

        async def refusal(candidate: str) -> tuple[float, grpc.StatusCode, str]:
            request = tenants_pb2.ValidateCredentialsRequest(
                client_id=candidate, client_secret="ks_" + "not-the-secret" * 3 + "x"
            )
            started = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ValidateCredentials(request)
            elapsed = time.perf_counter() - started
            return elapsed, caught.value.code(), caught.value.details() or ""

        for _ in range(3):  # warm up both paths
            await refusal(client_id)
            await refusal(unique("kc_nobody"))
        wrong_secret, unknown_id = [], []
        for _ in range(25):
            wrong_secret.append(await refusal(client_id))
            unknown_id.append(await refusal(unique("kc_nobody")))
    assert {(code, message) for _, code, message in wrong_secret + unknown_id} == {
        (grpc.StatusCode.UNAUTHENTICATED, "invalid client id or client secret")
    }
    wrong_median = statistics.median(elapsed for elapsed, _, _ in wrong_secret)
    unknown_median = statistics.median(elapsed for elapsed, _, _ in unknown_id)
    assert 0.5 * wrong_median <= unknown_median <= 2.0 * wrong_median, (
        f"unknown ids are refused in {unknown_median * 1000:.1f} ms (median), wrong secrets"
        f" in {wrong_median * 1000:.1f} ms: timing tells which client ids exist"
    )


async def test_a_flood_of_unknown_ids_neither_refuses_nor_holds_up_a_tenant(
    settings: Settings,
) -> None:
    """800 concurrent checks of made-up client ids, with the first checks of two tenants
    (a generated secret, and a chosen one that needs a slow check) sent in the middle: every
    made-up id is refused as such (not RESOURCE_EXHAUSTED), both tenants are accepted, and
    they are answered among the flood, not after it. (With client and server in one
    process, grpc cancels some calls beyond ~1,100 in flight; test_tenants floods the
    directory itself with 2,000.)
    """
    async with serving(settings) as channel:
        stub = tenants_pb2_grpc.TenantServiceStub(channel)
        generated = await create(stub)
        chosen = await stub.CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("svc")), client_secret="a-chosen-secret"
            ),
            metadata=ADMIN,
        )
        answered: list[str] = []

        async def check(client_id: str, secret: str, label: str) -> grpc.StatusCode:
            request = tenants_pb2.ValidateCredentialsRequest(
                client_id=client_id, client_secret=secret
            )
            try:
                await stub.ValidateCredentials(request, timeout=60)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            answered.append(label)
            return code

        def made_up() -> asyncio.Task[grpc.StatusCode]:
            guess = "ks_" + secrets.token_urlsafe(32)
            return asyncio.ensure_future(check(unique("kc_nobody"), guess, "flood"))

        flood = [made_up() for _ in range(400)]
        tenants = [
            asyncio.ensure_future(check(t.tenant.client_id, t.client_secret, t.tenant.name))
            for t in (generated, chosen)
        ]
        flood += [made_up() for _ in range(400)]
        codes = await asyncio.wait_for(asyncio.gather(*flood), timeout=120)
        tenant_codes = await asyncio.wait_for(asyncio.gather(*tenants), timeout=10)

    assert collections.Counter(codes) == {grpc.StatusCode.UNAUTHENTICATED: 800}
    assert tenant_codes == [grpc.StatusCode.OK, grpc.StatusCode.OK]
    positions = [answered.index(t.tenant.name) for t in (generated, chosen)]
    assert max(positions) < len(answered) - 80, (
        f"the tenants were answered at positions {positions} of {len(answered)}"
    )
