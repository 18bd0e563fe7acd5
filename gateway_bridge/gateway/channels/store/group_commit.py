"""Group commit's decisions: how each send of a batch is answered, and which are stored
with which seq. No I/O: the transaction (:mod:`.messages`) reads the state, asks
:func:`plan_batch`, and writes the plan.

The state is read under the locks of the batch's channel rows, so the plan may
number freely: each channel's placed sends take ``last_seq + 1``, ``+ 2``, …
in batch order, without gaps. An idempotency key the channel already stored
answers with the stored message and takes no seq; a key repeated within the
batch is stored once and answers every repeat with that message. A send whose
attachment ids are not all ready files of its tenant is refused
(``AttachmentsNotReady``) and takes no seq either. A first write
to a public channel by a non-member joins it, which a batch does not do: that
send runs alone after the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from gateway_bridge.gateway.channels.errors import (
    AttachmentsNotReady,
    ChannelNotFound,
    NotAllowed,
)
from gateway_bridge.gateway.channels.models import (
    Attachment,
    ChannelId,
    ChannelType,
    Message,
    MessageId,
    NewMessage,
)
from service_kit.auth import TenantId

#: A file of a tenant: ``(tenant_id, file_id)``.
FileKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ReadyFile:
    """A ready file a send may attach: who uploaded it (its ``user_id``; "" for the
    tenant's backend), and the attachment it makes."""

    uploaded_by: str
    attachment: Attachment


@dataclass(frozen=True, slots=True)
class LockedChannel:
    """A channel row of the batch, as its lock holds it."""

    id: str
    tenant_id: str
    type: ChannelType
    last_seq: int


@dataclass(frozen=True, slots=True)
class Placed:
    """Stored by the batch: a new message with the next seq of its channel."""

    message: Message
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Earlier:
    """An earlier send stored this idempotency key: answered with its message, no event."""

    message: Message


@dataclass(frozen=True, slots=True)
class RepeatOf:
    """Repeats the idempotency key of the send at ``index`` of the same batch: answered
    with that send's ``message``, no event."""

    index: int
    message: Message


@dataclass(frozen=True, slots=True)
class Alone:
    """Runs in a transaction of its own after the batch (a first write to a public channel
    by a non-member, which joins it)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Answered with ``error``: ``ChannelNotFound``, ``NotAllowed`` or
    ``AttachmentsNotReady``."""

    error: ChannelNotFound | NotAllowed | AttachmentsNotReady


#: An empty mapping that nobody can change (``plan_batch``'s default lookups).
_NONE: Mapping[Any, Any] = MappingProxyType({})

Outcome = Placed | Earlier | RepeatOf | Alone | Refused


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with a batch: an outcome per send, in batch order, and the new
    ``last_seq`` of every channel that placed a message."""

    outcomes: tuple[Outcome, ...]
    last_seq: Mapping[str, int]

    @property
    def placed(self) -> list[Placed]:
        """The messages to insert, in batch order."""
        return [o for o in self.outcomes if isinstance(o, Placed)]

    @property
    def alone(self) -> list[int]:
        """The indexes of the sends that run alone after the batch."""
        return [i for i, o in enumerate(self.outcomes) if isinstance(o, Alone)]

    @property
    def repeats(self) -> list[tuple[int, int]]:
        """``(index, index of the placed send it repeats)`` for each repeated key."""
        return [(i, o.index) for i, o in enumerate(self.outcomes) if isinstance(o, RepeatOf)]


def plan_batch(
    batch: Sequence[tuple[TenantId, NewMessage]],
    *,
    channels: Collection[LockedChannel],
    members: Collection[tuple[str, str]],
    stored: Mapping[tuple[str, str], Message] = _NONE,
    ready: Mapping[FileKey, ReadyFile] = _NONE,
    now: datetime,
    make_id: Callable[[], str],
) -> Plan:
    """Decide every send of ``batch`` (see the module docstring).

    ``channels`` are the locked rows of the batch's channels (a missing one does not
    exist), ``members`` the ``(channel_id, user_id)`` memberships of its senders,
    ``stored`` the stored messages by ``(channel_id, idempotency_key)``, ``ready`` the
    ready files among the sends' attachments by ``(tenant_id, file_id)`` (both empty
    unless given); ``now`` is the time of the new messages and ``make_id`` names each
    of them. An empty user id is the tenant's backend itself, which may write anywhere
    in the tenant.
    """
    locked = {channel.id: channel for channel in channels}
    last_seq = {channel.id: channel.last_seq for channel in channels}
    first_with_key: dict[tuple[str, str], RepeatOf] = {}
    outcomes: list[Outcome] = []
    for index, (tenant_id, new) in enumerate(batch):
        channel = locked.get(new.channel_id)
        key = (new.channel_id, new.idempotency_key)
        outcome: Outcome
        if channel is None or channel.tenant_id != tenant_id:
            outcome = Refused(ChannelNotFound(new.channel_id))
        elif new.idempotency_key and key in stored:
            outcome = Earlier(stored[key])
        elif new.idempotency_key and key in first_with_key:
            outcome = first_with_key[key]
        elif new.user_id and (new.channel_id, new.user_id) not in members:
            joins = channel.type is ChannelType.PUBLIC
            outcome = Alone() if joins else Refused(not_a_member(new, channel.type))
        else:
            try:
                attachments = attachments_for(tenant_id, new.user_id, new.attachment_ids, ready)
            except AttachmentsNotReady as refusal:
                outcomes.append(Refused(refusal))
                continue
            last_seq[channel.id] += 1
            seq = last_seq[channel.id]
            message = new_message(tenant_id, new, seq, now, make_id(), attachments)
            outcome = Placed(message, new.idempotency_key)
            if new.idempotency_key:
                first_with_key[key] = RepeatOf(index, message)
        outcomes.append(outcome)
    moved = {c: seq for c, seq in last_seq.items() if seq != locked[c].last_seq}
    return Plan(tuple(outcomes), moved)


def new_message(
    tenant_id: TenantId,
    new: NewMessage,
    seq: int,
    now: datetime,
    message_id: str,
    attachments: tuple[Attachment, ...] = (),
) -> Message:
    """The message ``new`` becomes when stored as ``message_id`` with ``seq`` at ``now``,
    carrying ``attachments`` (the files of its ``attachment_ids``)."""
    return Message(
        tenant_id=tenant_id,
        id=MessageId(message_id),
        channel_id=ChannelId(new.channel_id),
        user_id=new.user_id,
        content=new.content,
        message_type=new.message_type,
        reply_to=new.reply_to,
        attachment_ids=new.attachment_ids,
        seq=seq,
        created_at=now,
        updated_at=now,
        attachments=attachments,
    )


def attachments_for(
    tenant_id: str, sender: str, file_ids: Sequence[str], ready: Mapping[FileKey, ReadyFile]
) -> tuple[Attachment, ...]:
    """The attachments ``file_ids`` name, in order, from the ``ready`` files (by
    ``(tenant_id, file_id)``). A user (``sender`` not empty) attaches only files they
    uploaded; the tenant's backend (``sender`` empty) any of the tenant's. Raises
    :class:`AttachmentsNotReady` naming the positions of the ids that are neither (the same
    answer whatever the reason, so it tells nothing about files one may not attach)."""
    found = [ready.get((tenant_id, file_id)) for file_id in file_ids]
    missing = [
        i for i, file in enumerate(found) if file is None or (sender and file.uploaded_by != sender)
    ]
    if missing:
        raise AttachmentsNotReady(missing)
    return tuple(file.attachment for file in found if file is not None)


def not_a_member(new: NewMessage, channel_type: ChannelType) -> NotAllowed:
    """The refusal of a non-member's send to a channel that only members may write to."""
    return NotAllowed(f"user {new.user_id!r} is not a member of this {channel_type} channel")
