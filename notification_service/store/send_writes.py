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
   one statement, and a release job per scheduled send. An in-app delivery sent at once
   has no row: the notification's ``inbox_time`` is its record (it reads as SENT at that
   time, :func:`~notification_service.store.rows.summarize`), so the commonest send —
   in-app only, at once — writes one row per recipient, not two.
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
    ChannelDelivery,
    DeliveryState,
    Hold,
    Notification,
    PlannedChannel,
    PlannedRecipient,
    PushSubscription,
)
from notification_service.store.base import chunks
from notification_service.store.inbox import read_unread_counts
from notification_service.store.queued import QueuedDeliveries
from notification_service.store.rows import summarize, to_delivery
from notification_service.store.send_models import NewSend, SendExists, SendInputs, StoredSend
from notification_service.store.settings import (
    read_preferences,
    read_push_subscriptions,
    read_tenant_settings,
)
from service_kit import jobs
from service_kit.clock import rfc3339
from service_kit.db import as_utc, insert_ignoring_conflicts
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
    inputs = await _read_inputs(conn, sends)
    outcomes, planned = plan_sends(sends, inputs)
    for index, taken in (await _claim_request_ids(conn, sends, planned)).items():
        outcomes[index] = taken
        del planned[index]
    rows = {i: notification_rows(sends[i], recipients) for i, recipients in planned.items()}
    queued = QueuedDeliveries()
    deliveries = {
        i: delivery_rows(queued, sends[i], recipients) for i, recipients in planned.items()
    }
    await queued.write(conn)  # digest windows: their ids go in the delivery rows
    await _insert_rows(conn, [(sends[i], rows[i], deliveries[i]) for i in planned])
    for index in planned:
        await _enqueue_release(conn, sends[index])
    if before_counting is not None:
        await before_counting()
    unread = await _unread_as_of_each(conn, sends, rows)
    return answer_sends(sends, outcomes, inputs, rows, deliveries, unread)


def plan_sends(
    sends: Sequence[NewSend], inputs: Sequence[SendInputs]
) -> tuple[list[Outcome | None], dict[int, list[PlannedRecipient]]]:
    """Plan each send with what was read for it: the outcomes so far (the error of each
    send whose planning failed, None for the others) and the planned recipients of the
    others, by index."""
    outcomes: list[Outcome | None] = [None] * len(sends)
    planned: dict[int, list[PlannedRecipient]] = {}
    for index, send in enumerate(sends):
        try:
            planned[index] = list(send.plan(inputs[index]))
        except Exception as exc:  # this send's error alone
            outcomes[index] = exc
    return outcomes, planned


def answer_sends(
    sends: Sequence[NewSend],
    outcomes: list[Outcome | None],
    inputs: Sequence[SendInputs],
    rows: dict[int, list[dict[str, Any]]],
    deliveries: dict[int, list[dict[str, Any]]],
    unread: dict[int, dict[str, int]],
) -> list[Outcome]:
    """Every send's outcome: the stored ones (those with ``rows``) made from what was
    written, the others as ``outcomes`` has them."""
    for index in rows:
        outcomes[index] = _stored(
            sends[index], rows[index], deliveries[index], unread[index], inputs[index]
        )
    answered = [outcome for outcome in outcomes if outcome is not None]
    assert len(answered) == len(sends)  # each was planned, failed, or found taken
    return answered


#: One send's rows: the send, its notification rows, its delivery rows.
_SendRows = tuple[NewSend, list[dict[str, Any]], list[dict[str, Any]]]


async def _insert_rows(conn: AsyncConnection, written: Sequence[_SendRows]) -> None:
    """Insert the notifications and their deliveries: on PostgreSQL in one statement
    whose parameters are one array per column (one round trip, and no per-row work in
    SQLAlchemy), what a send's notifications share once per send; on SQLite as two
    executemany inserts."""
    notification_rows = [row for _, rows, _ in written for row in rows]
    delivery_rows = [row for _, _, deliveries in written for row in deliveries]
    if not notification_rows:
        return
    if conn.dialect.name == "postgresql":
        await conn.execute(_PG_INSERT_SENDS, pg_parameters(written))
        return
    for part in chunks(notification_rows):
        await conn.execute(insert(notifications), list(part))
    for part in chunks(delivery_rows):
        await conn.execute(insert(notification_deliveries), list(part))


