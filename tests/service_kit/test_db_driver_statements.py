"""service_kit.db.driver_statements: asyncpg itself outside a transaction, with
SQLAlchemy's promises (its fixtures and helpers, in conftest, are test_db's too)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.db import driver_statements
from tests.service_kit.conftest import POOLED, backends_gone, keys, select_one_on_each


async def test_each_statement_commits_on_its_own(pg_engine: AsyncEngine, keyed_table: str) -> None:
    with pytest.raises(RuntimeError):
        async with driver_statements(pg_engine) as driver:
            await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "kept")
            raise RuntimeError("the caller's own failure, after the statement")
    assert await keys(pg_engine, keyed_table) == ["kept"]
    assert await select_one_on_each(pg_engine) == [1] * POOLED  # every connection serves


async def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_keeps_nothing_of_it(
    pg_engine: AsyncEngine, keyed_table: str
) -> None:
    async with driver_statements(pg_engine) as driver:
        await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "taken")
    with pytest.raises(IntegrityError):
        async with driver_statements(pg_engine) as driver:
            await driver.execute(
                f"INSERT INTO {keyed_table} SELECT * FROM unnest($1::text[])", ["first", "taken"]
            )
    assert await keys(pg_engine, keyed_table) == ["taken"]  # "first" went with it
    assert await select_one_on_each(pg_engine) == [1] * POOLED


async def test_a_statement_cancelled_midway_ends_its_backend_and_the_pool_serves_again(
    pg_engine: AsyncEngine, keyed_table: str
) -> None:
    started = asyncio.Event()
    pids: list[int] = []

    async def cancelled() -> None:
        async with driver_statements(pg_engine) as driver:
            pids.append(await driver.fetchval("SELECT pg_backend_pid()"))
            started.set()
            await driver.execute("SELECT pg_sleep(60)")

    task = asyncio.create_task(cancelled())
    await started.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await backends_gone(pids)  # invalidated, not pooled with a statement under way
    assert await select_one_on_each(pg_engine) == [1] * POOLED


async def test_a_statement_the_server_refused_leaves_its_connection_serving_in_the_pool(
    pg_engine: AsyncEngine, keyed_table: str
) -> None:
    async with driver_statements(pg_engine) as driver:  # the pool's one connection
        pid = await driver.fetchval("SELECT pg_backend_pid()")
        await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "taken")
    with pytest.raises(IntegrityError):
        async with driver_statements(pg_engine) as driver:
            await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "taken")
    with pytest.raises(asyncpg.DivisionByZeroError):  # passes as the driver raised it
        async with driver_statements(pg_engine) as driver:
            await driver.execute("SELECT 1 / 0")
    # An answer from the server is no reason to reconnect.
    async with driver_statements(pg_engine) as driver:
        assert await driver.fetchval("SELECT pg_backend_pid()") == pid
        await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "next")
    assert sorted(await keys(pg_engine, keyed_table)) == ["next", "taken"]
