"""Group commit of sends (notification_service/store/sends.py and send_writes.py): the
store on the real SQLite and PostgreSQL, sends submitted together as concurrent calls
submit them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from notification_service.models import (
    CategoryDefault,
    CategoryRule,
    Channel,
    DeliveryState,
    NotificationId,
    PlannedChannel,
    PlannedRecipient,
    Preferences,
    QuietHours,
    SendRequest,
    Timing,
    UserId,
)
from notification_service.store import NewSend, SendExists, SqlNotificationStore, StoredSend
from notification_service.store import sends as sends_module
from notification_service.store.send_models import SendInputs
from notification_service.store.send_plain_pg import write_plain_sends
from notification_service.store.send_writes import write_sends
from service_kit.config import load_settings
from service_kit.db import create_engine
from service_kit.schema import jobs as jobs_table
from service_kit.schema import notification_deliveries, notification_digests, notifications
from service_kit.validation import new_id

EMAIL_DIGEST = PlannedChannel(Channel.EMAIL, timing=Timing(digest_seconds=600))


def _send(
    tenant_id: str,
    *user_ids: str,
    request_id: str = "",
    channels: Sequence[PlannedChannel] = (PlannedChannel(Channel.IN_APP),),
    fail: Exception | None = None,
    notification_id: str | None = None,
) -> NewSend:
    """A send to ``user_ids`` planned as ``channels`` for each; planning raises ``fail``;
    ``notification_id`` names its (first) notification."""

    def plan(_: SendInputs) -> list[PlannedRecipient]:
        if fail is not None:
            raise fail
        return [
            PlannedRecipient(
                NotificationId(notification_id if notification_id and i == 0 else new_id()),
                UserId(user_id),
                tuple(channels),
            )
            for i, user_id in enumerate(user_ids)
        ]

    wanted = tuple(dict.fromkeys(c.channel for c in channels))
    request = SendRequest(
        title="Hi", user_ids=list(user_ids), request_id=request_id, channels=wanted
    )
    return NewSend(
        tenant_id, new_id(), request, [UserId(u) for u in user_ids], plan, datetime.now(UTC), 3
    )


@pytest.fixture
async def store(engine: AsyncEngine) -> SqlNotificationStore:
    return SqlNotificationStore(engine)


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every call of write_sends and write_plain_sends (each one
    transaction's sends)."""
    sizes: list[int] = []

    async def counted(conn: Any, sends: Sequence[NewSend], **options: Any) -> Any:
        sizes.append(len(sends))
        return await write_sends(conn, sends, **options)

    async def counted_plain(driver: Any, sends: Sequence[NewSend], **options: Any) -> Any:
        sizes.append(len(sends))
        return await write_plain_sends(driver, sends, **options)

    monkeypatch.setattr(sends_module, "write_sends", counted)
    monkeypatch.setattr(sends_module, "write_plain_sends", counted_plain)
    return sizes


async def _outcomes(store: SqlNotificationStore, sends: Sequence[NewSend]) -> list[Any]:
    """Submit ``sends`` at once (as concurrent calls do); each one's result or error."""
    return list(
        await asyncio.gather(*(store.create_send(s) for s in sends), return_exceptions=True)
    )


def _alone(reason: str) -> float:
    return REGISTRY.get_sample_value("keel_notification_sends_alone_total", {"reason": reason}) or 0


async def test_concurrent_sends_share_one_transaction_each_with_its_own_notifications_and_counts(
    store: SqlNotificationStore, batches: list[int]
) -> None:
    tenant = new_id()
    sends = [_send(tenant, "ann") for _ in range(6)] + [_send(tenant, f"u{i}") for i in range(4)]
    stored = await _outcomes(store, sends)
    assert batches == [10]
    assert all(isinstance(s, StoredSend) for s in stored)
    ids = [s.notifications[0].id for s in stored]
    assert len(set(ids)) == 10
    assert [s.notifications[0].user_id for s in stored] == [s.user_ids[0] for s in sends]
    # Each send's count is the inbox's as of its place in the batch.
    assert [s.unread["ann"] for s in stored[:6]] == [1, 2, 3, 4, 5, 6]
    assert [s.unread[f"u{i}"] for i, s in enumerate(stored[6:])] == [1, 1, 1, 1]
    page, unread = await store.list_inbox(tenant, "ann", unread_only=False, limit=10, after=None)
    assert unread == 6 and {n.id for n in page} == set(ids[:6])


