"""Who may do what in a channel: small predicates the store applies inside its transactions."""

from __future__ import annotations

from gateway_bridge.gateway.channels.models import Channel, ChannelType, Member, Message, Role


def joins_by_writing(channel: Channel) -> bool:
    """Whether a non-member who writes (sends, reacts) joins the channel instead of being
    refused: true for public channels, where anyone in the tenant may join."""
    return channel.type is ChannelType.PUBLIC


def may_read(channel_type: ChannelType, is_member: bool) -> bool:
    """Members read every channel; anyone in the tenant reads public ones."""
    return is_member or channel_type is ChannelType.PUBLIC


def may_edit(message: Message, user_id: str) -> bool:
    """Only the sender edits a message; an empty user id is the tenant's backend itself."""
    return not user_id or message.user_id == user_id


def may_delete(message: Message, user_id: str, member: Member | None) -> bool:
    """The sender, a channel owner, or the tenant's backend (empty user id) may delete."""
    return (
        not user_id
        or message.user_id == user_id
        or (member is not None and member.role is Role.OWNER)
    )
