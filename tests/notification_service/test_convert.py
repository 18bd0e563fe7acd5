"""notification_service.convert: a notification's wire form carries every field of the
domain value (the fast conversion builds the same message the generic protobuf helpers
would)."""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from keel.notifications.v1 import notifications_pb2 as pb

from notification_service.convert import (
    WIRE_CONTENT,
    notification_to_proto,
    notifications_to_proto,
)
from notification_service.models import (
    Channel,
    ChannelDelivery,
    DeliveryState,
    Notification,
    NotificationId,
    UserId,
)

NOW = datetime(2026, 11, 30, 21, 50, 7, 123456, tzinfo=UTC)


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _full() -> Notification:
    return Notification(
        NotificationId("0192d7a0-0000-7000-8000-000000000001"),
        "tenant",
        UserId("ann"),
        "mention",
        "Title",
        "Body",
        {"n": 1, "nested": {"list": [True, None, "x"]}},
        (Channel.IN_APP, Channel.EMAIL),
        NOW,
        channel_id="team",
        send_time=NOW + timedelta(minutes=5),
        read_time=NOW + timedelta(hours=1),
        deliveries=(
            ChannelDelivery(Channel.IN_APP, DeliveryState.SENT, NOW),
            ChannelDelivery(Channel.EMAIL, DeliveryState.FAILED, NOW, "550 no such user"),
        ),
        inbox_time=NOW,
    )


def _expected(n: Notification) -> pb.Notification:
    """The message field by field, with google.protobuf's own helpers."""
    data = struct_pb2.Struct()
    data.update(dict(n.data))
    return pb.Notification(
        id=n.id,
        user_id=n.user_id,
        title=n.title,
        body=n.body,
        data=data,
        channels=[pb.NOTIFICATION_CHANNEL_IN_APP, pb.NOTIFICATION_CHANNEL_EMAIL][: len(n.channels)],
        read=n.read,
        read_time=_stamp(n.read_time) if n.read_time else None,
        create_time=_stamp(n.create_time),
        deliveries=[
            pb.ChannelDelivery(
                channel=pb.NOTIFICATION_CHANNEL_IN_APP
                if d.channel is Channel.IN_APP
                else pb.NOTIFICATION_CHANNEL_EMAIL,
                state=pb.DELIVERY_STATE_SENT
                if d.state is DeliveryState.SENT
                else pb.DELIVERY_STATE_FAILED,
                update_time=_stamp(d.update_time),
                error=d.error,
            )
            for d in n.deliveries
        ],
        category=n.category,
        channel_id=n.channel_id,
        send_time=_stamp(n.send_time) if n.send_time else None,
    )


def _bare() -> Notification:
    return Notification(
        NotificationId("0192d7a0-0000-7000-8000-000000000002"),
        "tenant",
        UserId("bob"),
        "general",
        "Hi",
        "",
        {},
        (Channel.IN_APP,),
        NOW,
    )


@pytest.mark.parametrize("notification", [_full(), _bare()], ids=["every-field", "bare"])
def test_the_wire_form_carries_every_field(notification: Notification) -> None:
    made = notification_to_proto(notification)
    assert made == _expected(notification)
    assert made.read is notification.read
    assert made.HasField("read_time") is (notification.read_time is not None)
    assert made.HasField("send_time") is (notification.send_time is not None)
    every = {f.name for f in pb.Notification.DESCRIPTOR.fields}
    if notification.read_time is not None:  # every field set: none left at its default
        assert {f.name for f, _ in made.ListFields()} == every


def test_a_sends_alike_notifications_are_copied_and_others_converted_on_their_own() -> None:
    full, bare = _full(), _bare()
    alike = [replace(full, id=NotificationId(f"id-{i}"), user_id=UserId(f"u{i}")) for i in range(3)]
    # Equal but not the same objects: converted on their own, to the same wire form.
    equal = replace(alike[0], id=NotificationId("id-eq"), title="".join(["Tit", "le"]))
    given = [*alike, bare, equal, replace(alike[1], id=NotificationId("id-last"))]
    made = notifications_to_proto(given)
    assert made == [notification_to_proto(n) for n in given]
    assert len({id(m) for m in made}) == len(given)  # each its own message


def test_a_notification_puts_on_the_wire_its_content_besides_its_id_and_user() -> None:
    fields = {f.name for f in dataclass_fields(Notification)}
    assert set(WIRE_CONTENT) == fields - {"id", "user_id", "tenant_id", "inbox_time"}
