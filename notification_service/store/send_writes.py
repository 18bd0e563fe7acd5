"""The statements that store sends: any number of them in one transaction, each answered
on its own.

:func:`write_sends` runs in the caller's transaction (a send alone, or a batch of
concurrent sends that share one: group commit) and pays each fixed cost once for all of
them:

1. **Read** what planning needs, once per tenant of the sends: the recipients'
   preferences, the tenant's settings, and (for sends that may push) the recipients' push
   subscriptions. Then **plan** each send; a send whose planning fails gets that error
   and stores nothing.
2. **Claim the request ids** in one statement, in (tenant, request id) order. A send
   whose id is taken gets :class:`SendExists` and stores nothing (on PostgreSQL the claim
   waits for a concurrent transaction holding the same id to end). The same request id
   must not appear twice in one call (the batcher runs a repeat after the batch).
3. **Write** every notification in one statement, the queued deliveries' digest windows
   (locked in one global order) and jobs (:class:`QueuedDeliveries`), every delivery in
   one statement, and a release job per scheduled send.
4. **Count** the unread notifications of every inbox a send landed in, once per tenant,
   after the writes (and after ``before_counting``, which lets the caller have its
   transactions count and commit in turn). Each send is answered with the counts as of
   its own place in the call: a later send of the same call to the same user is not
   counted in an earlier send's count, so the counts read as if the sends had committed
   one by one in order.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import Select, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from notification_service.models import (
    RELEASE_JOB,
    Channel,
    Delivery,
    DeliveryState,
    Hold,
    PlannedChannel,
    PlannedRecipient,
    PushSubscription,
)
from notification_service.store.base import chunks
from notification_service.store.inbox import read_unread_counts
from notification_service.store.queued import QueuedDeliveries
from notification_service.store.rows import to_delivery, to_notification
from notification_service.store.send_models import NewSend, SendExists, SendInputs, StoredSend
from notification_service.store.settings import (
    read_preferences,
    read_push_subscriptions,
    read_tenant_settings,
)
from service_kit import jobs
from service_kit.clock import rfc3339
from service_kit.db import insert_ignoring_conflicts
from service_kit.schema import notification_deliveries, notification_requests, notifications
from service_kit.validation import new_id

#: What a send of :func:`write_sends` comes to: stored, or the error it must raise.
Outcome = StoredSend | Exception


async def write_sends(
    conn: AsyncConnection,
    sends: Sequence[NewSend],
    *,
    before_counting: Callable[[], Awaitable[None]] | None = None,
) -> list[Outcome]:
    """Plan and store ``sends`` in ``conn``'s transaction (see the module docstring); one
    outcome per send, in order. ``before_counting`` is awaited after the writes, before
    the unread counts are read. Errors of the database are raised (the transaction is
    then unusable: the caller rolls back and may store the sends one at a time)."""
    outcomes: list[Outcome | None] = [None] * len(sends)
    planned: dict[int, list[PlannedRecipient]] = {}
    inputs = await _read_inputs(conn, sends)
    for index, send in enumerate(sends):
        try:
            planned[index] = list(send.plan(inputs[index]))
        except Exception as exc:  # this send's error alone
            outcomes[index] = exc
    for index, taken in (await _claim_request_ids(conn, sends, planned)).items():
        outcomes[index] = taken
        del planned[index]
    rows = {i: _notification_rows(sends[i], recipients) for i, recipients in planned.items()}
    queued = QueuedDeliveries()
    deliveries = {
        i: _delivery_rows(queued, sends[i], recipients) for i, recipients in planned.items()
    }
    await queued.write(conn)  # digest windows: their ids go in the delivery rows
    await _insert_rows(
        conn,
        [row for i in planned for row in rows[i]],
        [row for i in planned for row in deliveries[i]],
    )
    for index in planned:
        await _enqueue_release(conn, sends[index])
    if before_counting is not None:
        await before_counting()
    unread = await _unread_as_of_each(conn, sends, rows)
    for index in planned:
        outcomes[index] = _stored(rows[index], deliveries[index], unread[index], inputs[index])
    answered = [outcome for outcome in outcomes if outcome is not None]
    assert len(answered) == len(sends)  # each was planned, failed, or found taken
    return answered


async def _insert_rows(
    conn: AsyncConnection,
    notification_rows: Sequence[dict[str, Any]],
    delivery_rows: Sequence[dict[str, Any]],
) -> None:
    """Insert the notifications and their deliveries: on PostgreSQL in one statement
    whose parameters are one array per column (one round trip, and no per-row work in
    SQLAlchemy); on SQLite as two executemany inserts."""
    if not notification_rows:
        return
    if conn.dialect.name == "postgresql":
        params = {
            f"n_{name}": [_pg_value(row[name]) for row in notification_rows]
            for name in _NOTIFICATION_COLUMNS
        } | {f"d_{name}": [row[name] for row in delivery_rows] for name in _DELIVERY_COLUMNS}
        await conn.execute(_PG_INSERT_SENDS, params)
        return
    for part in chunks(notification_rows):
        await conn.execute(insert(notifications), list(part))
    for part in chunks(delivery_rows):
        await conn.execute(insert(notification_deliveries), list(part))


def _pg_value(value: Any) -> Any:
    """A column value as the array parameters carry it (JSON documents as their text)."""
    return json.dumps(value) if isinstance(value, dict | list) else value


_NOTIFICATION_COLUMNS = {
    "id": "text",
    "tenant_id": "text",
    "user_id": "text",
    "send_id": "text",
    "position": "int",
    "category": "text",
    "title": "text",
    "body": "text",
    "data": "jsonb",
    "channels": "jsonb",
    "channel_id": "text",
    "create_time": "timestamptz",
    "send_time": "timestamptz",
    "inbox_time": "timestamptz",
    "read_time": "timestamptz",
}
_DELIVERY_COLUMNS = {
    "id": "text",
    "tenant_id": "text",
    "notification_id": "text",
    "channel": "text",
    "subscription_id": "text",
    "state": "text",
    "hold": "text",
    "error": "text",
    "digest_id": "text",
    "update_time": "timestamptz",
}


def _unnest(prefix: str, columns: dict[str, str]) -> str:
    # JSON documents travel as text (asyncpg has no jsonb[] encoder for dicts).
    arrays = ", ".join(
        f"CAST(:{prefix}{name} AS {'text' if kind == 'jsonb' else kind}[])"
        for name, kind in columns.items()
    )
    picked = ", ".join(
        f"CAST(t.{name} AS jsonb)" if kind == "jsonb" else f"t.{name}"
        for name, kind in columns.items()
    )
    return f"SELECT {picked} FROM unnest({arrays}) AS t({', '.join(columns)})"


# The notifications (in a data-modifying WITH) and their deliveries, in one statement:
# the deliveries' foreign keys are checked at its end, once the notifications are in.
_PG_INSERT_SENDS = text(
    f"WITH new_notifications AS (INSERT INTO notifications ({', '.join(_NOTIFICATION_COLUMNS)})"
    f" {_unnest('n_', _NOTIFICATION_COLUMNS)})"
    f" INSERT INTO notification_deliveries ({', '.join(_DELIVERY_COLUMNS)})"
    f" {_unnest('d_', _DELIVERY_COLUMNS)}"
)


async def _read_inputs(conn: AsyncConnection, sends: Sequence[NewSend]) -> list[SendInputs]:
    """What planning each send needs, read once per tenant."""
    users: dict[str, set[str]] = defaultdict(set)
    pushing: dict[str, set[str]] = defaultdict(set)
    for send in sends:
        users[send.tenant_id].update(send.user_ids)
        if Channel.PUSH in send.request.channels:
            pushing[send.tenant_id].update(send.user_ids)
    by_tenant: dict[str, tuple[SendInputs, dict[str, list[PushSubscription]]]] = {}
    for tenant_id, user_ids in users.items():
        subscriptions = (
            await read_push_subscriptions(conn, tenant_id, sorted(pushing[tenant_id]))
            if pushing[tenant_id]
            else {}
        )
        read = SendInputs(
            await read_preferences(conn, tenant_id, sorted(user_ids)),
            await read_tenant_settings(conn, tenant_id),
            {},
        )
        by_tenant[tenant_id] = (read, subscriptions)
    found = []
    for send in sends:
        read, subscriptions = by_tenant[send.tenant_id]
        if Channel.PUSH in send.request.channels:
            read = SendInputs(read.preferences, read.settings, subscriptions)
        found.append(read)
    return found


async def _claim_request_ids(
    conn: AsyncConnection, sends: Sequence[NewSend], planned: dict[int, Any]
) -> dict[int, SendExists]:
    """Write the request rows of the planned sends that have a request id, in (tenant,
    request id) order; the sends whose id was taken already, with who took it."""
    asking = sorted(
        (i for i in planned if sends[i].request.request_id),
        key=lambda i: (sends[i].tenant_id, sends[i].request.request_id),
    )
    claimed: set[tuple[str, str]] = set()
    for part in chunks(asking, 500):
        rows = [
            {
                "tenant_id": sends[i].tenant_id,
                "request_id": sends[i].request.request_id,
                "send_id": sends[i].send_id,
                "fingerprint": sends[i].fingerprint,
                "create_time": sends[i].now,
            }
            for i in part
        ]
        inserted = await conn.execute(
            insert_ignoring_conflicts(conn, notification_requests)
            .values(rows)
            .returning(notification_requests.c.tenant_id, notification_requests.c.request_id)
        )
        claimed |= {(row.tenant_id, row.request_id) for row in inserted}
    taken: dict[int, SendExists] = {}
    for i in asking:
        send = sends[i]
        if (send.tenant_id, send.request.request_id) not in claimed:
            query = request_query(send.tenant_id, send.request.request_id)
            row = (await conn.execute(query)).one()
            taken[i] = SendExists(row.send_id, row.fingerprint)
    return taken


def request_query(tenant_id: str, request_id: str) -> Select[Any]:
    """The send id and fingerprint of the tenant's request ``request_id``."""
    return select(notification_requests.c.send_id, notification_requests.c.fingerprint).where(
        notification_requests.c.tenant_id == tenant_id,
        notification_requests.c.request_id == request_id,
    )


