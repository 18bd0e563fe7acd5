"""Every request field is bounded (issue 10, "Size bypass").

The protos declare the bounds (``(keel.api.v1.bounds)``, see
``protos/keel/api/v1/field_bounds.proto``); these tests walk every request message of every
proto through the descriptor pool and fail on a string, bytes, repeated or map field (or a
Struct or FieldMask) without one; check that each bound is at least the limit the service
itself enforces, so the service's own, more specific message still answers; and replay the
bypass that opened the issue against a real server.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from keel.channels.v1 import channels_pb2 as pb

from gateway_bridge.gateway.channels import models as chat
from gateway_bridge.gateway.events import webhooks
from service_kit.bounds import UNBOUNDED, bounds_of, missing_bounds
from service_kit.config import ConfigError, load_settings
from tenant_service import tenants
from tests.conftest import ROOT
from tests.gateway_bridge.conftest import Keel, field_violations, rpc_error, running_keel


def proto_files() -> list[str]:
    """Every .proto of the repository, its generated module imported into the pool."""
    names = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    for name in names:
        importlib.import_module(name.removesuffix(".proto").replace("/", ".") + "_pb2")
    return names


def request_types() -> dict[str, str]:
    """Each request message's full name, with the first method that takes it."""
    pool = descriptor_pool.Default()
    found: dict[str, str] = {}
    for name in proto_files():
        for service in pool.FindFileByName(name).services_by_name.values():
            for method in service.methods:
                found.setdefault(method.input_type.full_name, method.full_name)
    return found


def test_every_field_of_every_request_message_has_a_bound() -> None:
    requests = request_types()
    assert len(requests) >= 40, "the walk found too few request messages"
    pool = descriptor_pool.Default()
    missing = [
        f"{problem} (in a request of {method})"
        for message, method in sorted(requests.items())
        for problem in missing_bounds(pool.FindMessageTypeByName(message))
    ]
    assert not missing, (
        "declare a bound with [(keel.api.v1.bounds) = {...}] on these fields"
        " (or list them in service_kit.bounds.UNBOUNDED with the reason):\n" + "\n".join(missing)
    )


def test_every_exemption_names_a_field_that_exists() -> None:
    pool = descriptor_pool.Default()
    proto_files()
    for name, reason in UNBOUNDED.items():
        message, _, field = name.rpartition(".")
        assert field in pool.FindMessageTypeByName(message).fields_by_name, name
        assert reason.strip(), f"{name} needs a reason"


def field(name: str) -> FieldDescriptor:
    message, _, field_name = name.rpartition(".")
    proto_files()
    found: FieldDescriptor = (
        descriptor_pool.Default().FindMessageTypeByName(message).fields_by_name[field_name]
    )
    return found


