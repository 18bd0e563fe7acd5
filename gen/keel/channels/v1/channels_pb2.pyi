import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from keel.api.v1 import field_bounds_pb2 as _field_bounds_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChannelType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_TYPE_UNSPECIFIED: _ClassVar[ChannelType]
    CHANNEL_TYPE_DIRECT: _ClassVar[ChannelType]
    CHANNEL_TYPE_GROUP: _ClassVar[ChannelType]
    CHANNEL_TYPE_PUBLIC: _ClassVar[ChannelType]

class MemberRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_ROLE_UNSPECIFIED: _ClassVar[MemberRole]
    MEMBER_ROLE_OWNER: _ClassVar[MemberRole]
    MEMBER_ROLE_MEMBER: _ClassVar[MemberRole]

class MessageOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_ORDER_UNSPECIFIED: _ClassVar[MessageOrder]
    MESSAGE_ORDER_NEWEST_FIRST: _ClassVar[MessageOrder]
    MESSAGE_ORDER_OLDEST_FIRST: _ClassVar[MessageOrder]
CHANNEL_TYPE_UNSPECIFIED: ChannelType
CHANNEL_TYPE_DIRECT: ChannelType
CHANNEL_TYPE_GROUP: ChannelType
CHANNEL_TYPE_PUBLIC: ChannelType
MEMBER_ROLE_UNSPECIFIED: MemberRole
MEMBER_ROLE_OWNER: MemberRole
MEMBER_ROLE_MEMBER: MemberRole
MESSAGE_ORDER_UNSPECIFIED: MessageOrder
MESSAGE_ORDER_NEWEST_FIRST: MessageOrder
MESSAGE_ORDER_OLDEST_FIRST: MessageOrder