def _notification_rows(
    send: NewSend, recipients: Sequence[PlannedRecipient]
) -> list[dict[str, Any]]:
    request = send.request
    common: dict[str, Any] = {
        "tenant_id": send.tenant_id,
        "send_id": send.send_id,
        "category": request.category,
        "title": request.title,
        "body": request.body,
        "data": dict(request.data),
        "channels": [str(c) for c in request.channels],
        "channel_id": request.channel_id or None,
        "create_time": send.now,
        "send_time": request.send_at,
        "read_time": None,
    }
    rows = []
    for position, recipient in enumerate(recipients):
        in_app = any(p.channel is Channel.IN_APP and p.skipped is None for p in recipient.channels)
        rows.append(
            common
            | {
                "id": recipient.notification_id,
                "user_id": recipient.user_id,
                "position": position,
                "inbox_time": send.now if in_app and request.send_at is None else None,
            }
        )
    return rows


def _delivery_rows(
    queued: QueuedDeliveries, send: NewSend, recipients: Sequence[PlannedRecipient]
) -> list[dict[str, Any]]:
    """The delivery rows of a send, its queued ones added to ``queued``."""
    rows = []
    for recipient in recipients:
        for planned in sorted(recipient.channels, key=lambda c: str(c.channel)):
            rows += _deliveries_of(queued, send, recipient, planned)
    return rows


