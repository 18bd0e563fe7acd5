"""Errors of the notification service.

Exception tree (each a kind of :mod:`service_kit.errors` error, which decides its gRPC
status)::

    KeelError
     ├── InvalidArgument
     │    └── InvalidNotification      a field of a request is malformed
     ├── NotFound
     │    ├── NotificationNotFound     no such notification in this tenant
     │    ├── UsersNotFound            recipients the tenant does not have (named)
     │    └── ChannelNotFound          no such channel in this tenant
     ├── PermissionDenied
     │    └── NeedsFullSendScope       send:basic asked for what only send:* may do
     └── Unavailable
          └── GatewayUnavailable       the gateway (users, members) cannot be reached
"""

from __future__ import annotations

from collections.abc import Sequence

from service_kit.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable

#: The scope that allows everything, and the one that allows the basics.
FULL_SCOPE = "send:*"
BASIC_SCOPE = "send:basic"
#: How a missing user is named in a NOT_FOUND's ``google.rpc.ResourceInfo`` details.
USER_RESOURCE = "keel.channels.v1.User"


class InvalidNotification(InvalidArgument):
    """A field of a notification request is malformed (the violations name which)."""


class NotificationNotFound(NotFound):
    """No notification with this id in the caller's tenant (another tenant's ids included)."""

    def __init__(self, notification_id: str) -> None:
        super().__init__(f"notification {notification_id!r} not found")


class UsersNotFound(NotFound):
    """Users the tenant does not have (another tenant's ids included). For a send
    (``sending``), its recipients: nothing was stored or sent, and the message says so."""

    def __init__(self, user_ids: Sequence[str], *, sending: bool = False) -> None:
        shown = ", ".join(repr(u) for u in user_ids[:20])
        more = f" and {len(user_ids) - 20} more" if len(user_ids) > 20 else ""
        noun = "user" if len(user_ids) == 1 else "users"
        super().__init__(
            f"{noun} not found: {shown}{more}" + ("; nothing was sent" if sending else ""),
            resources=[(USER_RESOURCE, user_id) for user_id in user_ids],
        )
        self.user_ids = list(user_ids)


class ChannelNotFound(NotFound):
    """No channel with this id in the caller's tenant."""

    def __init__(self, channel_id: str) -> None:
        super().__init__(f"channel {channel_id!r} not found")


class NeedsFullSendScope(PermissionDenied):
    """A tenant with ``send:basic`` (and not ``send:*``) asked for more."""

    def __init__(self, tenant_name: str, what: str) -> None:
        super().__init__(
            f"{what} needs the permission scope {FULL_SCOPE!r}; tenant {tenant_name!r}"
            f" has only {BASIC_SCOPE!r}"
        )


class GatewayUnavailable(Unavailable):
    """The gateway, which owns users and channel members, did not answer."""

    def __init__(self, why: str) -> None:
        super().__init__(f"cannot check recipients with the gateway: {why}", retry_after=1.0)
