"""Small conversions between Python values and protobuf well-known types, for servicers.

They run once or more per message a service answers, so they avoid the generic (and
slow) paths of ``google.protobuf``: :func:`timestamp` computes seconds and nanos with
integer arithmetic instead of ``Timestamp.FromDatetime`` (``utctimetuple`` and
``calendar.timegm``), and empty structs skip the ``Struct`` helpers and
``json_format`` altogether. The results are the same as those paths give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import struct_pb2, timestamp_pb2

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS_PER_DAY: Final = 86400


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A ``Timestamp`` for a datetime (a naive one is taken as UTC, as
    ``Timestamp.FromDatetime`` does); None stays None (the field is left unset)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * _SECONDS_PER_DAY + delta.seconds, nanos=delta.microseconds * 1000
    )


def set_timestamp(field: timestamp_pb2.Timestamp, value: datetime) -> None:
    """Set a message's ``Timestamp`` field in place to ``value`` (naive: UTC), as
    :func:`timestamp` would make it, without making and copying a second message."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    field.seconds = delta.days * _SECONDS_PER_DAY + delta.seconds
    field.nanos = delta.microseconds * 1000


def struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A ``Struct`` holding a JSON-like mapping."""
    message = struct_pb2.Struct()
    if value:
        message.update(dict(value))
    return message


def dict_of(message: struct_pb2.Struct) -> dict[str, Any]:
    """The mapping a ``Struct`` holds, as ``json_format.MessageToDict`` gives it (numbers
    are floats; an infinite or NaN number is a ValueError)."""
    if not message.fields:
        return {}
    return {key: _python_value(value) for key, value in message.fields.items()}


def _python_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if math.isinf(number) or math.isnan(number):
            raise ValueError(
                f"Fail to serialize {number} for Value.number_value,"
                " which would parse as string_value"
            )
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return dict_of(value.struct_value)
    if kind == "list_value":
        return [_python_value(item) for item in value.list_value.values]
    return None  # null_value, or no kind at all (what MessageToDict makes of it too)
