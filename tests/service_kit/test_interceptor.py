"""What the interceptor does with bad requests, through a real server on port 0: bytes that
are no request, requests out of their bounds (in a stream too), Structs JSON cannot carry,
and page tokens of another method or tenant. Each is INVALID_ARGUMENT and changes nothing.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_status import rpc_status
from keel.channels.v1 import channels_pb2 as pb
from keel.tenants.v1 import tenants_pb2

from service_kit.interceptor import MALFORMED_REQUEST
from service_kit.validation import encode_page_token, page_token_scope_var
from tests.gateway_bridge.conftest import (
    ADMIN,
    Keel,
    Metadata,
    field_violations,
    rpc_error,
    running_keel,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GARBAGE = b"\xff\xff\xff\xff"  # a field number 0 with a truncated varint: never protobuf
CHANNELS = "/keel.channels.v1.ChannelService"


@pytest.fixture(scope="module")
async def keel(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keel]:
    async with running_keel(database_url, tmp_path_factory.mktemp("interceptor")) as running:
        yield running


async def raw_unary(keel: Keel, method: str, payload: bytes, metadata: Metadata) -> bytes:
    """Call ``method`` with ``payload`` as the request's bytes, as any client could."""
    call = keel.client.unary_unary(method)  # no serializers: bytes in, bytes out
    answer: bytes = await call(payload, metadata=metadata, timeout=10)
    return answer


