"""The database helpers: a cancelled SQLite writer lets go, outages are told apart from
bugs, problems are named, a missing PostgreSQL database is created, and a transaction
through the driver itself keeps SQLAlchemy's promises."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit import db
from service_kit.db import (
    check,
    create_database,
    create_engine,
    database_unavailable,
    driver_transaction,
    write_transaction,
)
from service_kit.errors import Unavailable
from tests.conftest import PG_ADMIN_URL, free_port
from tests.service_kit.conftest import POOLED, backends_gone, keys, select_one_on_each

#: A statement that keeps SQLite busy for about a second.
SLOW_QUERY = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000)"
    " SELECT count(*) FROM n"
)


def write_locked(path: Path) -> bool:
    """Whether some connection holds the SQLite database's write lock right now."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Path]]:
    path = tmp_path / "writers.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (body TEXT NOT NULL)"))
    yield engine, path
    await engine.dispose()


async def notes(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [row.body for row in await conn.execute(text("SELECT body FROM notes"))]


async def test_a_writer_cancelled_mid_statement_rolls_back_and_the_next_writer_proceeds(
    sqlite_engine: tuple[AsyncEngine, Path],
) -> None:
    engine, path = sqlite_engine

    async def cancelled_writer() -> None:
        async with write_transaction(engine) as conn:
            await conn.execute(text("INSERT INTO notes VALUES ('cancelled')"))
            await conn.execute(text(SLOW_QUERY))

    task = asyncio.create_task(cancelled_writer())
    async with asyncio.timeout(10):
        while True:
            if write_locked(path):
                break
            await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Left holding the lock, this writer would wait out the 30 s busy timeout, then fail.
    async with asyncio.timeout(10):
        async with write_transaction(engine) as conn:
            await conn.execute(text("INSERT INTO notes VALUES ('next')"))
    assert await notes(engine) == ["next"]
    assert not write_locked(path)


def wrapped(orig: BaseException) -> DBAPIError:
    """``orig`` as SQLAlchemy raises it from a statement."""
    return DBAPIError("SELECT 1", None, orig)


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        wrapped(asyncpg.CannotConnectNowError("the database system is shutting down")),
        wrapped(asyncpg.ConnectionDoesNotExistError("connection was closed")),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5432)"),
        OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0)"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        TimeoutError(),
        OperationalError("INSERT", None, sqlite3.OperationalError("database is locked")),
        wrapped(asyncpg.InvalidCatalogNameError('database "keel" does not exist')),
    ],
    ids=repr,
)
def test_outages_are_unavailable_with_a_retry_delay(failure: BaseException) -> None:
    mapped = database_unavailable(failure)
    assert isinstance(mapped, Unavailable)
    assert mapped.retry_after == 1.0


@pytest.mark.parametrize(
    "failure",
    [
        IntegrityError("INSERT", None, sqlite3.IntegrityError("UNIQUE constraint failed")),
        wrapped(asyncpg.UniqueViolationError("duplicate key value")),
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        PermissionError(errno.EACCES, "Permission denied"),
        ValueError("a bug"),
    ],
    ids=repr,
)
def test_other_failures_are_not_called_outages(failure: BaseException) -> None:
    assert database_unavailable(failure) is None


async def test_check_names_what_is_wrong() -> None:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    missing_name = f"keel_missing_{uuid.uuid4().hex[:8]}"
    cases = {
        f"{base}/{missing_name}": (f'database "{missing_name}" does not exist', "keel migrate"),
        f"postgresql://nobody_{uuid.uuid4().hex[:6]}@127.0.0.1:5432/postgres": (
            "does not exist",
            "user and password in DATABASE_URL",
        ),
        f"postgresql://postgres@127.0.0.1:{free_port()}/keel": (
            "connection refused at 127.0.0.1:",
            "PostgreSQL running",
        ),
    }
    for url, (reason, hint) in cases.items():
        engine = create_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            problem = await check(engine)
        finally:
            await engine.dispose()
        assert problem is not None, url
        assert reason in problem.reason, problem
        assert hint in problem.hint, problem
        assert problem.missing_database == (missing_name in url)