async def test_a_batch_and_a_send_stored_alone_meanwhile_count_in_the_order_they_commit(
    store: SqlNotificationStore, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a large send is stored alone while a batch is stored; here both are
    ready to count (the large send has written; the batch of plain sends, which writes
    and counts in one statement, has read what it plans with) before either counts, and
    their counts are still taken in turn: the sends to one inbox are answered 1, 2, ...,
    N, each count once."""
    both_wrote = asyncio.Event()
    wrote: list[int] = []

    def meeting(write: Any) -> Any:
        async def met(conn: Any, sends: Sequence[NewSend], **options: Any) -> Any:
            take_turn = options.pop("before_counting")

            async def after_both_wrote() -> None:
                wrote.append(len(sends))
                if len(wrote) == 2:
                    both_wrote.set()
                await asyncio.wait_for(both_wrote.wait(), 10)
                await take_turn()

            return await write(conn, sends, before_counting=after_both_wrote, **options)

        return met

    postgres = engine.dialect.name == "postgresql"
    if postgres:  # SQLite has one writer at a time: nothing to meet
        monkeypatch.setattr(sends_module, "write_sends", meeting(write_sends))
        monkeypatch.setattr(sends_module, "write_plain_sends", meeting(write_plain_sends))
    tenant = new_id()
    large = _send(tenant, "ann", *(f"u{i}" for i in range(sends_module.BATCHED_RECIPIENTS)))
    small = [_send(tenant, "ann") for _ in range(20)]
    stored = await _outcomes(store, [large, *small])
    assert all(isinstance(s, StoredSend) for s in stored)
    assert sorted(wrote) == ([1, 20] if postgres else [])
    assert sorted(s.unread["ann"] for s in stored) == list(range(1, 22))
    _, unread = await store.list_inbox(tenant, "ann", unread_only=False, limit=1, after=None)
    assert unread == 21


async def test_a_send_whose_planning_fails_fails_alone(
    store: SqlNotificationStore, batches: list[int]
) -> None:
    tenant = new_id()
    bad = _send(tenant, "bob", request_id="r-bad", fail=RuntimeError("bad plan"))
    good = [_send(tenant, "ann"), bad, _send(tenant, "cat")]
    outcomes = await _outcomes(store, good)
    assert batches == [3]
    assert isinstance(outcomes[1], RuntimeError)
    assert [o.notifications[0].user_id for o in (outcomes[0], outcomes[2])] == ["ann", "cat"]
    assert await store.find_send(tenant, "r-bad") is None  # its request id was not kept


async def test_a_send_that_breaks_its_batch_fails_alone_and_the_others_are_stored(
    store: SqlNotificationStore, batches: list[int]
) -> None:
    tenant = new_id()
    taken = (await store.create_send(_send(tenant, "ann"))).notifications[0].id
    batches.clear()
    before = _alone("conflict")
    # The second send's notification id is taken: its insert fails the whole batch.
    sends = [
        _send(tenant, "bob"),
        _send(tenant, "cat", request_id="r-dup-id", notification_id=taken),
        _send(tenant, "dan", request_id="r-fine"),
    ]
    outcomes = await _outcomes(store, sends)
    assert batches == [3, 1, 1, 1]  # the batch, then each send alone
    assert _alone("conflict") - before == 3
    assert isinstance(outcomes[1], IntegrityError)
    assert [o.notifications[0].user_id for o in (outcomes[0], outcomes[2])] == ["bob", "dan"]
    assert await store.find_send(tenant, "r-dup-id") is None
    assert await store.find_send(tenant, "r-fine") == (sends[2].send_id, "")
    _, unread = await store.list_inbox(tenant, "cat", unread_only=False, limit=1, after=None)
    assert unread == 0


async def test_a_request_id_repeated_in_one_batch_is_stored_once(
    store: SqlNotificationStore, batches: list[int]
) -> None:
    tenant = new_id()
    first, repeat = _send(tenant, "ann", request_id="r-1"), _send(tenant, "ann", request_id="r-1")
    other = _send(tenant, "ann", request_id="r-2")
    outcomes = await _outcomes(store, [first, repeat, other])
    assert batches == [2, 1]  # the repeat runs alone after its batch
    assert isinstance(outcomes[0], StoredSend) and isinstance(outcomes[2], StoredSend)
    assert isinstance(outcomes[1], SendExists) and outcomes[1].send_id == first.send_id
    assert len(await store.send_notifications(tenant, first.send_id)) == 1
    assert await store.send_notifications(tenant, repeat.send_id) == []


@pytest.fixture
async def other_process(database_url: str) -> AsyncIterator[SqlNotificationStore]:
    """The store of another notification-service process (its own engine and pool)."""
    engine = create_engine(load_settings({"DATABASE_URL": database_url}).database_url)
    try:
        yield SqlNotificationStore(engine)
    finally:
        await engine.dispose()


async def test_a_request_id_sent_by_two_processes_at_once_is_stored_once(
    store: SqlNotificationStore, other_process: SqlNotificationStore
) -> None:
    tenant = new_id()
    for round_ in range(5):
        request_id = f"r-{round_}"
        mine = [_send(tenant, f"u{i}", request_id=f"{request_id}-{i}") for i in range(3)]
        same = [_send(tenant, "ann", request_id=request_id) for _ in range(2)]
        outcomes = await asyncio.gather(
            *(store.create_send(s) for s in [*mine, same[0]]),
            other_process.create_send(same[1]),
            return_exceptions=True,
        )
        stored = [o for o in outcomes[3:] if isinstance(o, StoredSend)]
        found = [o for o in outcomes[3:] if isinstance(o, SendExists)]
        assert len(stored) == 1 and len(found) == 1, outcomes
        winner = same[0] if isinstance(outcomes[3], StoredSend) else same[1]
        assert found[0].send_id == winner.send_id
        assert all(isinstance(o, StoredSend) for o in outcomes[:3])
        async with store._engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).where(
                    notifications.c.tenant_id == tenant, notifications.c.user_id == "ann"
                )
            )
        assert count == round_ + 1


async def test_sends_of_one_batch_join_one_digest_window_per_user(
    store: SqlNotificationStore, batches: list[int]
) -> None:
    tenant = new_id()
    sends = [_send(tenant, user, channels=[EMAIL_DIGEST]) for user in ("bob", "ann", "bob")]
    stored = await _outcomes(store, sends)
    assert batches == [3]
    digest = await _digest_ids(store, stored)
    assert digest[0] == digest[2] != digest[1]
    async with store._engine.connect() as conn:
        windows = await conn.scalar(
            select(func.count()).where(notification_digests.c.tenant_id == tenant)
        )
    assert windows == 2


async def _digest_ids(
    store: SqlNotificationStore, stored: Sequence[Any], which: Sequence[int] = ()
) -> list[str | None]:
    """The digest window of each send's notification (its ``which``-th; the first)."""
    found = []
    async with store._engine.connect() as conn:
        for i, send in enumerate(stored):
            notification = send.notifications[which[i] if which else 0]
            found.append(
                await conn.scalar(
                    select(notification_deliveries.c.digest_id).where(
                        notification_deliveries.c.notification_id == notification.id
                    )
                )
            )
    return found


async def _waiting_for_a_lock(engine: AsyncEngine) -> None:
    """Return once some backend of this database waits for a lock (bounded)."""
    async with engine.connect() as conn:
        for _ in range(500):
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            if waiting:
                return
            await asyncio.sleep(0.02)  # polling the condition, bounded to 10 s
    raise AssertionError("no transaction waited for a lock")


async def test_a_batch_that_deadlocks_is_stored_one_send_at_a_time(
    database_url: str,
    store: SqlNotificationStore,
    other_process: SqlNotificationStore,
    batches: list[int],
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: no deadlocks")
    tenant = new_id()
    opened = await store.create_send(_send(tenant, "ann", "bob", channels=[EMAIL_DIGEST]))
    windows = dict(
        zip(("ann", "bob"), await _digest_ids(store, [opened, opened], [0, 1]), strict=True)
    )
    batches.clear()
    before = _alone("conflict")
    engine = other_process._engine
    async with engine.connect() as conn, conn.begin():
        # This transaction loses no deadlock: the batch, waiting first, is the one PostgreSQL
        # aborts (its deadlock_timeout, 1 s by default, ends first).
        await conn.execute(text("SET LOCAL deadlock_timeout = '60s'"))
        await conn.execute(
            select(notification_digests.c.id)
            .where(notification_digests.c.id == windows["bob"])
            .with_for_update()
        )
        # The batch locks ann's window (first in the global order), then waits for bob's.
        sending = asyncio.gather(
            *(store.create_send(_send(tenant, u, channels=[EMAIL_DIGEST])) for u in ("ann", "bob")),
            return_exceptions=True,
        )
        await _waiting_for_a_lock(engine)
        await conn.execute(
            select(notification_digests.c.id)
            .where(notification_digests.c.id == windows["ann"])
            .with_for_update()
        )
    outcomes = await sending
    assert batches == [2, 1, 1]
    assert _alone("conflict") - before == 2
    assert await _digest_ids(store, outcomes) == [windows["ann"], windows["bob"]]


async def test_an_in_app_delivery_sent_at_once_has_no_row_and_reads_as_sent_when_it_landed(
    store: SqlNotificationStore, engine: AsyncEngine
) -> None:
    """The inbox row records it; a skipped one keeps its row (and its reason)."""
    tenant = new_id()
    skipped = PlannedChannel(Channel.IN_APP, "the user turned in_app off")
    sends = [_send(tenant, "ann", "bob"), _send(tenant, "cy", channels=[skipped])]
    stored = await _outcomes(store, sends)
    landed, off = stored[0].notifications, stored[1].notifications[0]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(notification_deliveries.c.notification_id, notification_deliveries.c.state)
            )
        ).all()
    mine = {n.id for n in [*landed, off]}
    assert [tuple(r) for r in rows if r.notification_id in mine] == [(off.id, "skipped")]
    for notification in landed:
        (in_app,) = notification.deliveries
        assert (in_app.channel, in_app.state) == (Channel.IN_APP, DeliveryState.SENT)
        assert in_app.update_time == notification.inbox_time == sends[0].now
        assert await store.get_notification(tenant, notification.id) == notification
    assert off.inbox_time is None and off.deliveries[0].state is DeliveryState.SKIPPED
    assert await store.get_notification(tenant, off.id) == off


