"""The request bounds compiled from the protos' options: paths, limits, and the rules every
string, Struct, Timestamp and Duration of a request follows (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from keel.api.v1 import field_bounds_pb2
from keel.channels.v1 import channels_pb2
from keel.events.v1 import events_pb2
from keel.files.v1 import files_pb2
from keel.tenants.v1 import tenants_pb2

from service_kit.bounds import (
    MAX_JSON_DEPTH,
    MAX_REPORTED,
    RequestBounds,
    missing_bounds,
    refusal,
)
from service_kit.errors import FieldViolation


def violations(message: Any) -> list[tuple[str, str]]:
    found = RequestBounds(message.DESCRIPTOR).violations(message)
    return [(v.field, v.description) for v in found]


def fields(message: Any) -> list[str]:
    return [field for field, _ in violations(message)]


def send(**values: Any) -> channels_pb2.SendMessageRequest:
    return channels_pb2.SendMessageRequest(
        channel_id="0b6b3a4e-7c1f-4f7e-9a53-3d0f0c9a1b2c", user_id="alice", **values
    )


def test_a_request_within_its_bounds_has_no_violations() -> None:
    assert violations(send(content="hello", attachment_ids=["a" * 128] * 20)) == []


def test_too_many_items_and_each_too_long_item_are_named_by_path() -> None:
    found = violations(send(attachment_ids=["ok", "x" * 129] + ["ok"] * 19))
    assert found == [
        ("attachment_ids", "has 21 items; the limit is 20"),
        ("attachment_ids[1]", "is 129 characters long; the limit is 128"),
    ]


def test_max_bytes_counts_utf8_bytes_not_characters() -> None:
    limit = 4 << 20
    assert fields(send(content="x" * limit)) == []
    assert fields(send(content="é" * (limit // 2))) == []
    assert violations(send(content="é" * (limit // 2 + 1))) == [
        ("content", f"is {limit + 2} bytes in UTF-8; the limit is {limit}")
    ]


def test_a_nul_character_is_refused_in_any_string() -> None:
    assert fields(send(content="a\0b", attachment_ids=["ok", "\0"], idempotency_key="\0")) == [
        "content",
        "attachment_ids[1]",
        "idempotency_key",
    ]


def test_paths_name_nested_fields() -> None:
    request = tenants_pb2.CreateTenantRequest(
        tenant=tenants_pb2.Tenant(name="n" * 201, permissions=["chat:*", "p" * 129])
    )
    assert fields(request) == ["tenant.name", "tenant.permissions[1]"]


def metadata(value: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ({"score": float("nan")}, "holds nan at 'score'"),
        ({"a": {"b": [1, float("inf")]}}, "holds inf at 'a.b[1]'"),
        ({"a": [{"b": float("-inf")}]}, "holds -inf at 'a[0].b'"),
        ({"a": "x\0y"}, "U+0000"),
        ({"a\0": 1}, "U+0000"),
    ],
)
def test_a_struct_that_json_cannot_carry_is_refused_saying_where(value: Any, said: str) -> None:
    found = violations(channels_pb2.CreateChannelRequest(metadata=metadata(value)))
    assert len(found) == 1
    assert found[0][0] == "metadata"
    assert said in found[0][1]


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_a_struct_may_nest_32_levels_and_no_more() -> None:
    deepest = channels_pb2.CreateChannelRequest(metadata=metadata(nested(MAX_JSON_DEPTH)))
    assert violations(deepest) == []
    too_deep = channels_pb2.CreateChannelRequest(metadata=metadata(nested(MAX_JSON_DEPTH + 1)))
    assert violations(too_deep) == [("metadata", "is nested more than 32 levels deep")]


def test_a_struct_over_its_encoded_size_is_refused() -> None:
    request = channels_pb2.UpsertUserRequest(
        user=channels_pb2.User(id="alice", metadata=metadata({"blob": "x" * 70_000}))
    )
    [(field, description)] = violations(request)
    assert field == "user.metadata"
    assert description.endswith("bytes encoded; the limit is 65536")


@pytest.mark.parametrize(
    "stamp",
    [
        timestamp_pb2.Timestamp(seconds=253_402_300_800),  # year 10000
        timestamp_pb2.Timestamp(seconds=-62_135_596_801),  # before year 1
        timestamp_pb2.Timestamp(seconds=0, nanos=-1),
        timestamp_pb2.Timestamp(seconds=0, nanos=1_000_000_000),
    ],
)
def test_a_timestamp_out_of_its_range_is_refused(stamp: timestamp_pb2.Timestamp) -> None:
    request = events_pb2.ReplayEventsRequest(webhook_id="w", since_time=stamp)
    assert fields(request) == ["since_time"]


def test_the_edges_of_the_timestamp_range_are_accepted() -> None:
    for seconds in (-62_135_596_800, 253_402_300_799):
        stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=999_999_999)
        assert fields(events_pb2.ReplayEventsRequest(since_time=stamp)) == []


def test_a_refusal_reports_a_bounded_number_of_violations() -> None:
    many = [FieldViolation(f"f[{i}]", "is bad") for i in range(MAX_REPORTED + 5)]
    error = refusal(many)
    assert [v.field for v in error.violations] == [f"f[{i}]" for i in range(MAX_REPORTED)]
    assert error.message.endswith("; and 5 more")


# -- maps, and what missing_bounds reports, on a message made for these tests ---------------


def _sample_types() -> tuple[Any, Any]:
    """``keel.boundstest.v1.Sample`` (bounded) and ``Loose`` (nothing declared)."""
    pool = descriptor_pool.Default()
    name = "keel/boundstest/v1/sample.proto"
    try:
        pool.FindFileByName(name)
    except KeyError:
        pool.AddSerializedFile(_sample_file(name).SerializeToString())
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"keel.boundstest.v1.{n}"))
        for n in ("Sample", "Loose")
    )


def _sample_file(name: str) -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name=name,
        package="keel.boundstest.v1",
        syntax="proto3",
        dependency=["google/protobuf/struct.proto", "keel/api/v1/field_bounds.proto"],
    )
    item = file.message_type.add(name="Item")
    item.field.add(name="label", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    item.field[0].options.Extensions[field_bounds_pb2.bounds].max_length = 4
    for message_name, bounded in (("Sample", True), ("Loose", False)):
        message = file.message_type.add(name=message_name)
        for entry_name, value_type, type_name in (
            ("TagsEntry", f.TYPE_STRING, ""),
            ("ItemsEntry", f.TYPE_MESSAGE, ".keel.boundstest.v1.Item"),
        ):
            entry = message.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
            value = entry.field.add(name="value", number=2, type=value_type)
            value.label = f.LABEL_OPTIONAL
            if type_name:  # an empty type_name still counts as set, which the pool refuses
                value.type_name = type_name
        for number, (field_name, type_, type_name) in enumerate(
            [
                ("tags", f.TYPE_MESSAGE, f".keel.boundstest.v1.{message_name}.TagsEntry"),
                ("items", f.TYPE_MESSAGE, f".keel.boundstest.v1.{message_name}.ItemsEntry"),
                ("blob", f.TYPE_BYTES, ""),
                ("data", f.TYPE_MESSAGE, ".google.protobuf.Struct"),
                ("numbers", f.TYPE_INT64, ""),
            ],
            start=1,
        ):
            repeated = field_name in ("tags", "items", "numbers")
            field = message.field.add(name=field_name, number=number, type=type_)
            field.label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
            if type_name:
                field.type_name = type_name
            if bounded:
                bounds = field.options.Extensions[field_bounds_pb2.bounds]
                bounds.max_items = 2 if repeated else 0
                bounds.max_length = 3 if field_name in ("tags", "items") else 0
                bounds.max_bytes = 8 if field_name in ("blob", "data") else 0
    return file


def test_map_keys_and_values_are_bounded_and_named_by_key() -> None:
    sample, _ = _sample_types()
    message = sample(tags={"ok": "abc", "long": "v"}, items={"k": {"label": "12345"}})
    assert sorted(fields(message)) == ['items["k"].label', 'tags["long"]']
    assert fields(sample(tags={"a": "1", "b": "2", "c": "3"})) == ["tags"]


def test_bytes_structs_and_scalar_lists_are_bounded() -> None:
    sample, _ = _sample_types()
    message = sample(blob=b"123456789", numbers=[1, 2, 3], data=metadata({"k": "long value"}))
    assert fields(message) == ["blob", "data", "numbers"]


def test_missing_bounds_names_every_field_that_declares_none() -> None:
    sample, loose = _sample_types()
    assert missing_bounds(sample.DESCRIPTOR) == []
    assert missing_bounds(loose.DESCRIPTOR) == [
        "keel.boundstest.v1.Loose.tags: needs max_items",
        "keel.boundstest.v1.Loose.tags: needs max_length or max_bytes",
        "keel.boundstest.v1.Loose.items: needs max_items",
        "keel.boundstest.v1.Loose.items: needs max_length or max_bytes",
        "keel.boundstest.v1.Loose.blob: needs max_bytes",
        "keel.boundstest.v1.Loose.data: needs max_bytes",
        "keel.boundstest.v1.Loose.numbers: needs max_items",
    ]


@pytest.mark.parametrize("with_size", [False, True])
def test_a_bytes_field_over_its_bound_is_refused_whether_or_not_the_size_is_known(
    with_size: bool,
) -> None:
    """An upload chunk's bound (1 MiB) holds when the encoded size is given too: only a
    request no larger than the bound may skip reading (copying) the chunk to measure it."""
    bounds = RequestBounds(files_pb2.UploadFileRequest.DESCRIPTOR)
    for size, refused in ((1 << 20, False), ((1 << 20) + 1, True), ((1 << 20) + 300, True)):
        message = files_pb2.UploadFileRequest(chunk=b"x" * size)
        encoded = len(message.SerializeToString()) if with_size else None
        found = bounds.violations(message, encoded_size=encoded)
        assert [v.field for v in found] == (["chunk"] if refused else []), size
