"""``keel_notification_deliveries_total``: what a send and its delivery jobs count, by
channel and outcome, read back from prometheus_client's registry as ``/metrics`` serves it."""

from __future__ import annotations

from keel.notifications.v1 import notifications_pb2 as pb
from prometheus_client import REGISTRY

from tests.notification_service.conftest import Tenant, World, retryable
from tests.notification_service.test_servicer import EMAIL, IN_APP

COUNTED = [
    (channel, outcome)
    for channel in ("in_app", "email")
    for outcome in ("sent", "failed", "skipped", "held")
]


def deliveries_counted() -> dict[tuple[str, str], float]:
    return {
        (channel, outcome): REGISTRY.get_sample_value(
            "keel_notification_deliveries_total", {"channel": channel, "outcome": outcome}
        )
        or 0.0
        for channel, outcome in COUNTED
    }


async def test_sends_and_delivery_attempts_are_counted_by_channel_and_outcome(
    world: World, tenant: Tenant
) -> None:
    await world.run_jobs()  # jobs other tests left due do not count here
    world.mailer.failures.clear()
    await tenant.users("amy", "ben")
    await tenant.preferences("amy", email="amy@example.com")
    await tenant.preferences("ben", email="ben@example.com")
    before = deliveries_counted()

    await tenant.send("amy", channels=[IN_APP, EMAIL], category="news")
    await tenant.send("ben", channels=[EMAIL], category="billing")
    # ben turns billing email off after it was queued: his email is skipped.
    await tenant.preferences(
        "ben", "rules", rules=[pb.CategoryRule(category="billing", channel=EMAIL, enabled=False)]
    )
    world.mailer.failures.append(retryable(451))  # amy's first attempt fails, the retry goes
    await world.run_jobs()

    after = deliveries_counted()
    changed = {key: after[key] - before[key] for key in COUNTED if after[key] != before[key]}
    assert changed == {
        ("in_app", "sent"): 1,
        ("email", "failed"): 1,
        ("email", "sent"): 1,
        ("email", "skipped"): 1,
    }
