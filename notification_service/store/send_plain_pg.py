"""The commonest group-commit batch on PostgreSQL — in-app sends, at once, without a
request id — on asyncpg directly: two reads per tenant of the batch and one write.

A batch of :func:`is_plain` sends (:meth:`.sends.SqlSends._create_batch`) runs on a
pooled connection's asyncpg connection (:func:`service_kit.db.driver_statements`:
nothing between the statements and the driver — SQLAlchemy's compile, greenlet hops and
result wrapping cost more than such a batch's statements; a connection whose statement
did not end cleanly is dropped, not pooled). It stores what
:func:`.send_writes.write_sends` would, with the same planning, rows and answers, in
three round trips for a batch of one tenant instead of seven:

1. the tenant's settings and 2. the recipients' preferences, once per tenant of the
   batch (a plain send never pushes, so no push subscriptions are read);
3. after the caller's turn to count and commit (``before_counting``), one statement
   inserting the notifications and their deliveries (only skipped in-app ones have a
   row) and reading the unread counts of the inboxes they landed in.

The writes being that one statement, it runs without ``BEGIN``/``COMMIT``: it commits
all of the batch or none of it by itself. The reads before it see what was committed
when each ran, as they would in a transaction at PostgreSQL's READ COMMITTED. The
statement sees the inboxes as they were when it started, so each count is the one read
plus what the batch itself put in that inbox: with the turn held from before the
statement until it has committed, nothing else this process stores commits in between
(the rows it inserts are new, so holding the turn meanwhile waits on no other
transaction's locks).

Every statement's text is fixed and its rows travel as arrays, so asyncpg prepares each
once per connection. The reads and the count are the general path's SQLAlchemy queries
(:mod:`.settings`, :func:`.inbox.unread_count`) compiled once for asyncpg
(:func:`.base.for_driver`): one definition of each, whichever path runs it. Sends with
a request id, a ``send_at`` or another channel (jobs, digest windows, push
subscriptions) take the general path.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from sqlalchemy import Select, String, bindparam, func, select
from sqlalchemy.dialects import postgresql

from notification_service.models import Channel
from notification_service.store.base import for_driver
from notification_service.store.inbox import unread_count
from notification_service.store.queued import QueuedDeliveries
from notification_service.store.rows import to_preferences, to_tenant_settings
from notification_service.store.send_models import NewSend, SendInputs
from notification_service.store.send_writes import (
    PG_PARAMETER_NAMES,
    Outcome,
    answer_sends,
    delivery_rows,
    landed_users,
    notification_rows,
    pg_insert_sends,
    pg_parameters,
    plan_sends,
    unread_as_of_each,
)
from notification_service.store.settings import TENANT_SETTINGS_QUERY, preferences_query

_IN_APP_ONLY = (Channel.IN_APP,)


def is_plain(send: NewSend) -> bool:
    """Whether ``send`` can go in a batch of :func:`write_plain_sends`: in-app only, at
    once, without a request id."""
    request = send.request
    return not request.request_id and request.send_at is None and request.channels == _IN_APP_ONLY


async def write_plain_sends(
    driver: asyncpg.Connection,
    sends: Sequence[NewSend],
    *,
    before_counting: Callable[[], Awaitable[None]],
) -> list[Outcome]:
    """Plan and store the :func:`is_plain` ``sends`` on ``driver`` (outside a
    transaction: the writes are one statement); one outcome per send, in order (see the
    module docstring)."""
    inputs = await _read_inputs(driver, sends)
    outcomes, planned = plan_sends(sends, inputs)
    rows = {i: notification_rows(sends[i], recipients) for i, recipients in planned.items()}
    queued = QueuedDeliveries()
    deliveries = {
        i: delivery_rows(queued, sends[i], recipients) for i, recipients in planned.items()
    }
    landed = landed_users(rows)
    in_batch: Counter[tuple[str, str]] = Counter(
        (sends[index].tenant_id, user_id) for index, users in landed.items() for user_id in users
    )
    await before_counting()
    written = [(sends[i], rows[i], deliveries[i]) for i in planned]
    final: dict[tuple[str, str], int] = {}
    if written:
        params = pg_parameters(written)
        keys = sorted(in_batch)
        counted = await driver.fetch(
            _INSERT_AND_COUNT,
            *_COUNTS.args(
                tenant_ids=[tenant_id for tenant_id, _ in keys],
                user_ids=[user_id for _, user_id in keys],
            ),
            *[params[name] for name in PG_PARAMETER_NAMES],
        )
        final = {(r[0], r[1]): r[2] + in_batch[(r[0], r[1])] for r in counted}
    unread = unread_as_of_each(sends, landed, final)
    return answer_sends(sends, outcomes, inputs, rows, deliveries, unread)


async def _read_inputs(driver: asyncpg.Connection, sends: Sequence[NewSend]) -> list[SendInputs]:
    """What planning each send needs, read once per tenant."""
    users: dict[str, set[str]] = defaultdict(set)
    for send in sends:
        users[send.tenant_id].update(send.user_ids)
    by_tenant: dict[str, SendInputs] = {}
    for tenant_id, user_ids in users.items():
        settings = await driver.fetch(_SETTINGS.sql, *_SETTINGS.args(tenant_id=tenant_id))
        preferences = await driver.fetch(
            _PREFERENCES.sql, *_PREFERENCES.args(tenant_id=tenant_id, user_ids=sorted(user_ids))
        )
        by_tenant[tenant_id] = SendInputs(
            {r["user_id"]: to_preferences(r) for r in preferences},
            to_tenant_settings(settings),
            {},
        )
    return [by_tenant[send.tenant_id] for send in sends]


_SETTINGS = for_driver(TENANT_SETTINGS_QUERY)
_PREFERENCES = for_driver(preferences_query("postgresql"))


def _counts_query() -> Select[Any]:
    """Each (tenant, user) pair of the arrays ``tenant_ids`` and ``user_ids`` with its
    inbox's unread count."""
    pairs = (
        func.unnest(
            bindparam("tenant_ids", type_=postgresql.ARRAY(String)),
            bindparam("user_ids", type_=postgresql.ARRAY(String)),
        )
        .table_valued("tenant_id", "user_id")
        .render_derived(name="counted")
    )
    return select(
        pairs.c.tenant_id, pairs.c.user_id, unread_count(pairs.c.tenant_id, pairs.c.user_id)
    )


_COUNTS = for_driver(_counts_query())

# The inserts, then each landed inbox's unread count as it was before them (one index
# lookup per user): the count's parameters come first, the insert's after them.
_INSERT_AND_COUNT = pg_insert_sends(
    lambda name: f"${len(_COUNTS.names) + PG_PARAMETER_NAMES.index(name) + 1}",
    then=_COUNTS.sql,
)
