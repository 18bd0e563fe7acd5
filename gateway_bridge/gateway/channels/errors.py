"""Errors of the channel service (channels, members, messages).

Exception tree (each a kind of :mod:`service_kit.errors` error, which decides
its gRPC status)::

    KeelError
     ├── InvalidArgument
     │    └── InvalidChat              a field of a request is malformed
     │         └── AttachmentsNotReady an attachment id is no ready file of the tenant
     ├── NotFound
     │    ├── ChannelNotFound          no such channel in this tenant
     │    ├── MessageNotFound          no such message in this channel
     │    ├── UserNotFound             no such user in this tenant
     │    └── UsersNotFound            some of the users asked for (each named in the details)
     ├── PermissionDenied
     │    └── NotAllowed               not a member, not the sender, not an owner
     └── FailedPrecondition
          └── WrongState               e.g. editing a deleted message, leaving a direct channel

A client token that does not verify is :class:`service_kit.client_tokens.InvalidClientToken`
(the bridge checks tokens too).
"""

from __future__ import annotations

from collections.abc import Sequence

from service_kit.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)


class InvalidChat(InvalidArgument):
    """A field of a chat request is malformed (the violations name which)."""


class AttachmentsNotReady(InvalidChat):
    """Some ``attachment_ids`` (by their positions) name no ready file of the sender's
    tenant: unknown, still uploading, deleted, or another tenant's, which it does not
    tell apart."""

    def __init__(self, positions: Sequence[int]) -> None:
        violations = [
            FieldViolation(f"attachment_ids[{i}]", "is not a ready file of this tenant")
            for i in positions
        ]
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}", violations)
        self.positions = list(positions)


class ChannelNotFound(NotFound):
    """No channel with this id in the caller's tenant (another tenant's ids included)."""

    def __init__(self, channel_id: str) -> None:
        super().__init__(f"channel {channel_id!r} not found")


class MessageNotFound(NotFound):
    """No message with this id in the channel."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id!r} not found in this channel")


class UserNotFound(NotFound):
    """No user with this id in the caller's tenant."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} not found")


class UsersNotFound(NotFound):
    """Users asked for together that the tenant does not have; each is named in a
    ``google.rpc.ResourceInfo`` detail (type ``keel.channels.v1.User``)."""

    def __init__(self, user_ids: Sequence[str]) -> None:
        shown = ", ".join(repr(u) for u in user_ids[:20])
        more = f" and {len(user_ids) - 20} more" if len(user_ids) > 20 else ""
        super().__init__(
            f"users not found: {shown}{more}",
            resources=[("keel.channels.v1.User", user_id) for user_id in user_ids],
        )
        self.user_ids = list(user_ids)


class NotAllowed(PermissionDenied):
    """The user may not do this in this channel."""


class WrongState(FailedPrecondition):
    """The resource is not in a state that allows this request."""
