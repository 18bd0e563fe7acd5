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
once per connection. Sends with a request id, a ``send_at`` or another channel (jobs,
digest windows, push subscriptions) take the general path.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from notification_service.models import Channel, Preferences
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
            _PG_INSERT_AND_COUNT,
            *[params[name] for name in PG_PARAMETER_NAMES],
            [tenant_id for tenant_id, _ in keys],
            [user_id for _, user_id in keys],
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
        settings = await driver.fetch(_PG_SETTINGS, tenant_id)
        preferences = await driver.fetch(_PG_PREFERENCES, tenant_id, sorted(user_ids))
        by_tenant[tenant_id] = SendInputs(
            {r["user_id"]: _preferences(r) for r in preferences},
            to_tenant_settings({**r, "value": json.loads(r["value"])} for r in settings),
            {},
        )
    return [by_tenant[send.tenant_id] for send in sends]


def _preferences(record: asyncpg.Record) -> Preferences:
    row: dict[str, Any] = dict(record)
    enabled = row["enabled_channels"]
    row["enabled_channels"] = None if enabled is None else json.loads(enabled)
    row["rules"] = json.loads(row["rules"])
    return to_preferences(row)


# JSON columns are read as text (asyncpg's own decoding of them differs with the
# connection's codecs) and decoded here.
_PG_SETTINGS = """
SELECT name, CAST(value AS text) AS value, update_time
FROM notification_tenant_settings
WHERE tenant_id = $1
"""

# One primary-key lookup per user; LIMIT 1 keeps PostgreSQL from planning the LATERAL
# as a scan of the tenant's preferences (as settings._preferences_query).
_PG_PREFERENCES = """
SELECT p.user_id, CAST(p.enabled_channels AS text) AS enabled_channels, p.email,
       p.webhook_url, p.webhook_secret, p.quiet_start, p.quiet_end, p.quiet_time_zone,
       CAST(p.rules AS text) AS rules, p.update_time
FROM unnest($2::varchar[]) AS u(user_id)
CROSS JOIN LATERAL (
    SELECT * FROM notification_preferences
    WHERE tenant_id = $1 AND user_id = u.user_id
    LIMIT 1
) AS p
"""

_POSITION = {name: number for number, name in enumerate(PG_PARAMETER_NAMES, start=1)}
_COUNTED_TENANTS = len(PG_PARAMETER_NAMES) + 1
_COUNTED_USERS = len(PG_PARAMETER_NAMES) + 2

# The inserts, then each landed inbox's unread count as it was before them (one index
# lookup per user).
_PG_INSERT_AND_COUNT = pg_insert_sends(
    lambda name: f"${_POSITION[name]}",
    then=(
        "SELECT c.tenant_id, c.user_id, (SELECT count(*) FROM notifications AS i"
        " WHERE i.tenant_id = c.tenant_id AND i.user_id = c.user_id"
        " AND i.inbox_time IS NOT NULL AND i.read_time IS NULL)"
        f" FROM unnest(${_COUNTED_TENANTS}::varchar[], ${_COUNTED_USERS}::varchar[])"
        " AS c(tenant_id, user_id)"
    ),
)
