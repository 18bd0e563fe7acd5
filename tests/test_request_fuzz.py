"""Generated requests for every RPC of every Keel service, sent to a real server: none may be
answered INTERNAL or UNKNOWN (issue 10, "Bad input answers").

Requests are built from the descriptors (so a new RPC or field is fuzzed without a change
here): random and edge strings (NUL, long, non-ASCII, UTF-8 of a lone surrogate, which a
proto3 string may not hold), integers over their whole range, random enum numbers, nested
Structs with NaN and Infinity, Timestamps out of range, unknown fields, and sometimes bytes
cut short. Ids are often real ones (a channel, a message, a webhook, users), so requests get
past the id checks into the services. Each call has a deadline and each RPC a fixed number
of examples, so the suite stays bounded in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, field_mask_pb2, message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keel.channels.v1 import channels_pb2 as pb
from keel.events.v1 import events_pb2, events_pb2_grpc
from prometheus_client import REGISTRY

from file_service import server as file_server
from notification_service import server as notification_server
from service_kit.bounds import bounds_of
from service_kit.server import KeelServer
from tests.gateway_bridge.conftest import ADMIN, Keel, Metadata, field_violations, running_keel
from tests.test_request_bounds import proto_files

#: How many requests each RPC gets, and how long one call may take.
EXAMPLES = 25
CALL_DEADLINE = 10.0
#: How long a server stream is read before it counts as live (a subscription) and is cancelled.
STREAM_WATCH = 0.3

BAD = {grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0]}
#: A character the text strategies never draw: its UTF-8 is swapped, after encoding, for
#: the UTF-8 of a lone surrogate (which the client library refuses to encode itself).
MARKER = "\ue000"
LONE_SURROGATE = b"\xed\xa0\x80"


def methods() -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [
        method
        for name in proto_files()
        for service in pool.FindFileByName(name).services_by_name.values()
        for method in service.methods
    ]


METHODS = {method.full_name: method for method in methods()}


@dataclass
class World:
    """The servers, the credentials each service takes, and ids that exist."""

    keel: Keel
    extra: grpc.aio.Channel
    tenant_md: Metadata
    requests: Requests

    def channel(self, method: MethodDescriptor) -> grpc.aio.Channel:
        package = method.containing_service.file.package
        if package in ("keel.notifications.v1", "keel.files.v1"):
            return self.extra
        return self.keel.client

    def metadata(self, method: MethodDescriptor) -> Metadata:
        if method.containing_service.name == "TenantService" or method.name == "Connect":
            return () if method.name == "ValidateCredentials" else ADMIN
        return self.tenant_md


@pytest.fixture(scope="module")
async def world(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """Keel on PostgreSQL, the stricter store (no NUL in text, 64-bit integers)."""
    async with running_keel(
        pg_url, tmp_path_factory.mktemp("fuzz"), webhook_allow_private=True
    ) as keel:
        extra = KeelServer(
            keel.runtime,
            [
                notification_server.build(keel.runtime, gateway_addr=keel.address).spec,
                file_server.build(keel.runtime).spec,
            ],
            authenticator=keel.authenticator,
        )
        await extra.start()
        extra_client = grpc.aio.insecure_channel(f"127.0.0.1:{extra.port}")
        try:
            tenant = await keel.tenant("chat:*", "presence:*", "send:*", "upload:*")
            events = events_pb2_grpc.EventServiceStub(keel.client)
            channel, spare_channel = await tenant.group("alice", "bob"), await tenant.group()
            message = await tenant.send(channel, "hello")
            await tenant.send(channel, "again")
            webhook, spare_webhook = [
                (
                    await events.CreateWebhook(
                        events_pb2.CreateWebhookRequest(
                            url="http://127.0.0.1:9/hook", events=["*"]
                        ),
                        metadata=tenant.md,
                    )
                ).webhook.id
                for _ in range(2)
            ]
            for paused in (webhook, spare_webhook):  # nothing is ever posted to port 9
                await events.UpdateWebhook(
                    events_pb2.UpdateWebhookRequest(
                        webhook=events_pb2.Webhook(
                            id=paused, state=events_pb2.WEBHOOK_STATE_PAUSED
                        ),
                        update_mask=field_mask_pb2.FieldMask(paths=["state"]),
                    ),
                    metadata=tenant.md,
                )
            users = await tenant.stub.ListUsers(
                pb.ListUsersRequest(page_size=1), metadata=tenant.md
            )
            known = {
                # What a bare `id` names may be deleted (DeleteChannel, DeleteWebhook): spares.
                "id": [spare_channel, spare_webhook, message.id],
                "channel_id": [channel],
                "channel_ids": [channel],
                "message_id": [message.id],
                "reply_to": [message.id],
                "webhook_id": [webhook],
                "tenant_id": [tenant.id],
                "user_id": ["alice", "bob"],
                "user_ids": ["alice", "bob"],
                "member_ids": ["alice", "bob"],
                "member_id": ["alice"],
                "created_by": ["alice"],
                "page_token": ["", users.next_page_token],
                "events": ["*", "message:*", "message:created"],
                "url": ["http://127.0.0.1:9/hook", "https://example.com/hook"],
                "permissions": ["chat:*", "*"],
                "allowed_origins": ["https://app.example.com"],
                "message_type": ["text", "x-custom"],
                "emoji": ["👍"],
                "content": ["hello", "👍 again"],
            }
            yield World(keel, extra_client, tenant.md, Requests(known))
        finally:
            await extra_client.close()
            await extra.stop(1)


# -- requests built from descriptors --------------------------------------------------------

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
EDGE_TEXT = [
    *["", " ", "\0", "a\0b", "*", "chat:*", "x-", "é", "👍", "\u202e", MARKER],
    *["9" * 30, "1²-1", "9" * 20 + "-1", "-1", "0-0", "٣", "1e400", "NaN"],  # numbers, almost
]
EDGE_INTS = [0, 1, -1, 2, 50, 1000, 1001, 86_401, 604_801, 2**31, 2**53 + 1]


def text() -> st.SearchStrategy[str]:
    return st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters=MARKER), max_size=24
    )


def words() -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)


def json_values(*, wild: bool) -> st.SearchStrategy[Any]:
    if wild:
        leaves = st.none() | st.booleans() | st.floats() | text() | st.just("\0")
    else:
        leaves = st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
        leaves |= words()
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text(), inner, max_size=3),
        max_leaves=10,
    )


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


def structs(*, wild: bool) -> st.SearchStrategy[struct_pb2.Struct]:
    def build(values: dict[str, Any]) -> struct_pb2.Struct:
        struct = struct_pb2.Struct()
        struct.update(values)
        return struct

    options = [st.dictionaries(words(), json_values(wild=wild), max_size=4)]
    if wild:
        options.append(st.integers(1, 60).map(nested))
        options.append(st.integers(1, 3).map(lambda n: {"blob": "x" * (22_000 * n)}))
    return st.one_of(options).map(build)


class Requests:
    """Strategies for the requests of one world: ``wild`` values are any a client could
    send; the others are plausible (known ids, valid enums, small numbers), so that a
    request with one wild field gets past the others' checks."""

    def __init__(self, known: dict[str, list[str]]) -> None:
        self._known = known
        self._cache: dict[tuple[str, bool, int], st.SearchStrategy[Any]] = {}

    def message(
        self, descriptor: Descriptor, *, wild: bool, depth: int = 0
    ) -> st.SearchStrategy[Any]:
        """Messages of ``descriptor``'s type with a random subset of fields set."""
        key = (descriptor.full_name, wild, depth)
        if key not in self._cache:
            self._cache[key] = self._message(descriptor, wild=wild, depth=depth)
        return self._cache[key]

    def _message(self, descriptor: Descriptor, *, wild: bool, depth: int) -> st.SearchStrategy[Any]:
        kind = message_factory.GetMessageClass(descriptor)
        if depth > 3:
            return st.just(kind())
        fields = [(f, self.field(f, descriptor, wild=wild, depth=depth)) for f in descriptor.fields]

        # A plausible request sets most fields (required ones among them); a wild one half.
        absent = 2 if wild else 8

        @st.composite
        def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Any:
            message = kind()
            for f, strategy in fields:
                taken = f.containing_oneof and message.WhichOneof(f.containing_oneof.name)
                if not taken and draw(st.integers(0, absent - 1)) != absent - 1:
                    assign(message, f, draw(strategy))
            return message

        return build()

    def field(
        self, f: FieldDescriptor, parent: Descriptor, *, wild: bool, depth: int
    ) -> st.SearchStrategy[Any]:
        """Values of ``f`` as a whole: a list for a repeated field, a dict for a map."""
        entry = f.message_type if f.message_type and f.message_type.GetOptions().map_entry else None
        if entry is not None:
            return st.dictionaries(
                self.value(entry.fields_by_name["key"], parent, wild=wild, depth=depth),
                self.value(entry.fields_by_name["value"], parent, wild=wild, depth=depth),
                max_size=3,
            )
        element = self.value(f, parent, wild=wild, depth=depth)
        if not f.is_repeated:
            return element
        options = [st.lists(element, max_size=3)]
        bound = bounds_of(f).max_items
        if wild and bound and f.message_type is None:  # one too many (cheap to draw)
            options.append(element.map(lambda e: [e] * (bound + 1)))
        return st.one_of(options)

    def value(
        self, f: FieldDescriptor, parent: Descriptor, *, wild: bool, depth: int
    ) -> st.SearchStrategy[Any]:
        """One value of ``f`` (an element, for a repeated field)."""
        if f.type == FieldDescriptor.TYPE_STRING:
            return self.string(f, wild=wild)
        if f.type == FieldDescriptor.TYPE_BYTES:
            big = st.integers(1, 3).map(lambda n: b"\0" * (n << 19))
            return st.binary(max_size=64) | big if wild else st.binary(max_size=64)
        if f.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            width = 32 if f.type == FieldDescriptor.TYPE_FLOAT else 64
            return st.floats(width=width, allow_nan=wild, allow_infinity=wild)
        if f.message_type is not None:
            return self.submessage(f.message_type, parent, wild=wild, depth=depth)
        if f.enum_type is not None and not wild:
            return st.sampled_from([v.number for v in f.enum_type.values])
        low, high = INT_RANGES[f.type]
        if not wild:
            return st.integers(max(low, 0), 100)
        edges = [e for e in [low, high, *EDGE_INTS] if low <= e <= high]
        return st.sampled_from(edges) | st.integers(low, high) | st.integers(max(low, -10), 10)

    def string(self, f: FieldDescriptor, *, wild: bool) -> st.SearchStrategy[str]:
        known = self._known.get(f.name)
        if not wild:
            return st.sampled_from(known) if known else words()
        options = [text(), st.sampled_from(EDGE_TEXT)]
        if known:
            options.append(st.sampled_from(known))
        bounds = bounds_of(f)
        limit = bounds.max_length or bounds.max_bytes
        if limit and limit <= 65536:  # just under, at and over the bound
            options.append(st.sampled_from([limit - 1, limit, limit + 1]).map(lambda n: "é" * n))
        return st.one_of(options)

    def submessage(
        self, descriptor: Descriptor, parent: Descriptor, *, wild: bool, depth: int
    ) -> st.SearchStrategy[Any]:
        kind = message_factory.GetMessageClass(descriptor)
        name = descriptor.full_name
        if name == "google.protobuf.Struct":
            return structs(wild=wild)
        if name == "google.protobuf.FieldMask":
            names = sorted(
                {n for f in parent.fields if f.message_type for n in f.message_type.fields_by_name}
            )
            paths = st.sampled_from(names) if names else words()
            if wild:
                paths |= text()
            return st.lists(paths, max_size=3).map(lambda p: kind(paths=p))
        if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            if wild:
                seconds, nanos = st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1)
            else:
                seconds, nanos = st.integers(0, 4_000_000_000), st.integers(0, 999_999_999)
            return st.builds(kind, seconds=seconds, nanos=nanos)
        return self.message(descriptor, wild=wild, depth=depth + 1)