async def test_a_batch_of_plain_sends_plans_with_what_is_stored_and_counts_what_was_there(
    store: SqlNotificationStore, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-app sends at once without a request id — on PostgreSQL a batch on asyncpg
    directly (send_plain_pg) — plan with the recipients' stored preferences and the
    tenant's settings, as any send does, and count the unread notifications already in
    the inbox (the read one not), sends of two tenants in one batch."""
    plain: list[int] = []

    async def counted(driver: Any, sends: Sequence[NewSend], **options: Any) -> Any:
        plain.append(len(sends))
        return await write_plain_sends(driver, sends, **options)

    monkeypatch.setattr(sends_module, "write_plain_sends", counted)
    tenant, other = new_id(), new_id()
    now = datetime.now(UTC)
    wanted = Preferences(
        UserId("ann"),
        enabled_channels=(Channel.IN_APP, Channel.EMAIL),
        email="ann@example.com",
        quiet_hours=QuietHours("22:00", "07:00", "Europe/Paris"),
        rules=(CategoryRule("billing", Channel.IN_APP, False),),
    )
    await store.update_preferences(tenant, "ann", lambda _: wanted, now=now)
    defaults = (CategoryDefault("mention", (Channel.IN_APP,), 600),)
    await store.update_tenant_settings(
        tenant,
        lambda s: replace(s, email_from="app@example.com", category_defaults=defaults),
        ["email_from", "category_defaults"],
        now=now,
    )
    before = [(await store.create_send(_send(tenant, "ann"))).notifications[0] for _ in range(3)]
    await store.mark_read(tenant, "ann", [before[0].id], now=now)
    read: list[SendInputs] = []

    def reading(send: NewSend) -> NewSend:
        def plan(inputs: SendInputs) -> Sequence[PlannedRecipient]:
            read.append(inputs)
            return send.plan(inputs)

        return replace(send, plan=plan)

    plain.clear()
    sends = [reading(_send(tenant, "ann")), reading(_send(other, "ann")), _send(tenant, "ann")]
    stored = await _outcomes(store, sends)
    assert plain == ([3] if engine.dialect.name == "postgresql" else [])
    assert [s.unread for s in stored] == [{"ann": 3}, {"ann": 1}, {"ann": 4}]
    (ann,) = read[0].preferences.values()
    assert ann == (await store.preferences_of(tenant, ["ann"]))["ann"]
    assert ann.rules == wanted.rules and ann.quiet_hours == wanted.quiet_hours
    assert read[0].settings == await store.tenant_settings(tenant)
    assert read[0].settings.category_defaults == defaults
    assert read[1].preferences == {} and read[1].settings == await store.tenant_settings(other)


async def test_a_batch_of_plain_sends_that_fails_is_stored_one_send_at_a_time(
    store: SqlNotificationStore, batches: list[int]
) -> None:
    """In-app sends at once without a request id (on PostgreSQL the batch on asyncpg
    directly) fall back one at a time as any batch does: nothing of the failed batch is
    kept, the others are stored and counted once."""
    tenant = new_id()
    taken = (await store.create_send(_send(tenant, "ann"))).notifications[0].id
    batches.clear()
    before = _alone("conflict")
    sends = [
        _send(tenant, "bob"),
        _send(tenant, "cat", notification_id=taken),
        _send(tenant, "bob"),
    ]
    outcomes = await _outcomes(store, sends)
    assert batches == [3, 1, 1, 1]  # the batch, then each send alone
    assert _alone("conflict") - before == 3
    assert isinstance(outcomes[1], IntegrityError)
    assert [o.unread for o in (outcomes[0], outcomes[2])] == [{"bob": 1}, {"bob": 2}]
    _, unread = await store.list_inbox(tenant, "bob", unread_only=False, limit=5, after=None)
    assert unread == 2
    _, unread = await store.list_inbox(tenant, "cat", unread_only=False, limit=1, after=None)
    assert unread == 0


async def test_in_app_sends_of_a_batch_held_for_their_send_at_each_get_a_release(
    store: SqlNotificationStore, engine: AsyncEngine
) -> None:
    """In-app only, without a request id, but with a ``send_at``: not a plain send (on
    PostgreSQL that batch must not go the way of send_plain_pg, which enqueues no job)."""
    tenant = new_id()
    later = datetime.now(UTC) + timedelta(hours=1)
    sends = [_send(tenant, user) for user in ("ann", "bob")]
    sends = [replace(s, request=replace(s.request, send_at=later)) for s in sends]
    stored = await _outcomes(store, sends)
    assert all(isinstance(s, StoredSend) and s.unread == {} for s in stored)
    async with engine.connect() as conn:
        payloads = (
            await conn.execute(
                select(jobs_table.c.payload).where(
                    jobs_table.c.kind == "notification.release", jobs_table.c.tenant_id == tenant
                )
            )
        ).all()
    assert sorted(p.payload["send_id"] for p in payloads) == sorted(s.send_id for s in sends)


async def test_a_batch_of_plain_sends_counts_after_a_transaction_that_counted_first_commits(
    store: SqlNotificationStore, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large send has counted and not yet committed when a batch of plain sends (on
    PostgreSQL on asyncpg directly, writing and counting in one statement) is ready to
    count: the batch waits for its turn, so its counts include the large send's."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: nothing to overlap")
    counted = asyncio.Event()
    plain_ready = asyncio.Event()

    async def large_first(conn: Any, sends: Sequence[NewSend], **options: Any) -> Any:
        outcomes = await write_sends(conn, sends, **options)
        counted.set()  # counted, holding the turn, not committed
        await asyncio.wait_for(plain_ready.wait(), 10)
        await asyncio.sleep(0.2)  # time for a batch that did not wait its turn to commit
        return outcomes

    async def plain_after(driver: Any, sends: Sequence[NewSend], **options: Any) -> Any:
        take_turn = options.pop("before_counting")

        async def when_counted() -> None:
            await asyncio.wait_for(counted.wait(), 10)
            plain_ready.set()
            await take_turn()

        return await write_plain_sends(driver, sends, before_counting=when_counted, **options)

    monkeypatch.setattr(sends_module, "write_sends", large_first)
    monkeypatch.setattr(sends_module, "write_plain_sends", plain_after)
    tenant = new_id()
    large = _send(tenant, "ann", *(f"u{i}" for i in range(sends_module.BATCHED_RECIPIENTS)))
    stored = await _outcomes(store, [large, *(_send(tenant, "ann") for _ in range(3))])
    assert [s.unread["ann"] for s in stored] == [1, 2, 3, 4]