def pg_parameters(written: Sequence[_SendRows]) -> dict[str, list[Any]]:
    """The arrays of :data:`_PG_INSERT_SENDS`: ``s_`` one element per send, ``n_`` per
    notification, ``d_`` per delivery (the last two name their send by its number)."""
    params: dict[str, list[Any]] = {
        f"{prefix}{name}": [] for prefix, columns in _PG_ARRAYS for name in columns
    }
    for number, (send, rows, deliveries) in enumerate(written, start=1):
        request = send.request
        for name, value in (
            ("tenant_id", send.tenant_id),
            ("send_id", send.send_id),
            ("category", request.category),
            ("title", request.title),
            ("body", request.body),
            ("data", json.dumps(dict(request.data))),  # JSON travels as text
            ("channels", json.dumps([str(c) for c in request.channels])),
            ("channel_id", request.channel_id or None),
            ("create_time", send.now),
            ("send_time", request.send_at),
        ):
            params[f"s_{name}"].append(value)
        for name in _ROW_COLUMNS:
            params[f"n_{name}"] += [row[name] for row in rows]
        params["n_send"] += [number] * len(rows)
        for name in _DELIVERY_COLUMNS:
            params[f"d_{name}"] += [row[name] for row in deliveries]
        params["d_send"] += [number] * len(deliveries)
    return params


#: What the notifications of one send share (PostgreSQL's arrays; JSON as text, as
#: asyncpg has no jsonb[] encoder for dicts).
_SEND_COLUMNS = {
    "tenant_id": "text",
    "send_id": "text",
    "category": "text",
    "title": "text",
    "body": "text",
    "data": "text",
    "channels": "text",
    "channel_id": "text",
    "create_time": "timestamptz",
    "send_time": "timestamptz",
}
#: What each notification has of its own, besides the number of its send.
_ROW_COLUMNS = {"id": "text", "user_id": "text", "position": "int", "inbox_time": "timestamptz"}
#: What each delivery has of its own, besides the number of its send (whose tenant and
#: time it has).
_DELIVERY_COLUMNS = {
    "id": "text",
    "notification_id": "text",
    "channel": "text",
    "subscription_id": "text",
    "state": "text",
    "hold": "text",
    "error": "text",
    "digest_id": "text",
}
_PG_ARRAYS = (
    ("s_", _SEND_COLUMNS),
    ("n_", _ROW_COLUMNS | {"send": "int"}),
    ("d_", _DELIVERY_COLUMNS | {"send": "int"}),
)


#: The parameter names of the insert, in the order of :func:`pg_parameters`.
PG_PARAMETER_NAMES = tuple(f"{prefix}{name}" for prefix, columns in _PG_ARRAYS for name in columns)


def _unnest(
    param: Callable[[str], str],
    prefix: str,
    columns: dict[str, str],
    alias: str,
    *,
    numbered: bool = False,
) -> str:
    arrays = ", ".join(
        f"CAST({param(prefix + name)} AS {kind}[])" for name, kind in columns.items()
    )
    names = ", ".join([*columns, "number"] if numbered else columns)
    return f"unnest({arrays}){' WITH ORDINALITY' if numbered else ''} AS {alias}({names})"


def pg_insert_sends(param: Callable[[str], str], *, then: str = "") -> str:
    """The statement inserting the notifications and their deliveries of
    :func:`pg_parameters`' arrays (``param`` spells a parameter given its name): the
    notifications in a data-modifying WITH and their deliveries, each row joined with
    what its send's rows share; the deliveries' foreign keys are checked at its end,
    once the notifications are in. With ``then``, the deliveries' insert is a WITH too
    and the statement ends with ``then`` (which sees the tables as they were before it)."""
    deliveries = (
        "INSERT INTO notification_deliveries (id, tenant_id, notification_id, channel,"
        " subscription_id, state, hold, error, digest_id, update_time)"
        " SELECT d.id, s.tenant_id, d.notification_id, d.channel, d.subscription_id, d.state,"
        " d.hold, d.error, d.digest_id, s.create_time"
        f" FROM {_unnest(param, 'd_', _PG_ARRAYS[2][1], 'd')} JOIN sends AS s"
        " ON s.number = d.send"
    )
    return (
        f"WITH sends AS (SELECT * FROM {_unnest(param, 's_', _SEND_COLUMNS, 's', numbered=True)}),"
        " new_notifications AS (INSERT INTO notifications (id, tenant_id, user_id, send_id,"
        " position, category, title, body, data, channels, channel_id, create_time, send_time,"
        " inbox_time)"
        " SELECT n.id, s.tenant_id, n.user_id, s.send_id, n.position, s.category, s.title,"
        " s.body, CAST(s.data AS jsonb), CAST(s.channels AS jsonb), s.channel_id, s.create_time,"
        " s.send_time, n.inbox_time"
        f" FROM {_unnest(param, 'n_', _PG_ARRAYS[1][1], 'n')} JOIN sends AS s"
        " ON s.number = n.send)"
        + (f", new_deliveries AS ({deliveries}) {then}" if then else f" {deliveries}")
    )