#: (field, kind of bound, the service's own limit): the proto's bound is the hard cap and
#: must not undercut the service's limit, whose message is more specific.
SERVICE_LIMITS = [
    ("keel.channels.v1.SendMessageRequest.attachment_ids", "max_items", chat.MAX_ATTACHMENTS),
    ("keel.channels.v1.SendMessageRequest.user_id", "max_length", chat.MAX_USER_ID),
    ("keel.channels.v1.SendMessageRequest.message_type", "max_length", chat.MAX_MESSAGE_TYPE),
    ("keel.channels.v1.SendMessageRequest.idempotency_key", "max_length", chat.MAX_IDEMPOTENCY_KEY),
    ("keel.channels.v1.AddReactionRequest.emoji", "max_length", chat.MAX_EMOJI),
    ("keel.channels.v1.RemoveReactionRequest.emoji", "max_length", chat.MAX_EMOJI),
    ("keel.channels.v1.CreateChannelRequest.name", "max_length", chat.MAX_NAME),
    ("keel.channels.v1.CreateChannelRequest.member_ids", "max_items", chat.MAX_MEMBERS_AT_CREATION),
    ("keel.channels.v1.CreateChannelRequest.metadata", "max_bytes", chat.MAX_METADATA_BYTES),
    ("keel.channels.v1.Channel.name", "max_length", chat.MAX_NAME),
    ("keel.channels.v1.Channel.metadata", "max_bytes", chat.MAX_METADATA_BYTES),
    ("keel.channels.v1.User.id", "max_length", chat.MAX_USER_ID),
    ("keel.channels.v1.User.username", "max_length", chat.MAX_NAME),
    ("keel.channels.v1.User.email", "max_length", chat.MAX_EMAIL),
    ("keel.channels.v1.User.avatar", "max_length", chat.MAX_AVATAR),
    ("keel.channels.v1.User.metadata", "max_bytes", chat.MAX_METADATA_BYTES),
    ("keel.events.v1.CreateWebhookRequest.url", "max_length", webhooks.MAX_URL),
    ("keel.events.v1.CreateWebhookRequest.events", "max_items", webhooks.MAX_FILTERS),
    ("keel.events.v1.CreateWebhookRequest.channel_ids", "max_items", webhooks.MAX_CHANNEL_FILTERS),
    ("keel.events.v1.CreateWebhookRequest.description", "max_length", webhooks.MAX_DESCRIPTION),
    ("keel.events.v1.Webhook.url", "max_length", webhooks.MAX_URL),
    ("keel.events.v1.Webhook.events", "max_items", webhooks.MAX_FILTERS),
    ("keel.events.v1.Webhook.channel_ids", "max_items", webhooks.MAX_CHANNEL_FILTERS),
    ("keel.events.v1.Webhook.description", "max_length", webhooks.MAX_DESCRIPTION),
    ("keel.events.v1.SubscribeEventsRequest.events", "max_items", webhooks.MAX_FILTERS),
    (
        "keel.events.v1.SubscribeEventsRequest.channel_ids",
        "max_items",
        webhooks.MAX_CHANNEL_FILTERS,
    ),
    ("keel.tenants.v1.Tenant.name", "max_length", tenants.MAX_NAME),
    ("keel.tenants.v1.Tenant.client_id", "max_length", tenants.MAX_CLIENT_ID),
    ("keel.tenants.v1.Tenant.permissions", "max_items", tenants.MAX_PERMISSIONS),
    ("keel.tenants.v1.Tenant.allowed_origins", "max_items", tenants.MAX_ORIGINS),
    ("keel.tenants.v1.Tenant.metadata", "max_bytes", tenants.MAX_METADATA_BYTES),
    ("keel.tenants.v1.CreateTenantRequest.client_secret", "max_length", tenants.MAX_SECRET),
    ("keel.tenants.v1.ValidateCredentialsRequest.client_id", "max_length", tenants.MAX_CLIENT_ID),
    ("keel.tenants.v1.ValidateCredentialsRequest.client_secret", "max_length", tenants.MAX_SECRET),
]


@pytest.mark.parametrize(("name", "kind", "limit"), SERVICE_LIMITS)
def test_no_bound_undercuts_the_limit_its_service_enforces(
    name: str, kind: str, limit: int
) -> None:
    bound = getattr(bounds_of(field(name)), kind)
    assert bound >= limit, f"{name}: {kind} {bound} is below the service's limit {limit}"


@pytest.mark.parametrize("request_type", ["SendMessageRequest", "EditMessageRequest"])
def test_content_s_bound_is_above_any_configurable_message_limit(request_type: str) -> None:
    bound = bounds_of(field(f"keel.channels.v1.{request_type}.content")).max_bytes
    load_settings({"KEEL_MAX_MESSAGE_BYTES": str(bound)})
    with pytest.raises(ConfigError):
        load_settings({"KEEL_MAX_MESSAGE_BYTES": str(bound + 1)})


# -- the bypass that opened the issue, against a real server -------------------------------


@pytest.fixture(scope="module")
async def keel(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keel]:
    async with running_keel(database_url, tmp_path_factory.mktemp("bounds")) as running:
        yield running


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (  # the bypass: 4 MB through a 64 KiB limit; ten fields named, then "and 10 more"
            {"attachment_ids": [f"{i:03d}" + "a" * 200_000 for i in range(20)]},
            [f"attachment_ids[{i}]" for i in range(10)],
        ),
        (
            {"attachment_ids": ["ok", "x" * 129, "also\0bad"], "message_type": "x-" + "t" * 60},
            ["message_type", "attachment_ids[1]", "attachment_ids[2]"],
        ),
    ],
    ids=["twenty-attachment-ids-of-200-kb", "every-field-at-once"],
)
async def test_a_send_out_of_bounds_is_refused_naming_each_field_and_stores_nothing(
    keel: Keel, fields: dict[str, Any], named: list[str]
) -> None:
    tenant = await keel.tenant()
    channel = await tenant.group("alice")
    before = await tenant.snapshot(channel)
    request = pb.SendMessageRequest(channel_id=channel, user_id="alice", content="hi", **fields)
    error = await rpc_error(tenant.stub.SendMessage(request, metadata=tenant.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == named
    assert await tenant.snapshot(channel) == before