async def test_create_database_creates_a_missing_one_once() -> None:
    name = f"keel_created_{uuid.uuid4().hex[:8]}"
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}".replace("postgresql:", "postgresql+asyncpg:")
    try:
        assert await create_database(url) is True
        assert await create_database(url) is False  # already there: nothing to do
        engine = create_engine(url)
        try:
            assert await check(engine) is None
        finally:
            await engine.dispose()
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_create_database_leaves_sqlite_alone(tmp_path: Path) -> None:
    assert await create_database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}") is False


# -- the PostgreSQL pool: dead connections replaced, live ones taken without a ping ------


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The pings of pooled connections taken from now on (the adapter's ``ping`` calls)."""
    seen: list[object] = []
    real = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        seen.append(self)
        real(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    return seen


async def backend_pids(engine: AsyncEngine) -> list[int]:
    """Fill the pool with ``POOLED`` connections at once; their server processes' ids."""
    entered = asyncio.Barrier(POOLED)

    async def one() -> int:
        async with engine.connect() as conn:
            await entered.wait()  # every connection checked out together: POOLED of them
            return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    return await asyncio.gather(*(one() for _ in range(POOLED)))


async def terminate(pids: list[int]) -> None:
    """End those backends (as a server restart would) and wait until they are gone."""
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", pids)
    finally:
        await admin.close()
    await backends_gone(pids)


async def test_a_connection_taken_again_within_a_second_is_not_pinged(
    pg_engine: AsyncEngine, pings: list[object]
) -> None:
    await backend_pids(pg_engine)
    for _ in range(20):
        assert await select_one_on_each(pg_engine) == [1] * POOLED
    assert pings == []  # no BEGIN/SELECT/ROLLBACK round trips per checkout


async def test_a_connection_idle_for_a_while_is_pinged_when_taken(
    pg_engine: AsyncEngine, pings: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend_pids(pg_engine)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    await select_one_on_each(pg_engine)
    assert len(pings) == POOLED


async def test_connections_whose_backends_ended_are_replaced_without_an_error(
    pg_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)  # no ping for idleness
    pids = await backend_pids(pg_engine)
    await terminate(pids)
    assert await select_one_on_each(pg_engine) == [1] * POOLED
    assert set(await backend_pids(pg_engine)).isdisjoint(pids)


async def test_connections_ended_before_the_loop_noticed_are_replaced_without_an_error(
    pg_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server ends the backends while this process's loop is blocked (as a restart
    # under a busy loop): the connections do not know yet, but their sockets have input.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    pids = await backend_pids(pg_engine)
    blocked = threading.Thread(target=asyncio.run, args=(terminate(pids),))
    blocked.start()
    blocked.join()  # blocks this loop on purpose
    assert await select_one_on_each(pg_engine) == [1] * POOLED


# -- driver_transaction: asyncpg itself, with SQLAlchemy's promises ---------------------


async def insert(engine: AsyncEngine, table: str, *values: str) -> None:
    """Insert ``values`` into ``table`` in one driver transaction."""
    async with driver_transaction(engine) as driver:
        for value in values:
            await driver.execute(f"INSERT INTO {table} VALUES ($1)", value)


async def test_a_driver_transaction_commits_what_it_wrote(
    pg_engine: AsyncEngine, keyed_table: str
) -> None:
    await insert(pg_engine, keyed_table, "kept", "also kept")
    assert sorted(await keys(pg_engine, keyed_table)) == ["also kept", "kept"]


async def test_a_driver_transaction_that_fails_keeps_nothing_and_the_pool_serves_again(
    pg_engine: AsyncEngine, keyed_table: str
) -> None:
    with pytest.raises(RuntimeError):
        async with driver_transaction(pg_engine) as driver:
            await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "dropped")
            raise RuntimeError("the caller's own failure")
    await insert(pg_engine, keyed_table, "dropped")
    assert await keys(pg_engine, keyed_table) == ["dropped"]


async def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_rolls_back(
    pg_engine: AsyncEngine, keyed_table: str
) -> None:
    await insert(pg_engine, keyed_table, "taken")
    with pytest.raises(IntegrityError):
        await insert(pg_engine, keyed_table, "first", "taken")
    assert await keys(pg_engine, keyed_table) == ["taken"]  # "first" went with it
    assert await select_one_on_each(pg_engine) == [1] * POOLED  # every connection serves


async def test_a_driver_transaction_cancelled_mid_statement_ends_its_backend_and_holds_nothing(
    pg_engine: AsyncEngine, keyed_table: str
) -> None:
    started = asyncio.Event()
    pids: list[int] = []

    async def cancelled_writer() -> None:
        async with driver_transaction(pg_engine) as driver:
            pids.append(await driver.fetchval("SELECT pg_backend_pid()"))
            await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "held")
            started.set()
            await driver.execute("SELECT pg_sleep(60)")

    task = asyncio.create_task(cancelled_writer())
    await started.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Invalidated, not pooled mid-transaction: its backend goes (rolling back), so the
    # row it held is free for the next writer, and the pool serves on fresh connections.
    await backends_gone(pids)
    await insert(pg_engine, keyed_table, "held")
    assert await keys(pg_engine, keyed_table) == ["held"]
    assert await select_one_on_each(pg_engine) == [1] * POOLED


@pytest.mark.parametrize(
    ("refused", "raised"),
    [
        ("INSERT INTO {table} VALUES ('taken')", IntegrityError),
        ("SELECT 1 / 0", asyncpg.DivisionByZeroError),  # passes as the driver raised it
    ],
    ids=["constraint", "division by zero"],
)
async def test_a_statement_the_server_refused_rolls_back_and_its_connection_serves_the_next(
    pg_engine: AsyncEngine, keyed_table: str, refused: str, raised: type[Exception]
) -> None:
    await insert(pg_engine, keyed_table, "taken")  # from now on the pool holds one connection
    pids: list[int] = []
    with pytest.raises(raised):
        async with driver_transaction(pg_engine) as driver:
            pids.append(await driver.fetchval("SELECT pg_backend_pid()"))
            await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "first")
            await driver.execute(refused.format(table=keyed_table))
    # Kept (an answer from the server is no reason to reconnect) and rolled back: the
    # next transaction on the same connection writes.
    async with driver_transaction(pg_engine) as driver:
        assert await driver.fetchval("SELECT pg_backend_pid()") == pids[0]
        await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "next")
    assert sorted(await keys(pg_engine, keyed_table)) == ["next", "taken"]


async def test_a_connection_whose_rollback_failed_is_closed_not_pooled(
    pg_engine: AsyncEngine, keyed_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute = asyncpg.Connection.execute

    async def rollback_fails(
        self: asyncpg.Connection, query: str, *args: object, **kwargs: object
    ) -> str:
        if query == "ROLLBACK":
            raise asyncpg.InterfaceError("ROLLBACK failed (injected)")
        status: str = await execute(self, query, *args, **kwargs)
        return status

    await insert(pg_engine, keyed_table, "taken")
    monkeypatch.setattr(asyncpg.Connection, "execute", rollback_fails)
    pids: list[int] = []
    with pytest.raises(IntegrityError):
        async with driver_transaction(pg_engine) as driver:
            pids.append(await driver.fetchval("SELECT pg_backend_pid()"))
            await driver.execute(f"INSERT INTO {keyed_table} VALUES ($1)", "taken")
    # Pooled, its failed transaction would refuse every statement of the next caller.
    await backends_gone(pids)
    await insert(pg_engine, keyed_table, "next")
    assert sorted(await keys(pg_engine, keyed_table)) == ["next", "taken"]
