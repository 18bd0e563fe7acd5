"""What every part of the SQL notification store shares: the engine, reading
notifications with their deliveries, and queries compiled once for asyncpg itself."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    TableValuedAlias,
    any_,
    bindparam,
    func,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notification_service.models import Delivery, Notification
from notification_service.store.rows import Row, to_delivery, to_notification
from service_kit.schema import notification_deliveries, notifications

T = TypeVar("T")

#: The most ids one ``IN (…)`` carries (SQLite allows 32766 parameters per statement).
CHUNK = 1000


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def one_of(column: ColumnElement[str], name: str, dialect: str) -> ColumnElement[bool]:
    """``column`` equals one of the strings of the list parameter ``name``.

    On PostgreSQL it is ``= ANY(:name)`` with one array parameter, so the statement's text
    is the same for any number of values and the driver prepares it once; an expanding
    ``IN (…)`` would be a new statement, prepared again, for every length. SQLite gets the
    ``IN (…)``."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=postgresql.ARRAY(String)))
    return column.in_(bindparam(name, expanding=True))


def listed(name: str, column: str) -> TableValuedAlias:
    """PostgreSQL: the strings of the list parameter ``name`` as rows of one column,
    ``column`` (``unnest``).

    A query that looks each of them up (a correlated subquery, a ``LATERAL``) has one
    plan whatever the list holds. ``= ANY(:name)`` does not: after five runs PostgreSQL
    may keep a generic plan, in which the array is a parameter it cannot hash, and
    filters every row of the tenant's index range by a linear search of the array (a
    1,000-user send's unread counts took 69 ms that way instead of 6 ms)."""
    array = bindparam(name, type_=postgresql.ARRAY(String))
    return func.unnest(array).table_valued(column).render_derived(name=f"listed_{column}")


_ASYNCPG = postgresql_asyncpg.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class DriverQuery:
    """A SQLAlchemy query compiled once to what asyncpg runs: ``sql`` with ``$n``
    parameters, the name of each in order (``names``), and the values the query gives
    itself (``fixed``, e.g. a ``LIMIT``'s)."""

    sql: str
    names: tuple[str, ...]
    fixed: Mapping[str, Any]

    def args(self, **values: Any) -> list[Any]:
        """The positional arguments of ``sql``: ``values`` (by parameter name, as the
        driver takes them: a list for an array) and the fixed ones."""
        return [values[name] if name in values else self.fixed[name] for name in self.names]


def for_driver(query: Select[Any]) -> DriverQuery:
    """``query`` compiled for asyncpg, to run on a pooled connection's driver (whose
    JSON codecs SQLAlchemy set: its rows carry what SQLAlchemy's would). So the
    statement has one definition whichever way it runs. Raises TypeError for a query
    whose columns SQLAlchemy would convert after the driver (they would differ)."""
    for name, column in query.selected_columns.items():
        if column.type.dialect_impl(_ASYNCPG).result_processor(_ASYNCPG, None) is not None:
            raise TypeError(f"column {name!r} needs SQLAlchemy's result processing")
    compiled = query.compile(dialect=_ASYNCPG)
    names = tuple(compiled.positiontup or ())
    binds = {name: compiled.binds[name] for name in names}
    fixed = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
    return DriverQuery(compiled.string, names, fixed)


class SqlStoreBase:
    """Holds the engine the store's parts query."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine


async def deliveries_of(conn: AsyncConnection, notification_ids: Sequence[str]) -> list[Delivery]:
    """Every delivery of the notifications ``notification_ids``."""
    found: list[Delivery] = []
    for part in chunks(notification_ids):
        query = select(notification_deliveries).where(
            notification_deliveries.c.notification_id.in_(part)
        )
        found += [to_delivery(r._mapping) for r in (await conn.execute(query)).all()]
    return found


async def load_notifications(
    conn: AsyncConnection, tenant_id: str, ids: Sequence[str]
) -> list[Notification]:
    """The tenant's notifications with these ids (with their deliveries), in that order;
    ids of no notification of the tenant are left out."""
    rows: dict[str, Row] = {}
    for part in chunks(ids):
        query = select(notifications).where(
            notifications.c.tenant_id == tenant_id, notifications.c.id.in_(part)
        )
        rows |= {r.id: r._mapping for r in (await conn.execute(query)).all()}
    return await with_deliveries(conn, [rows[i] for i in ids if i in rows])


async def with_deliveries(conn: AsyncConnection, rows: Sequence[Row]) -> list[Notification]:
    """Notifications of ``rows`` (of the notifications table), in that order."""
    grouped: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in await deliveries_of(conn, [row["id"] for row in rows]):
        grouped[delivery.notification_id].append(delivery)
    return [to_notification(row, grouped[row["id"]]) for row in rows]
