"""The migrations build exactly the schema the code describes, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.db import migrate
from service_kit.schema import metadata


async def test_migrations_match_the_schema(engine: AsyncEngine) -> None:
    def diff(connection):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_migrating_again_changes_nothing(engine: AsyncEngine) -> None:
    await migrate(engine)
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"tenants", "users", "channels", "channel_members", "messages", "reactions"} <= tables


async def test_every_tenant_owned_table_carries_tenant_id() -> None:
    for table in metadata.sorted_tables:
        if table.name not in ("tenants", "alembic_version", "event_log_horizon"):
            assert "tenant_id" in table.c, table.name