def _deliveries_of(
    queued: QueuedDeliveries, send: NewSend, recipient: PlannedRecipient, planned: PlannedChannel
) -> list[dict[str, Any]]:
    """The delivery rows of one recipient's channel (one per push subscription)."""
    base = {
        "tenant_id": send.tenant_id,
        "notification_id": recipient.notification_id,
        "channel": str(planned.channel),
        "subscription_id": None,
        "digest_id": None,
        "update_time": send.now,
    }
    if planned.skipped is not None:
        return [
            base
            | {
                "id": new_id(),
                "state": DeliveryState.SKIPPED,
                "hold": Hold.NONE,
                "error": planned.skipped,
            }
        ]
    send_at = send.request.send_at
    targets: Sequence[str | None] = (
        planned.subscription_ids if planned.channel is Channel.PUSH else [None]
    )
    rows = []
    for subscription_id in targets:
        row = base | {"id": new_id(), "subscription_id": subscription_id}
        if send_at is not None:
            row |= {
                "state": DeliveryState.HELD,
                "hold": Hold.SCHEDULED,
                "error": f"scheduled for {rfc3339(send_at)}",
            }
        elif planned.channel is Channel.IN_APP:
            row |= {"state": DeliveryState.SENT, "hold": Hold.NONE, "error": ""}
        else:
            queued.add(
                row,
                tenant_id=send.tenant_id,
                user_id=recipient.user_id,
                category=send.request.category,
                timing=planned.timing,
                now=send.now,
                max_attempts=send.max_attempts,
            )
        rows.append(row)
    return rows


