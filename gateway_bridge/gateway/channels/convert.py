"""Conversions between ``keel.channels.v1`` messages and the chat domain."""

from __future__ import annotations

from keel.channels.v1 import channels_pb2

from gateway_bridge.gateway.channels.attachment_links import AttachmentLinks, SignedAttachment
from gateway_bridge.gateway.channels.models import (
    Channel,
    ChannelType,
    Member,
    Message,
    Role,
    UnreadCount,
    User,
)
from service_kit.protobuf import struct, timestamp

CHANNEL_TYPES = {
    ChannelType.DIRECT: channels_pb2.CHANNEL_TYPE_DIRECT,
    ChannelType.GROUP: channels_pb2.CHANNEL_TYPE_GROUP,
    ChannelType.PUBLIC: channels_pb2.CHANNEL_TYPE_PUBLIC,
}
CHANNEL_TYPES_BY_PROTO = {v: k for k, v in CHANNEL_TYPES.items()}
ROLES = {Role.OWNER: channels_pb2.MEMBER_ROLE_OWNER, Role.MEMBER: channels_pb2.MEMBER_ROLE_MEMBER}
ROLES_BY_PROTO = {v: k for k, v in ROLES.items()}


def user_to_proto(user: User) -> channels_pb2.User:
    return channels_pb2.User(
        id=user.id,
        username=user.username,
        email=user.email,
        avatar=user.avatar,
        metadata=struct(user.metadata),
        create_time=timestamp(user.created_at),
    )


def channel_to_proto(channel: Channel) -> channels_pb2.Channel:
    return channels_pb2.Channel(
        id=channel.id,
        name=channel.name,
        type=CHANNEL_TYPES[channel.type],
        metadata=struct(channel.metadata),
        created_by=channel.created_by,
        create_time=timestamp(channel.created_at),
        update_time=timestamp(channel.updated_at),
        last_seq=channel.last_seq,
        member_count=channel.member_count,
    )


def member_to_proto(member: Member) -> channels_pb2.Member:
    return channels_pb2.Member(
        channel_id=member.channel_id,
        user_id=member.user_id,
        role=ROLES[member.role],
        join_time=timestamp(member.joined_at),
        last_read_seq=member.last_read_seq,
    )


def message_to_proto(message: Message, links: AttachmentLinks) -> channels_pb2.Message:
    """The message as the API returns it, its attachments with freshly signed URLs."""
    return channels_pb2.Message(
        id=message.id,
        channel_id=message.channel_id,
        user_id=message.user_id,
        content=message.content,
        message_type=message.message_type,
        reply_to=message.reply_to,
        attachment_ids=message.attachment_ids,
        seq=message.seq,
        created_at=timestamp(message.created_at),
        updated_at=timestamp(message.updated_at),
        edited=message.edited,
        deleted=message.deleted,
        reaction_counts=[
            channels_pb2.ReactionCount(emoji=e, count=c) for e, c in message.reaction_counts
        ],
        attachments=[
            attachment_to_proto(link) for link in links.sign(message.tenant_id, message.attachments)
        ],
    )


def attachment_to_proto(link: SignedAttachment) -> channels_pb2.Attachment:
    attachment = link.attachment
    return channels_pb2.Attachment(
        file_id=attachment.file_id,
        filename=attachment.filename,
        content_type=attachment.content_type,
        size_bytes=attachment.size_bytes,
        thumbnail_width=attachment.thumbnail_width,
        thumbnail_height=attachment.thumbnail_height,
        url=link.url,
        thumbnail_url=link.thumbnail_url,
        url_expire_time=timestamp(link.expire_time),
    )


def unread_to_proto(unread: UnreadCount) -> channels_pb2.UnreadCount:
    return channels_pb2.UnreadCount(
        channel_id=unread.channel_id,
        unread_count=unread.unread_count,
        last_read_seq=unread.last_read_seq,
        last_seq=unread.last_seq,
    )
