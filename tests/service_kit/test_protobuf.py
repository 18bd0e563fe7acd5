"""service_kit.protobuf: the fast conversions give exactly what google.protobuf's generic
helpers (Timestamp.FromDatetime, Struct.update, json_format.MessageToDict) give."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from service_kit.protobuf import dict_of, set_timestamp, struct, timestamp

TIMES = [
    datetime(2026, 11, 30, 21, 50, 7, 123456, tzinfo=UTC),
    datetime(2026, 11, 30, 23, 50, 7, 1, tzinfo=timezone(timedelta(hours=2))),
    datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 30, 21, 50, 7, 654321),  # naive: taken as UTC
]


def _generic(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


@pytest.mark.parametrize("value", TIMES, ids=str)
def test_a_timestamp_is_the_one_from_datetime_makes(value: datetime) -> None:
    assert timestamp(value) == _generic(value)
    in_place = timestamp_pb2.Timestamp(seconds=1, nanos=2)
    set_timestamp(in_place, value)
    assert in_place == _generic(value)
    assert in_place.ToDatetime(tzinfo=UTC) == (value if value.tzinfo else value.replace(tzinfo=UTC))


def test_no_time_is_no_timestamp() -> None:
    assert timestamp(None) is None


DATA: list[dict[str, Any]] = [
    {},
    {"a": 1, "b": "x", "c": True, "d": None, "e": 2.5},
    {"nested": {"list": [1, "two", [3.0, {"deep": False}], None, {}], "empty": []}},
    {"unicode ✓": "é", "big": 2**53, "negative": -0.0},
]


@pytest.mark.parametrize("value", DATA)
def test_a_struct_reads_back_as_message_to_dict_reads_it(value: dict[str, Any]) -> None:
    message = struct(value)
    # repr: 1 == 1.0, but a number must come back as the float MessageToDict gives
    assert repr(dict_of(message)) == repr(json_format.MessageToDict(message))
    assert message == json_format.ParseDict(value, struct_pb2.Struct())


def test_a_value_with_no_kind_reads_as_null() -> None:
    message = struct_pb2.Struct()
    message.fields["unset"].CopyFrom(struct_pb2.Value())
    assert dict_of(message) == json_format.MessageToDict(message) == {"unset": None}


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_a_number_json_cannot_carry_is_a_value_error(number: float) -> None:
    message = struct_pb2.Struct()
    message.fields["x"].list_value.values.add().number_value = number
    with pytest.raises(ValueError):
        json_format.MessageToDict(message)
    with pytest.raises(ValueError):
        dict_of(message)
