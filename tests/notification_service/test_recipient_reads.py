"""What a send reads of its recipients — their unread counts and their preferences — on
the real SQLite and PostgreSQL, as often as a busy process reads them.

PostgreSQL plans a statement it has run five times once for all (a generic plan); these
tests run each read more often than that, with lists of other lengths each time, and
check every answer: the reads look each user up (store/base.py ``listed``), and must stay
right whatever plan they get.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import PickleType, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from notification_service.models import (
    CategoryDefault,
    CategoryRule,
    Channel,
    NotificationId,
    PlannedChannel,
    PlannedRecipient,
    Preferences,
    QuietHours,
    SendRequest,
    UserId,
)
from notification_service.store import NewSend, SqlNotificationStore
from notification_service.store.base import for_driver
from notification_service.store.rows import to_preferences, to_tenant_settings
from notification_service.store.settings import (
    TENANT_SETTINGS_QUERY,
    preferences_query,
    read_preferences,
    read_tenant_settings,
)
from service_kit.db import driver_statements
from service_kit.validation import new_id

#: More runs than PostgreSQL's five custom plans.
RUNS = 8


def _lists(users: list[str]) -> list[list[str]]:
    """``RUNS`` lists of users, each of another length."""
    return [users[run : len(users) - run] for run in range(RUNS)]


async def _send(store: SqlNotificationStore, tenant_id: str, user_ids: list[str]) -> None:
    def plan(_: object) -> list[PlannedRecipient]:
        channels = (PlannedChannel(Channel.IN_APP),)
        return [PlannedRecipient(NotificationId(new_id()), UserId(u), channels) for u in user_ids]

    request = SendRequest(title="Hi", user_ids=user_ids, channels=(Channel.IN_APP,))
    users = [UserId(u) for u in user_ids]
    now = datetime.now(UTC)
    await store.create_send(NewSend(tenant_id, new_id(), request, users, plan, now, 3))


@pytest.fixture
async def store(engine: AsyncEngine) -> SqlNotificationStore:
    return SqlNotificationStore(engine)


async def test_unread_counts_are_each_listed_users_own_and_leave_out_empty_inboxes(
    store: SqlNotificationStore,
) -> None:
    tenant, other = new_id(), new_id()
    users = [f"user-{i}" for i in range(40)]
    for count in range(1, 4):  # the i-th of the first 30 users gets i % 3 + 1 of them
        await _send(store, tenant, [u for i, u in enumerate(users[:30]) if i % 3 + 1 >= count])
    await _send(store, other, users)  # another tenant's inboxes are not counted
    page, _ = await store.list_inbox(tenant, "user-0", unread_only=False, limit=10, after=None)
    await store.mark_read(tenant, "user-0", [page[0].id], now=datetime.now(UTC))
    expected = {u: i % 3 + 1 for i, u in enumerate(users[:30])}
    expected["user-0"] -= 1
    for asked in _lists(users):
        counts = await store.unread_counts(tenant, asked)
        assert counts == {u: n for u, n in expected.items() if u in asked and n}


async def test_preferences_are_read_for_the_listed_users_of_the_tenant_only(
    store: SqlNotificationStore, engine: AsyncEngine
) -> None:
    tenant, other = new_id(), new_id()
    users = [f"user-{i}" for i in range(20)]
    now = datetime.now(UTC)
    for i, user in enumerate(users[:12]):
        await store.update_preferences(
            tenant, user, lambda p, i=i: replace(p, email=f"{i}@example.com"), now=now
        )
        await store.update_preferences(
            other, user, lambda p: replace(p, email="other@example.com"), now=now
        )
    for asked in _lists(users):
        async with engine.connect() as conn:
            found = await read_preferences(conn, tenant, asked)
        assert {u: p.email for u, p in found.items()} == {
            u: f"{i}@example.com" for i, u in enumerate(users[:12]) if u in asked
        }
        assert all(isinstance(p, Preferences) and p.user_id == u for u, p in found.items())


async def test_the_reads_compiled_for_the_driver_give_what_sqlalchemy_gives(
    store: SqlNotificationStore, engine: AsyncEngine
) -> None:
    """A batch of plain sends on PostgreSQL reads through asyncpg itself the queries the
    other sends read through SQLAlchemy (JSON columns included): it plans with the same
    preferences and settings."""
    if engine.dialect.name != "postgresql":
        pytest.skip("only PostgreSQL runs queries on the driver")
    tenant, other = new_id(), new_id()
    now = datetime.now(UTC)
    users = ["ann", "bob", "cy"]
    liked = Preferences(
        UserId("ann"),
        enabled_channels=(Channel.IN_APP, Channel.EMAIL),
        email="ann@example.com",
        quiet_hours=QuietHours("22:00", "07:00", "Europe/Paris"),
        rules=(CategoryRule("billing", Channel.EMAIL, False),),
    )
    for tenant_id in (tenant, other):
        await store.update_preferences(tenant_id, "ann", lambda _: liked, now=now)
    await store.update_preferences(tenant, "bob", lambda p: replace(p, email="b@x.org"), now=now)
    defaults = (CategoryDefault("mention", (Channel.IN_APP,), 600),)
    await store.update_tenant_settings(
        tenant,
        lambda s: replace(s, email_from="Keel <n@example.com>", category_defaults=defaults),
        ["email_from", "category_defaults"],
        now=now,
    )
    async with engine.connect() as conn:
        preferences = await read_preferences(conn, tenant, users)
        settings = await read_tenant_settings(conn, tenant)
    on_driver_preferences = for_driver(preferences_query("postgresql"))
    on_driver_settings = for_driver(TENANT_SETTINGS_QUERY)
    async with driver_statements(engine) as driver:
        rows = await driver.fetch(
            on_driver_preferences.sql, *on_driver_preferences.args(tenant_id=tenant, user_ids=users)
        )
        settings_rows = await driver.fetch(
            on_driver_settings.sql, *on_driver_settings.args(tenant_id=tenant)
        )
    assert {r["user_id"]: to_preferences(r) for r in rows} == preferences
    assert sorted(preferences) == ["ann", "bob"] and preferences["ann"].rules == liked.rules
    assert to_tenant_settings(settings_rows) == settings
    assert settings.category_defaults == defaults


def test_a_query_whose_columns_sqlalchemy_converts_is_not_compiled_for_the_driver() -> None:
    """The driver would give such a column unconverted: the two paths would differ."""
    with pytest.raises(TypeError, match="result processing"):
        for_driver(select(literal(b"", PickleType).label("blob")))
