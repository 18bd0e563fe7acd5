"""Database setup shared by every service: the async engine, its health, migrations,
and the query helpers every store uses (one row or NotFound, claiming rows, keyset pages).

One schema (:mod:`service_kit.schema`) serves SQLite (aiosqlite, the embedded
default) and PostgreSQL (asyncpg). Alembic migrations in
``service_kit/migrations`` create and change it; :func:`migrate` applies them,
holding a lock so several processes starting together migrate once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVarTuple

from alembic import command
from alembic.config import Config
from sqlalchemy import Executable, Insert, Row, Select, Table, and_, event, or_, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service_kit.errors import Unavailable

log = logging.getLogger(__name__)

_Columns = TypeVarTuple("_Columns")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same in every Keel process.
_MIGRATION_LOCK_KEY = 0x6B65656C
_WRITE_OPTION = "keel_write"
# OperationalError texts that mean "try again" (lost connection, lock, timeout), not a bug.
_TRANSIENT = ("locked", "connect", "closed", "terminat", "timeout", "timed out", "shutdown")


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for ``database_url`` (already normalized by the config).

    SQLite gets WAL mode, a busy timeout and foreign keys; its directory is
    created if missing. PostgreSQL gets a pool of ``pool_size`` connections.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # SQLAlchemy, not the sqlite3 module, decides where transactions begin
            # (see _sqlite_begin), so a transaction's reads and writes stay together.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # A transaction that will write takes the write lock at once: two
            # read-then-write transactions then wait for each other (busy_timeout)
            # instead of one failing with "database is locked" at its first write.
            immediate = conn.get_execution_options().get(_WRITE_OPTION)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,  # never log message contents or secret hashes
    )


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that will write; commits on success, rolls back on error.

    On SQLite it begins with ``BEGIN IMMEDIATE`` (see ``create_engine``); on
    PostgreSQL it is an ordinary transaction.
    """
    async with engine.connect() as conn:
        await conn.execution_options(**{_WRITE_OPTION: True})
        async with conn.begin():
            yield conn


def insert_ignoring_conflicts(conn: AsyncConnection, table: Table) -> Insert:
    """An INSERT into ``table`` that skips rows clashing with a unique key (both dialects)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


async def load_one(
    conn: AsyncConnection, query: Executable, not_found: Callable[[], Exception]
) -> RowMapping:
    """The first row ``query`` selects, as a mapping of its columns.

    Raises the exception ``not_found()`` makes (for example ``ChannelNotFound(id)``)
    when ``query`` selects no row; ``not_found`` is only called then.
    """
    row = (await conn.execute(query)).first()
    if row is None:
        raise not_found()
    return row._mapping


async def claim_rows(
    conn: AsyncConnection, query: Select[*_Columns], *, of: Table | None = None
) -> Sequence[Row[*_Columns]]:
    """The rows ``query`` selects, claimed for ``conn``'s transaction: on PostgreSQL they
    are locked (those of table ``of`` when given) and rows another transaction holds are
    skipped, so concurrent claimers take different rows; on SQLite the one writer at a
    time (``write_transaction``) already keeps claimers apart."""
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(of=of, skip_locked=True)
    return (await conn.execute(query)).all()


def keyset_page(
    query: Select[*_Columns],
    time_column: Any,
    id_column: Any,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    newest_first: bool = False,
) -> Select[*_Columns]:
    """``query`` as one page of a list in ``(time_column, id_column)`` order (descending
    when ``newest_first``): at most ``limit`` rows, those past the ``(time, id)`` position
    ``after`` (the last row of the previous page; None for the first page)."""
    if newest_first:
        query = query.order_by(time_column.desc(), id_column.desc())
    else:
        query = query.order_by(time_column, id_column)
    query = query.limit(limit)
    if after is None:
        return query
    time, key = after
    if newest_first:
        return query.where(or_(time_column < time, and_(time_column == time, id_column < key)))
    return query.where(or_(time_column > time, and_(time_column == time, id_column > key)))


async def ping(engine: AsyncEngine, *, within: float = 2.0) -> bool:
    """True when the database answers ``SELECT 1`` within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return True
    except (SQLAlchemyError, OSError, TimeoutError):
        return False


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held until this transaction ends, whether the migration commits or fails.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    command.upgrade(_alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (a no-op when it is already there)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
    log.info("database schema is up to date", extra={"database": engine.url.render_as_string()})


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite returns naive ones, which are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def database_unavailable(exc: BaseException) -> Unavailable | None:
    """The :class:`Unavailable` error for a failure that means "the database cannot be
    reached (or is locked) right now", so callers retry; None for any other failure."""
    lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
    transient = isinstance(exc, OperationalError) and any(
        word in str(exc.orig).lower() for word in _TRANSIENT
    )
    if lost or transient or isinstance(exc, InterfaceError | PoolTimeout | ConnectionError):
        return Unavailable("the database is unavailable right now; retry shortly", retry_after=1.0)
    return None
