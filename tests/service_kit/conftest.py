"""Fixtures and helpers of service_kit's PostgreSQL tests: a small pooled engine on the
session's database, a fresh table with a unique key, and what tells whether the pool
still serves and whether a connection's server process ended."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.config import load_settings
from service_kit.db import create_engine
from tests.conftest import PG_ADMIN_URL

#: The size of ``pg_engine``'s pool.
POOLED = 4
#: The longest a backend whose connection was closed (or terminated) may take to end.
BACKENDS_GONE_WITHIN = 10.0


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(load_settings({"DATABASE_URL": pg_url}).database_url, pool_size=POOLED)
    yield engine
    await engine.dispose()


@pytest.fixture
async def keyed_table(pg_engine: AsyncEngine) -> AsyncIterator[str]:
    """A fresh table with a unique key, on the session's PostgreSQL database; dropped
    afterwards (a table left behind fails test_schema's comparison with the models)."""
    name = f"keyed_{uuid.uuid4().hex[:8]}"
    async with pg_engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {name} (key TEXT PRIMARY KEY)"))
    yield name
    async with pg_engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE {name}"))


async def keys(engine: AsyncEngine, table: str) -> list[str]:
    async with engine.connect() as conn:
        return [row.key for row in await conn.execute(text(f"SELECT key FROM {table}"))]


async def select_one_on_each(engine: AsyncEngine) -> list[int]:
    """``SELECT 1`` on ``POOLED`` connections at once."""
    gate = asyncio.Barrier(POOLED)

    async def one() -> int:
        async with engine.connect() as conn:
            await gate.wait()
            return int((await conn.execute(text("SELECT 1"))).scalar_one())

    return await asyncio.gather(*(one() for _ in range(POOLED)))


async def backends_gone(pids: list[int]) -> None:
    """Return once the server processes ``pids`` have ended; fail the test when some still
    run :data:`BACKENDS_GONE_WITHIN` seconds later. (PostgreSQL tells nobody when a backend
    exits, so this polls ``pg_stat_activity``.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BACKENDS_GONE_WITHIN
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        while running := await admin.fetchval(
            "SELECT array_agg(pid) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
        ):
            if loop.time() > deadline:
                pytest.fail(
                    f"the server processes {sorted(running)} still run"
                    f" {BACKENDS_GONE_WITHIN:g} s later: their connections were not closed"
                )
            await asyncio.sleep(0.01)
    finally:
        await admin.close()
