"""Small conversions between Python values and protobuf well-known types, for servicers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A ``Timestamp`` for an aware datetime; None stays None (the field is left unset)."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A ``Struct`` holding a JSON-like mapping."""
    message = struct_pb2.Struct()
    if value:
        message.update(dict(value))
    return message


def dict_of(message: struct_pb2.Struct) -> dict[str, Any]:
    """The mapping a ``Struct`` holds."""
    return json_format.MessageToDict(message)