def assert_malformed(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == INVALID, error
    assert error.details() == MALFORMED_REQUEST
    for internal in ("Exception", "Error", "keel.", "deserializ"):
        assert internal not in (error.details() or "")


@pytest.mark.parametrize(
    ("method", "credentials"),
    [
        (f"{CHANNELS}/SendMessage", "tenant"),
        ("/keel.tenants.v1.TenantService/CreateTenant", "operator"),
        ("/keel.tenants.v1.TenantService/ValidateCredentials", "none"),
        ("/keel.events.v1.EventService/CreateWebhook", "tenant"),
    ],
)
@pytest.mark.parametrize(
    "payload",
    [GARBAGE, b"\x0a\x03\xed\xa0\x80", b"\x0a\x05abc"],  # garbage, bad UTF-8, truncated
    ids=["garbage", "lone-surrogate-bytes", "truncated"],
)
async def test_bytes_that_are_no_request_answer_invalid_argument_without_internals(
    keel: Keel, method: str, credentials: str, payload: bytes
) -> None:
    tenant = await keel.tenant()
    metadata = {"tenant": tenant.md, "operator": ADMIN, "none": ()}[credentials]
    assert_malformed(await rpc_error(raw_unary(keel, method, payload, metadata)))


async def test_a_caller_is_authenticated_before_its_bytes_are_judged(keel: Keel) -> None:
    error = await rpc_error(raw_unary(keel, f"{CHANNELS}/SendMessage", GARBAGE, ()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


async def test_a_struct_holding_nan_or_infinity_is_refused_naming_the_field(keel: Keel) -> None:
    tenant = await keel.tenant()
    before = await tenant.stub.ListChannels(pb.ListChannelsRequest(), metadata=tenant.md)
    error = await rpc_error(
        tenant.stub.CreateChannel(
            pb.CreateChannelRequest(name="nan", metadata=struct({"score": float("nan")})),
            metadata=tenant.md,
        )
    )
    assert (error.code(), field_violations(error)) == (INVALID, ["metadata"])
    assert "nan at 'score'" in (error.details() or "")
    after = await tenant.stub.ListChannels(pb.ListChannelsRequest(), metadata=tenant.md)
    assert after == before

    error = await rpc_error(
        tenant.stub.UpsertUser(
            pb.UpsertUserRequest(
                user=pb.User(id="nan-user", metadata=struct({"a": [{"b": float("inf")}]}))
            ),
            metadata=tenant.md,
        )
    )
    assert (error.code(), field_violations(error)) == (INVALID, ["user.metadata"])
    missing = await rpc_error(
        tenant.stub.GetUser(pb.GetUserRequest(id="nan-user"), metadata=tenant.md)
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    error = await rpc_error(
        keel.tenants.CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name="nan", metadata=struct({"x": float("-inf")}))
            ),
            metadata=ADMIN,
        )
    )
    assert (error.code(), field_violations(error)) == (INVALID, ["tenant.metadata"])


async def test_a_refused_message_in_a_request_stream_ends_the_call_invalid_argument(
    keel: Keel,
) -> None:
    tenant = await keel.tenant()
    channel = await tenant.group("alice")
    subscribe = pb.ConnectRequest(
        subscribe=pb.ConnectSubscribe(
            subscription_key="k",
            tenant_id=tenant.id,
            channels=[pb.ChannelPosition(channel_id=channel)],
        )
    )
    too_long = pb.ConnectRequest(unsubscribe=pb.ConnectUnsubscribe(subscription_key="k" * 129))
    for bad, expected in (
        (GARBAGE, []),
        (too_long.SerializeToString(), ["unsubscribe.subscription_key"]),
    ):
        call = keel.client.stream_stream(f"{CHANNELS}/Connect")(metadata=ADMIN, timeout=10)
        await call.write(subscribe.SerializeToString())
        await call.write(bad)
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert caught.value.code() == INVALID
        assert field_violations(caught.value) == expected


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_a_forged_page_token_is_refused_naming_page_token(keel: Keel) -> None:
    tenant = await keel.tenant()
    for token in ("garbage!", b64(os.urandom(48)), b64(b'{"p": [1], "q": "0123456789abcdef"}')):
        for call in (
            tenant.stub.ListUsers(pb.ListUsersRequest(page_token=token), metadata=tenant.md),
            tenant.stub.ListChannels(pb.ListChannelsRequest(page_token=token), metadata=tenant.md),
            keel.tenants.ListTenants(
                tenants_pb2.ListTenantsRequest(page_token=token), metadata=ADMIN
            ),
        ):
            error = await rpc_error(call)
            assert (error.code(), field_violations(error)) == (INVALID, ["page_token"])


async def test_a_page_token_works_only_for_the_method_and_tenant_it_was_made_for(
    keel: Keel,
) -> None:
    tenant = await keel.tenant()
    for user in ("u1", "u2"):
        await tenant.stub.UpsertUser(
            pb.UpsertUserRequest(user=pb.User(id=user)), metadata=tenant.md
        )
    first = await tenant.stub.ListUsers(pb.ListUsersRequest(page_size=1), metadata=tenant.md)
    token = first.next_page_token
    assert token
    second = await tenant.stub.ListUsers(
        pb.ListUsersRequest(page_size=1, page_token=token), metadata=tenant.md
    )
    assert second.users[0].id != first.users[0].id

    other = await keel.tenant()
    for call in (
        other.stub.ListUsers(pb.ListUsersRequest(page_token=token), metadata=other.md),
        keel.tenants.ListTenants(tenants_pb2.ListTenantsRequest(page_token=token), metadata=ADMIN),
    ):
        error = await rpc_error(call)
        assert (error.code(), field_violations(error)) == (INVALID, ["page_token"])
        status = rpc_status.from_call(error)
        assert status is not None and "different request" in status.message


@pytest.mark.parametrize("position", [["not a seq"], []])
async def test_a_forged_message_page_token_is_refused_naming_page_token(
    keel: Keel, position: list[object]
) -> None:
    tenant = await keel.tenant()
    channel = await tenant.group("alice")
    scope = f"/keel.channels.v1.ChannelService/ListMessages:{tenant.id}"
    query = f"messages:{channel}:True:0:0:"  # what the servicer fingerprints: anyone can read it
    token = page_token_scope_var.set(scope)
    try:
        forged = encode_page_token(position, query=query)
    finally:
        page_token_scope_var.reset(token)
    error = await rpc_error(
        tenant.stub.ListMessages(
            pb.ListMessagesRequest(channel_id=channel, page_token=forged), metadata=tenant.md
        )
    )
    assert (error.code(), field_violations(error)) == (INVALID, ["page_token"])
