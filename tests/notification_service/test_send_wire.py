"""SendNotification converts each notification to its wire form once: the answer holds the
very messages the live side published on the bus (notification_service/live.py), and a
retry, which publishes nothing, still answers every notification."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from keel.notifications.v1 import live_pb2
from keel.notifications.v1 import notifications_pb2 as pb

from notification_service import convert, live
from notification_service.models import Notification
from service_kit.bus import NOTIFICATIONS_LIVE_TOPIC
from tests.notification_service.conftest import Tenant, World


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the notifications made into their wire form, one entry each time one
    is: alone (``notification_to_proto``) or among others (``notifications_to_proto``,
    which the live side uses and which may copy one for the others)."""
    converted: list[str] = []
    one: Callable[[Notification], pb.Notification] = convert.notification_to_proto
    many: Callable[[Sequence[Notification]], list[pb.Notification]] = convert.notifications_to_proto
    among_others = False

    def counting_one(notification: Notification) -> pb.Notification:
        if not among_others:
            converted.append(notification.id)
        return one(notification)

    def counting_many(notifications: Sequence[Notification]) -> list[pb.Notification]:
        nonlocal among_others
        converted.extend(n.id for n in notifications)
        among_others = True
        try:
            return many(notifications)
        finally:
            among_others = False

    monkeypatch.setattr(convert, "notification_to_proto", counting_one)
    monkeypatch.setattr(live, "notifications_to_proto", counting_many)
    return converted


async def test_each_notification_is_converted_once_for_the_bus_and_the_answer(
    world: World, tenant: Tenant, conversions: list[str]
) -> None:
    await tenant.users("ann", "bob", "cy")
    carried: list[pb.Notification] = []
    all_carried = asyncio.Event()

    def received(raw: bytes) -> None:
        message = live_pb2.LiveNotifications.FromString(raw)
        if message.tenant_id == tenant.id:
            carried.extend(i.notification for i in message.items)
        if len(carried) >= 3:
            all_carried.set()

    subscription = await world.runtime.bus.subscribe(NOTIFICATIONS_LIVE_TOPIC, received)
    try:
        answered = await tenant.send(
            "ann",
            "bob",
            "cy",
            title="Hi",
            data={"k": [1, "v"]},
            channels=[pb.NOTIFICATION_CHANNEL_IN_APP],
        )
        await asyncio.wait_for(all_carried.wait(), 10)  # the Redis bus delivers later
    finally:
        await subscription.close()
    assert sorted(conversions) == sorted(n.id for n in answered)
    assert carried == answered
    assert [n.user_id for n in answered] == ["ann", "bob", "cy"]
    assert all(n.data["k"] == [1, "v"] and n.HasField("create_time") for n in answered)


async def test_a_retry_publishes_nothing_and_answers_every_notification(
    tenant: Tenant, conversions: list[str]
) -> None:
    await tenant.users("ann", "bob")
    first = await tenant.send("ann", "bob", request_id="retry-1")
    conversions.clear()
    again = await tenant.send("ann", "bob", request_id="retry-1")
    assert again == first
    assert sorted(conversions) == sorted(n.id for n in first)
