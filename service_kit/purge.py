"""The purge of a deleted tenant: every row it owns, in every table, in bounded batches.

``TenantService.DeleteTenant`` removes the tenant's row and, in the same transaction,
calls :func:`start_tenant_purge`, which records the deletion (a ``tenant_deletions``
row, state ``deleting``) and enqueues one ``tenant.purge`` job (:mod:`service_kit.jobs`).
The job's handler, :func:`tenant_purge_handler`, then removes the tenant's data. It lives
in the kit because only the kit knows every table (:mod:`service_kit.schema`). With it
goes one ``tenant.purge_blobs`` job, for the bytes kept outside the database: the file
service's process handles it (``file_service/server.py``), removing every blob under the
tenant's prefix.

Invariants:

- **Every tenant-owned table** (:func:`~service_kit.schema.tenant_owned_tables`, each of
  which carries ``tenant_id``) is purged, except the deletion record itself; children
  before parents, so no ``ON DELETE CASCADE`` removes an unbounded number of rows behind
  a batch. Tables added to the schema later are purged without a change here.
- **Bounded batches.** One statement removes at most ``batch_size`` rows (1,000 by
  default), chosen through the table's ``tenant_id`` index, in a transaction of its own
  that also adds the count to the deletion record. So the counts are exact, and a purge
  stopped anywhere (a crash, ``kill -9``, a deploy) resumes where it was when the job
  runs again; running it twice, even at once, removes nothing twice.
- **Done means empty.** The purge passes over every table until a whole pass removes
  nothing (a write that was in flight when the tenant was deleted is caught by the next
  pass); then the deletion becomes ``purged`` with its finish time. The record is kept.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

from sqlalchemy import Table, delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service_kit import jobs
from service_kit.clock import Clock, utcnow
from service_kit.db import write_transaction
from service_kit.schema import tenant_deletions, tenant_owned_tables

log = logging.getLogger(__name__)

#: The job kind of a tenant's purge; its payload is ``{"tenant_id": ...}``.
TENANT_PURGE_JOB: Final = "tenant.purge"
#: The job kind that removes what a deleted tenant keeps outside the database (the file
#: service's blobs); same payload. Enqueued with the purge; the process that keeps such
#: data handles it.
TENANT_BLOB_PURGE_JOB: Final = "tenant.purge_blobs"
#: States of a deletion record.
DELETING: Final = "deleting"
PURGED: Final = "purged"
DEFAULT_BATCH_SIZE: Final = 1000
#: Whole passes over the tables in one run before the job retries later instead.
MAX_PASSES: Final = 5


class PurgeIncomplete(Exception):
    """Rows of the tenant kept appearing through ``MAX_PASSES`` passes; the job retries."""


def purged_tables() -> list[Table]:
    """The tables a purge empties of the tenant's rows, children before parents."""
    tables = [t for t in tenant_owned_tables() if t is not tenant_deletions]
    for table in tables:
        if "tenant_id" not in table.c:  # the schema's own test keeps this from happening
            raise RuntimeError(f"table {table.name} is tenant-owned but has no tenant_id")
    return list(reversed(tables))


async def start_tenant_purge(
    conn: AsyncConnection, *, tenant_id: str, name: str, now: datetime
) -> None:
    """Record that the tenant ``tenant_id`` (named ``name``) is being deleted and enqueue
    its purge, in ``conn``'s transaction (the one that removes the tenant's row)."""
    await conn.execute(
        insert(tenant_deletions).values(
            tenant_id=tenant_id,
            name=name,
            state=DELETING,
            purged_rows={},
            start_time=now,
            update_time=now,
        )
    )
    # Installation-wide (no tenant_id): the purge removes the tenant's own jobs, not these.
    for kind in (TENANT_PURGE_JOB, TENANT_BLOB_PURGE_JOB):
        await jobs.enqueue(
            conn,
            kind,
            {"tenant_id": tenant_id},
            now=now,
            max_attempts=None,
            unique_key=f"{kind}:{tenant_id}",
        )


async def purge_tenant(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    clock: Clock = utcnow,
    job: jobs.Job | None = None,
) -> None:
    """Remove every row of ``tenant_id`` from :func:`purged_tables`, then mark its
    deletion ``purged``. Does nothing when the deletion is unknown or already purged.

    The running ``job``'s checkpoint is consulted before each batch, so a stopping worker
    interrupts the purge between transactions. Raises :class:`PurgeIncomplete` when rows
    keep appearing.
    """
    for _ in range(MAX_PASSES):
        removed = 0
        for table in purged_tables():
            while True:
                if job is not None:
                    await job.checkpoint()
                count = await _purge_batch(engine, table, tenant_id, batch_size, clock)
                if count is None:
                    return
                removed += count
                if count < batch_size:
                    break
        if removed == 0:
            await _finish(engine, tenant_id, clock)
            return
    raise PurgeIncomplete(f"rows of tenant {tenant_id} kept appearing in {MAX_PASSES} passes")


async def _purge_batch(
    engine: AsyncEngine, table: Table, tenant_id: str, batch_size: int, clock: Clock
) -> int | None:
    """Delete up to ``batch_size`` of the tenant's rows of ``table`` and count them in the
    deletion record, in one transaction; None when there is no deletion to work on."""
    async with write_transaction(engine) as conn:
        record = (
            await conn.execute(
                select(tenant_deletions.c.state, tenant_deletions.c.purged_rows)
                .where(tenant_deletions.c.tenant_id == tenant_id)
                .with_for_update()  # one purger of a tenant at a time counts
            )
        ).first()
        if record is None or record.state != DELETING:
            return None
        key = list(table.primary_key.columns)
        chosen = select(*key).where(table.c.tenant_id == tenant_id).limit(batch_size)
        target = key[0] if len(key) == 1 else tuple_(*key)
        count = (await conn.execute(delete(table).where(target.in_(chosen)))).rowcount
        if count:
            purged = dict(record.purged_rows)
            purged[table.name] = purged.get(table.name, 0) + count
            await conn.execute(
                update(tenant_deletions)
                .where(tenant_deletions.c.tenant_id == tenant_id)
                .values(purged_rows=purged, update_time=clock())
            )
    return count


async def _finish(engine: AsyncEngine, tenant_id: str, clock: Clock) -> None:
    now = clock()
    async with write_transaction(engine) as conn:
        await conn.execute(
            update(tenant_deletions)
            .where(tenant_deletions.c.tenant_id == tenant_id, tenant_deletions.c.state == DELETING)
            .values(state=PURGED, update_time=now, finish_time=now)
        )
    log.info("a deleted tenant's data is purged", extra={"tenant_id": tenant_id})


def tenant_purge_handler(
    engine: AsyncEngine, *, batch_size: int = DEFAULT_BATCH_SIZE, clock: Clock = utcnow
) -> jobs.JobHandler:
    """The handler of ``tenant.purge`` jobs, for a :class:`~service_kit.jobs.JobWorker`."""

    async def purge(job: jobs.Job) -> None:
        tenant_id = job.payload.get("tenant_id")
        if not isinstance(tenant_id, str):
            raise ValueError(f"a {TENANT_PURGE_JOB} job needs a tenant_id in its payload")
        await purge_tenant(engine, tenant_id, batch_size=batch_size, clock=clock, job=job)

    return purge