_PG_INSERT_SENDS = text(pg_insert_sends(lambda name: f":{name}"))


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


def notification_rows(
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


def delivery_rows(
    queued: QueuedDeliveries, send: NewSend, recipients: Sequence[PlannedRecipient]
) -> list[dict[str, Any]]:
    """The delivery rows of a send, its queued ones added to ``queued``."""
    rows = []
    at_once = send.request.send_at is None
    for recipient in recipients:
        channels = recipient.channels
        if len(channels) > 1:
            channels = tuple(sorted(channels, key=lambda c: str(c.channel)))
        for planned in channels:
            if at_once and planned.channel is Channel.IN_APP and planned.skipped is None:
                continue  # sent: the notification's inbox_time records it (no row)
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
    landed = landed_users(rows)
    by_tenant: dict[str, set[str]] = defaultdict(set)
    for index, user_ids in landed.items():
        by_tenant[sends[index].tenant_id].update(user_ids)
    final: dict[tuple[str, str], int] = {}
    for tenant_id, users in by_tenant.items():
        counts = await read_unread_counts(conn, tenant_id, sorted(users))
        final |= {(tenant_id, user_id): count for user_id, count in counts.items()}
    return unread_as_of_each(sends, landed, final)


def landed_users(rows: dict[int, list[dict[str, Any]]]) -> dict[int, list[str]]:
    """By send index, the users whose inboxes its notification ``rows`` landed in."""
    return {
        index: [row["user_id"] for row in send_rows if row["inbox_time"] is not None]
        for index, send_rows in rows.items()
    }


def unread_as_of_each(
    sends: Sequence[NewSend], landed: dict[int, list[str]], final: dict[tuple[str, str], int]
) -> dict[int, dict[str, int]]:
    """Each send's unread counts of the inboxes it ``landed`` in, as of its place in the
    call, from the ``final`` counts by (tenant, user) once all of them landed."""
    later: Counter[tuple[str, str]] = Counter()
    unread: dict[int, dict[str, int]] = {}
    for index in sorted(landed, reverse=True):
        keys = [(sends[index].tenant_id, user_id) for user_id in landed[index]]
        unread[index] = {key[1]: final.get(key, 0) - later[key] for key in keys}
        later.update(keys)
    return unread


def _stored(
    send: NewSend,
    rows: list[dict[str, Any]],
    deliveries: list[dict[str, Any]],
    unread: dict[str, int],
    inputs: SendInputs,
) -> StoredSend:
    return StoredSend(
        _notifications_of(send, rows, deliveries),
        unread,
        inputs.settings,
        jobs_due=any(d["state"] == DeliveryState.PENDING for d in deliveries),
    )


def _notifications_of(
    send: NewSend, rows: list[dict[str, Any]], deliveries: list[dict[str, Any]]
) -> list[Notification]:
    """The notifications of ``rows`` as a read of them would give them, made without
    reading them back. What a send's notifications share is converted once, and so is
    each distinct summary of their deliveries (most recipients' are alike)."""
    own: dict[str, list[dict[str, Any]]] = {row["id"]: [] for row in rows}
    for delivery in deliveries:
        own[delivery["notification_id"]].append(delivery)
    request = send.request
    now = as_utc(send.now)
    send_time = as_utc(request.send_at) if request.send_at else None
    in_app = Channel.IN_APP in request.channels
    summaries: dict[tuple[Any, ...], tuple[ChannelDelivery, ...]] = {}
    made = []
    for row in rows:
        found = own[row["id"]]
        landed = row["inbox_time"] is not None
        key = (landed, *[(d["channel"], d["state"], d["error"]) for d in found])
        summary = summaries.get(key)
        if summary is None:
            summary = summarize(
                [to_delivery(d) for d in found], landed=now if in_app and landed else None
            )
            summaries[key] = summary
        made.append(
            Notification(
                id=row["id"],
                tenant_id=send.tenant_id,
                user_id=row["user_id"],
                category=request.category,
                title=request.title,
                body=request.body,
                data=row["data"],
                channels=request.channels,
                create_time=now,
                channel_id=request.channel_id,
                send_time=send_time,
                deliveries=summary,
                inbox_time=now if landed else None,
            )
        )
    return made