class User(_message.Message):
    __slots__ = ("id", "username", "email", "avatar", "metadata", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    username: str
    email: str
    avatar: str
    metadata: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., username: _Optional[str] = ..., email: _Optional[str] = ..., avatar: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Channel(_message.Message):
    __slots__ = ("id", "name", "type", "metadata", "created_by", "create_time", "update_time", "last_seq", "member_count")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    type: ChannelType
    metadata: _struct_pb2.Struct
    created_by: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    last_seq: int
    member_count: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[_Union[ChannelType, str]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., created_by: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ..., member_count: _Optional[int] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("channel_id", "user_id", "role", "join_time", "last_read_seq")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    JOIN_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    user_id: str
    role: MemberRole
    join_time: _timestamp_pb2.Timestamp
    last_read_seq: int
    def __init__(self, channel_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[_Union[MemberRole, str]] = ..., join_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_read_seq: _Optional[int] = ...) -> None: ...

class ReactionCount(_message.Message):
    __slots__ = ("emoji", "count")
    EMOJI_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    emoji: str
    count: int
    def __init__(self, emoji: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("file_id", "filename", "content_type", "size_bytes", "thumbnail_width", "thumbnail_height", "url", "thumbnail_url", "url_expire_time")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_URL_FIELD_NUMBER: _ClassVar[int]
    URL_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    filename: str
    content_type: str
    size_bytes: int
    thumbnail_width: int
    thumbnail_height: int
    url: str
    thumbnail_url: str
    url_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, file_id: _Optional[str] = ..., filename: _Optional[str] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., thumbnail_width: _Optional[int] = ..., thumbnail_height: _Optional[int] = ..., url: _Optional[str] = ..., thumbnail_url: _Optional[str] = ..., url_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("id", "channel_id", "user_id", "content", "message_type", "reply_to", "attachment_ids", "seq", "created_at", "updated_at", "edited", "deleted", "reaction_counts", "attachments")
    ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    EDITED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    REACTION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    channel_id: str
    user_id: str
    content: str
    message_type: str
    reply_to: str
    attachment_ids: _containers.RepeatedScalarFieldContainer[str]
    seq: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    edited: bool
    deleted: bool
    reaction_counts: _containers.RepeatedCompositeFieldContainer[ReactionCount]
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    def __init__(self, id: _Optional[str] = ..., channel_id: _Optional[str] = ..., user_id: _Optional[str] = ..., content: _Optional[str] = ..., message_type: _Optional[str] = ..., reply_to: _Optional[str] = ..., attachment_ids: _Optional[_Iterable[str]] = ..., seq: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., edited: _Optional[bool] = ..., deleted: _Optional[bool] = ..., reaction_counts: _Optional[_Iterable[_Union[ReactionCount, _Mapping]]] = ..., attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ...) -> None: ...

class CreateChannelRequest(_message.Message):
    __slots__ = ("name", "type", "metadata", "created_by", "member_ids", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    MEMBER_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ChannelType
    metadata: _struct_pb2.Struct
    created_by: str
    member_ids: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ChannelType, str]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., created_by: _Optional[str] = ..., member_ids: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateChannelResponse(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    def __init__(self, channel: _Optional[_Union[Channel, _Mapping]] = ...) -> None: ...

class GetChannelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetChannelResponse(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    def __init__(self, channel: _Optional[_Union[Channel, _Mapping]] = ...) -> None: ...

class ListChannelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "type", "member_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    type: ChannelType
    member_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., type: _Optional[_Union[ChannelType, str]] = ..., member_id: _Optional[str] = ...) -> None: ...

class ListChannelsResponse(_message.Message):
    __slots__ = ("channels", "next_page_token")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedCompositeFieldContainer[Channel]
    next_page_token: str
    def __init__(self, channels: _Optional[_Iterable[_Union[Channel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateChannelRequest(_message.Message):
    __slots__ = ("channel", "update_mask")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, channel: _Optional[_Union[Channel, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateChannelResponse(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    def __init__(self, channel: _Optional[_Union[Channel, _Mapping]] = ...) -> None: ...

class DeleteChannelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteChannelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpsertUserRequest(_message.Message):
    __slots__ = ("user", "update_mask")
    USER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    user: User
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpsertUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: User
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ...) -> None: ...

class GetUserRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: User
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ...) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users", "next_page_token")
    USERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    next_page_token: str
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class BatchGetUsersRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchGetUsersResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ...) -> None: ...

class AddMemberRequest(_message.Message):
    __slots__ = ("channel_id", "user_id", "role")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    user_id: str
    role: MemberRole
    def __init__(self, channel_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[_Union[MemberRole, str]] = ...) -> None: ...

class AddMemberResponse(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: Member
    def __init__(self, member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("channel_id", "user_id")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    user_id: str
    def __init__(self, channel_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class RemoveMemberResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMembersRequest(_message.Message):
    __slots__ = ("channel_id", "page_size", "page_token")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    page_size: int
    page_token: str
    def __init__(self, channel_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    next_page_token: str
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("channel_id", "user_id", "content", "message_type", "reply_to", "attachment_ids", "idempotency_key")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    user_id: str
    content: str
    message_type: str
    reply_to: str
    attachment_ids: _containers.RepeatedScalarFieldContainer[str]
    idempotency_key: str
    def __init__(self, channel_id: _Optional[str] = ..., user_id: _Optional[str] = ..., content: _Optional[str] = ..., message_type: _Optional[str] = ..., reply_to: _Optional[str] = ..., attachment_ids: _Optional[_Iterable[str]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class EditMessageRequest(_message.Message):
    __slots__ = ("channel_id", "message_id", "content", "user_id")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    message_id: str
    content: str
    user_id: str
    def __init__(self, channel_id: _Optional[str] = ..., message_id: _Optional[str] = ..., content: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class EditMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class DeleteMessageRequest(_message.Message):
    __slots__ = ("channel_id", "message_id", "user_id")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    message_id: str
    user_id: str
    def __init__(self, channel_id: _Optional[str] = ..., message_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class DeleteMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class GetMessageRequest(_message.Message):
    __slots__ = ("channel_id", "message_id")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    message_id: str
    def __init__(self, channel_id: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class GetMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("channel_id", "page_size", "page_token", "order", "before_seq", "after_seq", "reply_to", "offset")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    page_size: int
    page_token: str
    order: MessageOrder
    before_seq: int
    after_seq: int
    reply_to: str
    offset: int
    def __init__(self, channel_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order: _Optional[_Union[MessageOrder, str]] = ..., before_seq: _Optional[int] = ..., after_seq: _Optional[int] = ..., reply_to: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AddReactionRequest(_message.Message):
    __slots__ = ("channel_id", "message_id", "user_id", "emoji")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMOJI_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    message_id: str
    user_id: str
    emoji: str
    def __init__(self, channel_id: _Optional[str] = ..., message_id: _Optional[str] = ..., user_id: _Optional[str] = ..., emoji: _Optional[str] = ...) -> None: ...

class AddReactionResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class RemoveReactionRequest(_message.Message):
    __slots__ = ("channel_id", "message_id", "user_id", "emoji")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMOJI_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    message_id: str
    user_id: str
    emoji: str
    def __init__(self, channel_id: _Optional[str] = ..., message_id: _Optional[str] = ..., user_id: _Optional[str] = ..., emoji: _Optional[str] = ...) -> None: ...

class RemoveReactionResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class MarkReadRequest(_message.Message):
    __slots__ = ("channel_id", "user_id", "seq")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    user_id: str
    seq: int
    def __init__(self, channel_id: _Optional[str] = ..., user_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class MarkReadResponse(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: Member
    def __init__(self, member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...

class GetUnreadCountsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class UnreadCount(_message.Message):
    __slots__ = ("channel_id", "unread_count", "last_read_seq", "last_seq")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    UNREAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    unread_count: int
    last_read_seq: int
    last_seq: int
    def __init__(self, channel_id: _Optional[str] = ..., unread_count: _Optional[int] = ..., last_read_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class GetUnreadCountsResponse(_message.Message):
    __slots__ = ("unread_counts",)
    UNREAD_COUNTS_FIELD_NUMBER: _ClassVar[int]
    unread_counts: _containers.RepeatedCompositeFieldContainer[UnreadCount]
    def __init__(self, unread_counts: _Optional[_Iterable[_Union[UnreadCount, _Mapping]]] = ...) -> None: ...

class IssueClientTokenRequest(_message.Message):
    __slots__ = ("user_id", "ttl_seconds")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    ttl_seconds: int
    def __init__(self, user_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class IssueClientTokenResponse(_message.Message):
    __slots__ = ("token", "expire_time")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    token: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ChannelPosition(_message.Message):
    __slots__ = ("channel_id", "since_seq")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQ_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    since_seq: int
    def __init__(self, channel_id: _Optional[str] = ..., since_seq: _Optional[int] = ...) -> None: ...

class ConnectSubscribe(_message.Message):
    __slots__ = ("subscription_key", "tenant_id", "user_id", "channels", "batch_replays")
    SUBSCRIPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    BATCH_REPLAYS_FIELD_NUMBER: _ClassVar[int]
    subscription_key: str
    tenant_id: str
    user_id: str
    channels: _containers.RepeatedCompositeFieldContainer[ChannelPosition]
    batch_replays: bool
    def __init__(self, subscription_key: _Optional[str] = ..., tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., channels: _Optional[_Iterable[_Union[ChannelPosition, _Mapping]]] = ..., batch_replays: _Optional[bool] = ...) -> None: ...

class ConnectSubscribes(_message.Message):
    __slots__ = ("subscribes",)
    SUBSCRIBES_FIELD_NUMBER: _ClassVar[int]
    subscribes: _containers.RepeatedCompositeFieldContainer[ConnectSubscribe]
    def __init__(self, subscribes: _Optional[_Iterable[_Union[ConnectSubscribe, _Mapping]]] = ...) -> None: ...

class ConnectUnsubscribe(_message.Message):
    __slots__ = ("subscription_key", "channel_ids")
    SUBSCRIPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_IDS_FIELD_NUMBER: _ClassVar[int]
    subscription_key: str
    channel_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subscription_key: _Optional[str] = ..., channel_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ConnectSend(_message.Message):
    __slots__ = ("correlation_id", "tenant_id", "request", "traceparent")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    correlation_id: int
    tenant_id: str
    request: bytes
    traceparent: str
    def __init__(self, correlation_id: _Optional[int] = ..., tenant_id: _Optional[str] = ..., request: _Optional[bytes] = ..., traceparent: _Optional[str] = ...) -> None: ...

class ConnectSends(_message.Message):
    __slots__ = ("sends",)
    SENDS_FIELD_NUMBER: _ClassVar[int]
    sends: _containers.RepeatedCompositeFieldContainer[ConnectSend]
    def __init__(self, sends: _Optional[_Iterable[_Union[ConnectSend, _Mapping]]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("subscribe", "unsubscribe", "sends", "subscribes")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    SENDS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBES_FIELD_NUMBER: _ClassVar[int]
    subscribe: ConnectSubscribe
    unsubscribe: ConnectUnsubscribe
    sends: ConnectSends
    subscribes: ConnectSubscribes
    def __init__(self, subscribe: _Optional[_Union[ConnectSubscribe, _Mapping]] = ..., unsubscribe: _Optional[_Union[ConnectUnsubscribe, _Mapping]] = ..., sends: _Optional[_Union[ConnectSends, _Mapping]] = ..., subscribes: _Optional[_Union[ConnectSubscribes, _Mapping]] = ...) -> None: ...

class ChannelEvent(_message.Message):
    __slots__ = ("tenant_id", "channel_id", "seq", "event", "data_json", "event_id", "create_time", "traceparent")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    channel_id: str
    seq: int
    event: str
    data_json: str
    event_id: str
    create_time: _timestamp_pb2.Timestamp
    traceparent: str
    def __init__(self, tenant_id: _Optional[str] = ..., channel_id: _Optional[str] = ..., seq: _Optional[int] = ..., event: _Optional[str] = ..., data_json: _Optional[str] = ..., event_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class SubscribeResult(_message.Message):
    __slots__ = ("subscription_key", "channel_id", "code", "message", "last_seq")
    SUBSCRIPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    subscription_key: str
    channel_id: str
    code: int
    message: str
    last_seq: int
    def __init__(self, subscription_key: _Optional[str] = ..., channel_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., last_seq: _Optional[int] = ...) -> None: ...

class ChannelEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ChannelEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[ChannelEvent, _Mapping]]] = ...) -> None: ...

class SendResult(_message.Message):
    __slots__ = ("correlation_id", "message", "status")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    correlation_id: int
    message: Message
    status: bytes
    def __init__(self, correlation_id: _Optional[int] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., status: _Optional[bytes] = ...) -> None: ...

class SendResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SendResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SendResult, _Mapping]]] = ...) -> None: ...

class SubscribeResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubscribeResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SubscribeResult, _Mapping]]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("event", "subscribe_result", "event_batch", "send_results", "subscribe_results", "subscription_keys")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_RESULT_FIELD_NUMBER: _ClassVar[int]
    EVENT_BATCH_FIELD_NUMBER: _ClassVar[int]
    SEND_RESULTS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_KEYS_FIELD_NUMBER: _ClassVar[int]
    event: ChannelEvent
    subscribe_result: SubscribeResult
    event_batch: ChannelEventBatch
    send_results: SendResults
    subscribe_results: SubscribeResults
    subscription_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event: _Optional[_Union[ChannelEvent, _Mapping]] = ..., subscribe_result: _Optional[_Union[SubscribeResult, _Mapping]] = ..., event_batch: _Optional[_Union[ChannelEventBatch, _Mapping]] = ..., send_results: _Optional[_Union[SendResults, _Mapping]] = ..., subscribe_results: _Optional[_Union[SubscribeResults, _Mapping]] = ..., subscription_keys: _Optional[_Iterable[str]] = ...) -> None: ...
