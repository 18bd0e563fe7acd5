"""A send that queues deliveries wakes the process's job worker: they start at once, not at
the worker's next poll (here an hour away)."""

from __future__ import annotations

from pathlib import Path

from keel.notifications.v1 import notifications_pb2 as pb

from tests.notification_service.conftest import running_world
from tests.service_kit.test_jobs import wait_until

EMAIL, IN_APP = pb.NOTIFICATION_CHANNEL_EMAIL, pb.NOTIFICATION_CHANNEL_IN_APP


async def test_each_send_by_email_starts_its_delivery_without_waiting_for_the_poll(
    database_url: str, tmp_path: Path
) -> None:
    async with running_world(database_url, tmp_path, started_worker_poll=3600.0) as world:
        tenant = await world.tenant()
        await tenant.users("ann")
        await tenant.preferences("ann", email="ann@example.com")
        # One after another: after the first, the worker is waiting for its next poll.
        mine: list[str] = []
        for round_ in range(3):
            sent = await tenant.send("ann", title=f"Invoice {round_}", channels=[EMAIL, IN_APP])
            mine.append(sent[0].id)

            async def emailed_last() -> bool:
                return any(e.items[0].id == mine[-1] for e in world.mailer.sent)

            # Bounded by 10 s; the poll the worker would otherwise wait for is an hour away.
            await wait_until(emailed_last, f"the email of send {round_}")
        # (The database is shared: the worker also sends what earlier tests left queued.)
        emailed = [e.items[0].id for e in world.mailer.sent if e.items[0].id in mine]
        assert emailed == mine