async def _enqueue_release(conn: AsyncConnection, send: NewSend) -> None:
    if send.request.send_at is not None:
        await jobs.enqueue(
            conn,
            RELEASE_JOB,
            {"send_id": send.send_id},
            now=send.now,
            tenant_id=send.tenant_id,
            run_after=send.request.send_at,
            max_attempts=send.max_attempts,
        )


async def _unread_as_of_each(
    conn: AsyncConnection, sends: Sequence[NewSend], rows: dict[int, list[dict[str, Any]]]
) -> dict[int, dict[str, int]]:
    """Each stored send's unread counts of the inboxes it landed in, as of its place in
    the call (see the module docstring)."""
    landed = {
        index: [row["user_id"] for row in send_rows if row["inbox_time"] is not None]
        for index, send_rows in rows.items()
    }
    by_tenant: dict[str, set[str]] = defaultdict(set)
    for index, user_ids in landed.items():
        by_tenant[sends[index].tenant_id].update(user_ids)
    final: dict[tuple[str, str], int] = {}
    for tenant_id, landed_users in by_tenant.items():
        counts = await read_unread_counts(conn, tenant_id, sorted(landed_users))
        final |= {(tenant_id, user_id): count for user_id, count in counts.items()}
    later: Counter[tuple[str, str]] = Counter()
    unread: dict[int, dict[str, int]] = {}
    for index in sorted(landed, reverse=True):
        keys = [(sends[index].tenant_id, user_id) for user_id in landed[index]]
        unread[index] = {key[1]: final.get(key, 0) - later[key] for key in keys}
        later.update(keys)
    return unread


def _stored(
    rows: list[dict[str, Any]],
    deliveries: list[dict[str, Any]],
    unread: dict[str, int],
    inputs: SendInputs,
) -> StoredSend:
    grouped: dict[str, list[Delivery]] = {row["id"]: [] for row in rows}
    for delivery in deliveries:
        grouped[delivery["notification_id"]].append(to_delivery(delivery))
    return StoredSend(
        [to_notification(row, grouped[row["id"]]) for row in rows],
        unread,
        inputs.settings,
        jobs_due=any(d["state"] == DeliveryState.PENDING for d in deliveries),
    )
