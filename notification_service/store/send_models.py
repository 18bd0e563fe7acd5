"""What storing a send takes and gives: the send to store, what planning it reads, the
stored send, and the answer to a request id used before."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from notification_service.models import (
    Notification,
    PlannedRecipient,
    Preferences,
    PushSubscription,
    SendRequest,
    TenantSettings,
    UserId,
)


class SendExists(Exception):
    """The tenant already made a send with this request id: ``send_id``, of a request
    with ``fingerprint``."""

    def __init__(self, send_id: str, fingerprint: str) -> None:
        super().__init__(f"request already sent as {send_id}")
        self.send_id = send_id
        self.fingerprint = fingerprint


@dataclass(frozen=True, slots=True)
class SendInputs:
    """What planning a send needs from storage, read in the send's transaction."""

    preferences: Mapping[str, Preferences]
    settings: TenantSettings
    #: Each recipient's push subscriptions, oldest first; empty unless the send may push.
    subscriptions: Mapping[str, list[PushSubscription]]


#: Plans every recipient of a send from what was read (pure: no I/O).
SendPlanner = Callable[[SendInputs], Sequence[PlannedRecipient]]


@dataclass(frozen=True, slots=True)
class NewSend:
    """A checked SendNotification to ``user_ids``, ready to plan and store."""

    tenant_id: str
    send_id: str
    request: SendRequest
    user_ids: Sequence[UserId]
    plan: SendPlanner
    now: datetime
    max_attempts: int
    fingerprint: str = ""  # of the request, kept with its request_id


@dataclass(frozen=True, slots=True)
class StoredSend:
    """A committed send: its notifications in order, the unread count of every inbox it
    landed in (as of its commit), the tenant settings it was planned with, and whether
    it enqueued a job due at once."""

    notifications: list[Notification]
    unread: dict[str, int]
    settings: TenantSettings
    jobs_due: bool