def assign(message: Any, f: FieldDescriptor, value: Any) -> None:
    """Set ``f`` of ``message`` to ``value`` (a list for a repeated field, a dict for a map)."""
    if not (f.is_repeated or f.message_type):
        setattr(message, f.name, value)
        return
    target = getattr(message, f.name)
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif f.is_repeated:
        target.extend(value)
    else:
        target.CopyFrom(value)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def unknown_fields(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """One field of a number no Keel message uses, of any wire type."""
    number = draw(st.integers(1000, 2**29 - 1))
    wire = draw(st.sampled_from([0, 1, 2, 5]))
    tag = varint(number << 3 | wire)
    if wire == 0:
        return tag + varint(draw(st.integers(0, 2**64 - 1)))
    if wire == 2:
        payload = draw(st.binary(max_size=16))
        return tag + varint(len(payload)) + payload
    size = 8 if wire == 1 else 4
    return tag + draw(st.binary(min_size=size, max_size=size))


@st.composite
def wire_requests(
    draw: Callable[[st.SearchStrategy[Any]], Any], descriptor: Descriptor, requests: Requests
) -> tuple[Any, bytes]:
    """A request and the bytes sent for it: a plausible request with a few wild fields (or
    a wild one), unknown fields added, sometimes a lone surrogate in a string, sometimes
    the bytes cut short."""
    if draw(st.integers(0, 3)) == 0:
        message = draw(requests.message(descriptor, wild=True))
    else:
        message = draw(requests.message(descriptor, wild=False))
        for _ in range(draw(st.integers(0, 2)) if descriptor.fields else 0):
            f = draw(st.sampled_from(list(descriptor.fields)))
            message.ClearField(f.name)
            assign(message, f, draw(requests.field(f, descriptor, wild=True, depth=0)))
    raw = message.SerializeToString().replace(MARKER.encode(), LONE_SURROGATE)
    raw += b"".join(draw(st.lists(unknown_fields(), max_size=2)))
    if raw and draw(st.integers(0, 9)) == 0:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    return message, raw


# -- calling --------------------------------------------------------------------------------


async def answer(world: World, method: MethodDescriptor, payloads: list[bytes]) -> list[int]:
    """Send ``payloads`` to ``method``; the status codes it answered with (the call's, and
    for Connect also each SubscribeResult's)."""
    channel = world.channel(method)
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = world.metadata(method)
    codes: list[int] = []
    try:
        if not method.client_streaming and not method.server_streaming:
            await channel.unary_unary(path)(payloads[0], metadata=metadata, timeout=CALL_DEADLINE)
        elif method.client_streaming and not method.server_streaming:
            call = channel.stream_unary(path)(metadata=metadata, timeout=CALL_DEADLINE)
            if await _wrote_all(call, payloads):
                await call
        else:
            if method.client_streaming:
                call = channel.stream_stream(path)(metadata=metadata, timeout=CALL_DEADLINE)
                if not await _wrote_all(call, payloads):
                    return codes
            else:
                call = channel.unary_stream(path)(
                    payloads[0], metadata=metadata, timeout=CALL_DEADLINE
                )
            codes += await _drain(call, method)
    except grpc.aio.AioRpcError as error:
        codes.append(error.code().value[0])
    return codes


async def _wrote_all(call: Any, payloads: list[bytes]) -> bool:
    """Write ``payloads`` to a client stream and close it; False when the server ended
    the call before it read everything (it refused a message). Then the client's own
    write fails, with a status of the client's making ("Internal error from Core"), not
    the server's: what the server answered is read from its metrics instead."""
    try:
        for payload in payloads:
            await call.write(payload)
        await call.done_writing()
    except grpc.aio.AioRpcError:
        return False
    return True


async def _drain(call: Any, method: MethodDescriptor) -> list[int]:
    """Read a server stream to its end; one still open after ``STREAM_WATCH`` s is live
    (a subscription) and is cancelled."""
    codes: list[int] = []
    output = message_factory.GetMessageClass(method.output_type)
    try:
        async with asyncio.timeout(STREAM_WATCH):
            while (item := await call.read()) is not grpc.aio.EOF:
                response = output.FromString(item)
                if method.name == "Connect" and response.HasField("subscribe_result"):
                    codes.append(response.subscribe_result.code)
    except TimeoutError:
        call.cancel()
    return codes


@pytest.mark.parametrize("name", sorted(METHODS))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_no_generated_request_is_answered_internal_or_unknown(
    world: World, name: str, data: st.DataObject
) -> None:
    method = METHODS[name]
    count = data.draw(st.integers(1, 3)) if method.client_streaming else 1
    sent = [data.draw(wire_requests(method.input_type, world.requests)) for _ in range(count)]
    before = _badly_answered(method)
    codes = await answer(world, method, [raw for _, raw in sent])
    shown = [_short(m) for m, _ in sent]
    assert not set(codes) & BAD, f"{name} answered {codes} to {shown}"
    # The server's own count of its answers (every RPC is counted by status code).
    assert _badly_answered(method) == before, f"{name} answered INTERNAL or UNKNOWN to {shown}"


def _badly_answered(method: MethodDescriptor) -> float:
    """How many calls of ``method`` the server answered INTERNAL or UNKNOWN so far."""
    service = method.containing_service.full_name
    return sum(
        REGISTRY.get_sample_value(
            "keel_grpc_server_handled_total",
            {"grpc_service": service, "grpc_method": method.name, "grpc_code": code},
        )
        or 0.0
        for code in ("INTERNAL", "UNKNOWN")
    )


def _short(message: Any) -> str:
    text = repr(message)
    return text if len(text) <= 600 else text[:600] + "…"


def test_every_rpc_is_fuzzed() -> None:
    services = {m.containing_service.full_name for m in METHODS.values()}
    assert services >= {
        "keel.tenants.v1.TenantService",
        "keel.channels.v1.ChannelService",
        "keel.events.v1.EventService",
        "keel.notifications.v1.NotificationService",
        "keel.files.v1.FileService",
    }


# -- what the fuzz found, pinned -------------------------------------------------------


@pytest.mark.parametrize("after", ["1²-1", "99999999999999999999-1", "1-99999999999999999999"])
async def test_a_cursor_that_is_no_cursor_is_refused_naming_after(world: World, after: str) -> None:
    """Digits ``int()`` refuses ('²') and numbers past 64 bits once answered INTERNAL."""
    tenant_md = world.metadata(METHODS["keel.events.v1.EventService.SubscribeEvents"])
    call = events_pb2_grpc.EventServiceStub(world.keel.client).SubscribeEvents(
        events_pb2.SubscribeEventsRequest(after=after), metadata=tenant_md, timeout=CALL_DEADLINE
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["after"]
