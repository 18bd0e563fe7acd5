"""Database setup shared by every service: the async engine, its health, migrations,
and the query helpers every store uses (one row or NotFound, claiming rows, keyset pages).

One schema (:mod:`service_kit.schema`) serves SQLite (aiosqlite, the embedded
default) and PostgreSQL (asyncpg). Alembic migrations in
``service_kit/migrations`` create and change it; :func:`migrate` applies them,
holding a lock so several processes starting together migrate once, and reports
which it applied; :func:`create_database` makes a missing PostgreSQL database.

Invariants:

- A transaction cancelled mid-statement (a client deadline, a dropped call) rolls
  back and releases its connection at once; on SQLite its write lock never outlives
  it (see ``_abandon_sqlite_transaction``).
- A pooled PostgreSQL connection that a server restart (or ``pg_terminate_backend``)
  ended is replaced when taken instead of failing a call, without a round trip per
  checkout: a connection is pinged only when it sat idle in the pool for
  :data:`PING_AFTER_IDLE_SECONDS` or more, or when the server sent it something while it
  was idle (a backend ends by sending an error and closing the socket); one the driver
  already knows is closed is replaced at once (see ``_check_on_checkout``). A connection
  that fails mid-statement anyway invalidates the pool (SQLAlchemy's disconnect handling),
  so the next checkouts connect afresh.
- A connection lent to asyncpg itself (:func:`driver_transaction`,
  :func:`driver_statements`) goes back to the pool only when it is known to be idle:
  its work done, or a statement refused by the server (and, in a transaction, rolled
  back); otherwise it is closed (see ``_driver_connection``).
- :func:`database_unavailable` is the one place that tells an outage (answered
  UNAVAILABLE with a retry delay) from a bug; :func:`check` and :func:`describe_problem`
  say in an operator's words why the database cannot be used.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVarTuple

import aiosqlite
import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    ColumnElement,
    Executable,
    Insert,
    Row,
    Select,
    String,
    Table,
    and_,
    any_,
    bindparam,
    event,
    or_,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, RowMapping, make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeEngine
from sqlalchemy.util import await_
from sqlalchemy.util.concurrency import in_greenlet

from service_kit.errors import Unavailable

log = logging.getLogger(__name__)

_Columns = TypeVarTuple("_Columns")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same in every Keel process.
_MIGRATION_LOCK_KEY = 0x6B65656C
_WRITE_OPTION = "keel_write"
#: A pooled PostgreSQL connection idle this long or longer is pinged when taken (a
#: half-open TCP connection — a server gone without a word — shows no other sign).
PING_AFTER_IDLE_SECONDS = 1.0
_IDLE_SINCE = "keel_idle_since"
# OperationalError texts that mean "try again" (lost connection, lock, timeout), not a bug.
_TRANSIENT = ("locked", "connect", "closed", "terminat", "timeout", "timed out", "shutdown")
# SQLSTATE prefixes of a server that cannot serve a connection right now: connection
# exceptions (08…), admin or crash shutdown and "cannot connect now" (starting up,
# shutting down: 57P01-03), too many connections (53300).
_SQLSTATES_UNAVAILABLE = ("08", "57P01", "57P02", "57P03", "53300")
_SQLSTATES_AUTHENTICATION = ("28000", "28P01")
_SQLSTATE_MISSING_DATABASE = "3D000"
_SQLSTATE_DUPLICATE_DATABASE = "42P04"
_SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"
_CONNECT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)


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

        @event.listens_for(engine.sync_engine, "invalidate")
        def _sqlite_invalidate(dbapi_connection, _record, _reason):  # type: ignore[no-untyped-def]
            if in_greenlet():  # else the garbage collector is closing it: nothing waits
                await_(asyncio.shield(_abandon_sqlite_transaction(dbapi_connection)))

        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        hide_parameters=True,  # never log message contents or secret hashes
    )
    _check_on_checkout(engine)
    return engine


def _check_on_checkout(engine: AsyncEngine) -> None:
    """Replace dead pooled connections when they are taken, without pinging every one.

    ``pool_pre_ping`` costs three round trips per checkout on asyncpg (``BEGIN``, a
    query, ``ROLLBACK``), more than a whole batch of sends. A backend that ends (a
    restart, ``pg_terminate_backend``, an idle timeout) sends an error and closes its
    socket, so a connection that died in the pool either is closed already (the loop
    read the end) or has input waiting (it did not yet): only then, and after an idle
    second (when nothing else would tell), is it pinged. A failed ping raises
    ``DisconnectionError``, on which the pool connects afresh (up to three times).
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _connected(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkin")
    def _returned(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _taken(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        driver: asyncpg.Connection = dbapi_connection.driver_connection
        if driver.is_closed():
            raise DisconnectionError("the server closed this pooled connection")
        idle = time.monotonic() - record.info.get(_IDLE_SINCE, 0.0)
        if idle < PING_AFTER_IDLE_SECONDS and not _has_input(driver):
            return
        try:
            dbapi_connection.ping()  # runs in the checkout's greenlet, like pre-ping
        except Exception as exc:
            raise DisconnectionError("a pooled connection did not answer a ping") from exc


def _has_input(driver: asyncpg.Connection) -> bool:
    """Whether the server sent ``driver`` (an idle connection) something not read yet."""
    transport = driver._transport  # private: asyncpg exposes no socket otherwise
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return True  # cannot tell: ping
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


async def _abandon_sqlite_transaction(dbapi_connection: Any) -> None:
    """Stop the statement running on an invalidated SQLite connection and roll back its
    transaction, so its locks are released now.

    SQLAlchemy invalidates a connection whose task is cancelled mid-statement (a client
    deadline, a dropped call, a stopping loop) and closes it; but SQLite only defers the
    close of a connection whose statement is still open (the cancelled cursor holds it),
    so without this the write lock stays held until the garbage collector finalizes that
    cursor, and every other writer waits out the busy timeout and fails.
    """
    connection: aiosqlite.Connection = dbapi_connection.driver_connection
    try:
        await connection.interrupt()  # thread-safe: the statement fails at once
        await connection.rollback()  # queued behind it on the connection's thread
    except (sqlite3.Error, ValueError) as exc:  # ValueError: already closed
        log.debug("rolling back an invalidated SQLite connection failed", exc_info=exc)


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


def driver_transaction(engine: AsyncEngine) -> AbstractAsyncContextManager[asyncpg.Connection]:
    """A pooled PostgreSQL connection's asyncpg connection in a transaction, for the
    hottest statements: nothing between them and the driver (SQLAlchemy's greenlet hops
    and cursor and result wrapping cost more than a small batch's statements themselves).
    Commits on success, rolls back on error.

    What SQLAlchemy would do is done here (see :func:`_driver_connection`): a constraint
    violation is raised as SQLAlchemy's ``IntegrityError``, and a connection whose
    transaction did not end cleanly — cancelled mid-statement, lost, a failed
    ``ROLLBACK``, or failed by anything but the server refusing a statement — is
    invalidated, never returned to the pool mid-transaction.
    """
    return _driver_connection(engine, transaction=True)


def driver_statements(engine: AsyncEngine) -> AbstractAsyncContextManager[asyncpg.Connection]:
    """A pooled PostgreSQL connection's asyncpg connection outside any transaction: each
    statement commits on its own (no ``BEGIN``/``COMMIT``: two round trips fewer), for
    work whose writes are one statement. As :func:`driver_transaction`, a constraint
    violation is raised as SQLAlchemy's ``IntegrityError``, and a connection whose
    statement did not end cleanly (cancelled mid-statement, lost, anything but the
    server refusing it) is invalidated, never returned to the pool."""
    return _driver_connection(engine, transaction=False)


@asynccontextmanager
async def _driver_connection(
    engine: AsyncEngine, *, transaction: bool
) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection's asyncpg connection, in a transaction (``BEGIN`` before,
    ``COMMIT`` after, ``ROLLBACK`` when the server refused a statement) when
    ``transaction``; the one place :func:`driver_transaction` and
    :func:`driver_statements` take it, translate its errors and decide whether it may go
    back to the pool.

    The connection goes back to the pool when the work ended (committed, in a
    transaction) or the server refused a statement (``asyncpg.PostgresError``: the
    connection is fine, once its transaction is rolled back). Anything else (a
    cancellation, a lost connection, the caller's own exception, a failed ``ROLLBACK``)
    may leave a statement or transaction under way, so the connection is invalidated
    (closed: the server rolls back; the pool connects afresh). A constraint violation is raised as
    SQLAlchemy's ``IntegrityError``, so callers handle one set of errors; other driver
    errors pass as they are, which :func:`database_unavailable` knows.
    """
    async with engine.connect() as conn:
        driver: asyncpg.Connection = (await conn.get_raw_connection()).driver_connection
        clean = False
        try:
            if transaction:
                await driver.execute("BEGIN")
            yield driver
            if transaction:
                await driver.execute("COMMIT")
            clean = True
        except asyncpg.PostgresError as exc:  # refused by the server: the connection is fine
            clean = not transaction or await _rolled_back(driver)
            if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
                raise IntegrityError(None, None, exc) from exc
            raise
        finally:
            if not clean:
                await conn.invalidate()


async def _rolled_back(driver: asyncpg.Connection) -> bool:
    """Whether ``ROLLBACK`` on ``driver`` succeeded (if not, the connection is dropped)."""
    try:
        await driver.execute("ROLLBACK")
        return True
    except Exception:
        return False


def one_of(
    column: ColumnElement[Any], name: str, dialect: str, item_type: TypeEngine[Any] | None = None
) -> ColumnElement[bool]:
    """``column`` equals one of the values of the list parameter ``name`` (strings, unless
    ``item_type`` says otherwise).

    On PostgreSQL it is ``= ANY(:name)`` with one array parameter, so the statement's text
    is the same for any number of values and the driver prepares it once; an expanding
    ``IN (…)`` would be a new statement, prepared again, for every length. SQLite gets the
    ``IN (…)``."""
    if dialect == "postgresql":
        array = postgresql.ARRAY(item_type if item_type is not None else String())
        return column == any_(bindparam(name, type_=array))
    return column.in_(bindparam(name, expanding=True))


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
    return await check(engine, within=within) is None


@dataclass(frozen=True, slots=True)
class DatabaseProblem:
    """Why the database cannot be used right now, in words an operator can act on.

    ``reason`` is what went wrong (the server's own message when it sent one: ``database
    "keel" does not exist``, ``password authentication failed for user "keel"``, or
    ``connection refused``); ``hint`` what to do about it, or ``""``. ``missing_database``
    is set when the server answered that the database does not exist (``keel migrate``
    creates it)."""

    reason: str
    hint: str = ""
    missing_database: bool = False

    def __str__(self) -> str:
        return f"{self.reason} ({self.hint})" if self.hint else self.reason


async def check(engine: AsyncEngine, *, within: float = 2.0) -> DatabaseProblem | None:
    """None when the database answers ``SELECT 1`` within ``within`` seconds; else why not."""
    try:
        async with asyncio.timeout(within):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return None
    except TimeoutError:
        return DatabaseProblem(f"no answer within {within:g} s")
    except (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return describe_problem(exc, engine.url)


def describe_problem(exc: BaseException, url: URL) -> DatabaseProblem:
    """What ``exc``, raised while connecting to ``url``, says about the database."""
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    for error in _causes(exc):
        state = getattr(error, "sqlstate", None)
        if state == _SQLSTATE_MISSING_DATABASE:
            return DatabaseProblem(
                f'database "{url.database}" does not exist',
                "run `keel migrate`: it creates the database and its schema",
                missing_database=True,
            )
        if state in _SQLSTATES_AUTHENTICATION:
            return DatabaseProblem(first_line(error), "check the user and password in DATABASE_URL")
        if isinstance(error, socket.gaierror):
            return DatabaseProblem(f"cannot resolve the host {url.host!r}", "check DATABASE_URL")
        if isinstance(error, ConnectionRefusedError) or "connect call failed" in str(error).lower():
            return DatabaseProblem(
                f"connection refused at {where}", "is PostgreSQL running and listening there?"
            )
        if state is not None or isinstance(error, sqlite3.Error | OSError):
            return DatabaseProblem(first_line(error))
    return DatabaseProblem(first_line(exc))


def first_line(error: BaseException) -> str:
    """The first line of an error's text (its driver's, if wrapped), or its type's name when
    it has none (a bare ``TimeoutError``), at most 300 characters: for log lines."""
    orig = getattr(error, "orig", None)
    text_ = str(orig if orig is not None else error).strip() or type(error).__name__
    return text_.splitlines()[0][:300]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps (SQLAlchemy's ``orig``, then ``__cause__``), in turn."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


async def create_database(database_url: str) -> bool:
    """Create the PostgreSQL database ``database_url`` (normalized by the config, as for
    :func:`create_engine`) names, if it does not exist yet.

    Connects to the server's maintenance database (``postgres``, else ``template1``) as
    the same user. Returns True when it created the database, False when there was
    nothing to do (SQLite creates its file itself; another process may have been first).
    Raises ``RuntimeError`` saying exactly what to run when the user may not create it.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql" or not url.database:
        return False
    problem: BaseException | None = None
    for maintenance in ("postgres", "template1"):
        admin = create_async_engine(
            url.set(database=maintenance), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with admin.connect() as conn:
                quoted = conn.dialect.identifier_preparer.quote(url.database)
                await conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
        except DBAPIError as exc:
            state = getattr(exc.orig, "sqlstate", None)
            if state == _SQLSTATE_DUPLICATE_DATABASE:
                return False
            if state == _SQLSTATE_INSUFFICIENT_PRIVILEGE:
                raise RuntimeError(_cannot_create(url)) from exc
            if state != _SQLSTATE_MISSING_DATABASE:
                raise RuntimeError(
                    f'cannot create the database "{url.database}": {first_line(exc)}'
                ) from exc
            problem = exc
        finally:
            await admin.dispose()
    raise RuntimeError(_cannot_create(url)) from problem


def _cannot_create(url: URL) -> str:
    owner = url.username or "postgres"
    statement = f'CREATE DATABASE "{url.database}" OWNER "{owner}"'
    return (
        f'the database "{url.database}" does not exist and user "{owner}" may not create it;'
        " ask a PostgreSQL administrator to run"
        f" `psql -h {url.host or 'localhost'} -p {url.port or 5432} -U postgres -c '{statement}'`,"
        " then `keel migrate` again"
    )


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str = "head") -> list[str]:
    if connection.dialect.name == "postgresql":
        # Held until this transaction ends, whether the migration commits or fails.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    config = _alembic_config(connection)
    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(config, revision)
    scripts = ScriptDirectory.from_config(config)
    target = scripts.get_current_head() if revision == "head" else revision
    applied = scripts.iterate_revisions(target, before)
    return [f"{script.revision} {script.doc}" for script in reversed(list(applied))]


async def migrate(engine: AsyncEngine, *, revision: str = "head") -> list[str]:
    """Bring the schema to the newest migration, or to ``revision`` (a no-op when it is
    already there; tests of a data migration stop before it).

    Returns the migrations it applied, oldest first, each as ``"<revision> <title>"``
    (``"0002 the event log, and idempotent channel creation"``); empty when none was due.
    """
    async with engine.begin() as conn:
        applied = await conn.run_sync(_upgrade, revision)
    log.info(
        "database schema is up to date",
        extra={"database": engine.url.render_as_string(), "applied": applied},
    )
    return applied


def _revisions(connection: Connection) -> tuple[str | None, list[str]]:
    config = _alembic_config(connection)
    current = MigrationContext.configure(connection).get_current_revision()
    scripts = ScriptDirectory.from_config(config)
    head = scripts.get_current_head()
    pending = [
        f"{s.revision} {s.doc}" for s in reversed(list(scripts.iterate_revisions(head, current)))
    ]
    return current, pending


async def migration_state(engine: AsyncEngine) -> tuple[str | None, list[str]]:
    """The schema's revision (None: no migration applied) and the migrations not applied
    yet, oldest first, as ``"<revision> <title>"``."""
    async with engine.connect() as conn:
        return await conn.run_sync(_revisions)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite returns naive ones, which are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def database_unavailable(exc: BaseException) -> Unavailable | None:
    """The :class:`Unavailable` error (with a one-second retry delay) for a failure that
    means "the database cannot be reached, or is locked, right now", so callers retry;
    None for any other failure.

    This is the one place that decides it, for both databases: a lost or refused
    connection (SQLAlchemy's invalidated connections, asyncpg's
    ``ConnectionDoesNotExistError`` and ``InterfaceError``, ``OSError`` from connecting),
    a server starting up, shutting down or out of connections (``CannotConnectNowError``,
    ``AdminShutdownError``, ``TooManyConnectionsError``: SQLSTATE class 08, 57P01-03,
    53300), a database that no longer exists (3D000: dropped under a running process), a
    pool timeout, and SQLite's "database is locked".
    """
    if any(_is_unavailable(error) for error in _causes(exc)):
        return Unavailable("the database is unavailable right now; retry shortly", retry_after=1.0)
    return None


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError):
        return any(word in str(error.orig).lower() for word in _TRANSIENT)
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str) and (
        state.startswith(_SQLSTATES_UNAVAILABLE) or state == _SQLSTATE_MISSING_DATABASE
    ):
        return True  # a database dropped under a running process is an outage too
    if isinstance(error, OSError):
        # Not every OSError (a file the file service cannot read is a bug, not an outage).
        return isinstance(error, ConnectionError | TimeoutError | socket.gaierror) or (
            error.errno in _CONNECT_ERRNOS or "connect" in str(error).lower()
        )
    return isinstance(error, InterfaceError | PoolTimeout | asyncpg.InterfaceError)
