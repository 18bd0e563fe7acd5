"""The migrations build exactly the schema the code describes, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.db import MIGRATIONS_DIR, create_engine, migrate
from service_kit.schema import INSTALLATION_TABLES, metadata


async def test_migrations_match_the_schema(engine: AsyncEngine) -> None:
    def diff(connection):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_migrating_again_changes_nothing(engine: AsyncEngine) -> None:
    assert await migrate(engine) == []
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"tenants", "users", "channels", "channel_members", "messages", "reactions"} <= tables


async def test_every_tenant_owned_table_carries_tenant_id() -> None:
    """What the tenant purge deletes: every table but the installation's own."""
    for table in metadata.sorted_tables:
        if table.name not in INSTALLATION_TABLES:
            assert "tenant_id" in table.c, table.name


async def test_migrate_reports_each_migration_it_applied_oldest_first(tmp_path: Path) -> None:
    scripts = sorted(path.stem for path in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    try:
        applied = await migrate(engine)
        again = await migrate(engine)
    finally:
        await engine.dispose()
    assert [line.split(" ", 1)[0] for line in applied] == [s.split("_", 1)[0] for s in scripts]
    assert all(len(line.split(" ", 1)[1]) > 3 for line in applied)  # each with its title
    assert again == []
