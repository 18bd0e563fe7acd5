from keel.notifications.v1 import notifications_pb2 as _notifications_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LiveNotifications(_message.Message):
    __slots__ = ("tenant_id", "items")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    items: _containers.RepeatedCompositeFieldContainer[LiveNotification]
    def __init__(self, tenant_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[LiveNotification, _Mapping]]] = ...) -> None: ...

class LiveNotification(_message.Message):
    __slots__ = ("notification", "unread_count")
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    UNREAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    notification: _notifications_pb2.Notification
    unread_count: int
    def __init__(self, notification: _Optional[_Union[_notifications_pb2.Notification, _Mapping]] = ..., unread_count: _Optional[int] = ...) -> None: ...
