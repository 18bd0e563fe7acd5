from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
BOUNDS_FIELD_NUMBER: _ClassVar[int]
bounds: _descriptor.FieldDescriptor

class FieldBounds(_message.Message):
    __slots__ = ("max_length", "max_bytes", "max_items")
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    max_length: int
    max_bytes: int
    max_items: int
    def __init__(self, max_length: _Optional[int] = ..., max_bytes: _Optional[int] = ..., max_items: _Optional[int] = ...) -> None: ...
