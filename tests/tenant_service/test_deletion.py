"""Deleting a tenant: everything stops at once, then every row it owns is purged.

On SQLite and PostgreSQL. The purge tests fill *every* tenant-owned table of the schema
with rows of two tenants (a generic row maker, so a table added later is covered without
a change here), delete one tenant and check that all its rows, and none of the other's,
are gone, with exact counts in the deletion record.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from sqlalchemy import JSON, Boolean, Column, DateTime, Integer, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway_bridge.gateway import server as gateway_server
from service_kit.auth import TENANT_CHANGED_TOPIC, Authenticator, Credentials, TenantId
from service_kit.bus import InProcessEventBus
from service_kit.db import create_engine, write_transaction
from service_kit.job_worker import JobWorker
from service_kit.jobs import Job, JobInterrupted
from service_kit.purge import TENANT_PURGE_JOB, purge_tenant, purged_tables, tenant_purge_handler
from service_kit.schema import jobs as jobs_table
from service_kit.schema import metadata, tenant_deletions
from service_kit.server import KeelServer, open_runtime
from tenant_service import server as tenant_server
from tenant_service.errors import DeletionNotFound, InvalidCredentials, TenantNotFound
from tenant_service.store import SqlTenantStore
from tenant_service.tenants import DeletionState, Tenant, TenantDeletion, TenantDirectory
from tests.conftest import ADMIN_TOKEN, settings_for, unique

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
#: Rows the tests put in each tenant-owned table, per tenant.
ROWS = 3
#: What the purge must empty, as the schema says it (not as the purge does): every table
#: with a tenant_id except the record of the deletion itself; parents before children.
TENANT_TABLES = [
    table
    for table in metadata.sorted_tables
    if "tenant_id" in table.c and table.name != "tenant_deletions"
]
#: How long any wait in these tests may take before the test fails.
WAIT = 20.0


def rows_per_tenant(table: Table) -> int:
    """``ROWS``, or 1 in a table keyed by the tenant alone (``file_usage``: one per tenant)."""
    return 1 if [c.name for c in table.primary_key.columns] == ["tenant_id"] else ROWS


async def new_tenant(directory: TenantDirectory, **fields: Any) -> tuple[Tenant, str]:
    values: dict[str, Any] = {"id": TenantId(""), "name": unique("del"), "client_id": ""}
    return await directory.create(Tenant(**(values | fields)))


async def listed_ids(directory: TenantDirectory) -> set[str]:
    found: set[str] = set()
    after = None
    while page := await directory.list(limit=500, after=after):
        found |= {t.id for t in page}
        after = (page[-1].create_time, page[-1].id)
    return found


# --- a row in every tenant-owned table ---------------------------------------------------


def _value(column: Column[Any], tenant_id: str, index: int, parents: dict[str, Any]) -> Any:
    """A valid, unique value for ``column`` of the ``index``-th row of ``tenant_id``."""
    if column.name == "tenant_id":
        return tenant_id
    for key in column.foreign_keys:
        return parents[key.column.table.name][key.column.name]
    kind = column.type
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, Integer):
        return index + 1
    if isinstance(kind, DateTime):
        return datetime.now(UTC)
    if isinstance(kind, JSON):
        return {}
    if isinstance(kind, String) and kind.length is not None:
        return uuid.uuid4().hex[: kind.length]
    return f"text-{uuid.uuid4().hex}"


async def fill_every_table(engine: AsyncEngine, tenant_id: str) -> None:
    """``ROWS`` rows of ``tenant_id`` in every table the purge must empty."""
    await fill(engine, tenant_id, TENANT_TABLES)


async def fill(engine: AsyncEngine, tenant_id: str, tables: list[Table]) -> None:
    """``rows_per_tenant`` rows of ``tenant_id`` in each of ``tables`` (parents first)."""
    parents: dict[str, Any] = {}
    async with write_transaction(engine) as conn:
        for table in tables:
            rows = []
            for index in range(rows_per_tenant(table)):
                row = {
                    column.key: _value(column, tenant_id, index, parents)
                    for column in table.columns
                    if column is not table.autoincrement_column
                }
                rows.append(row)
            await conn.execute(insert(table), rows)
            parents[table.name] = {table.c[key].name: value for key, value in rows[0].items()}


async def rows_of(engine: AsyncEngine, tenant_id: str) -> dict[str, int]:
    """How many rows ``tenant_id`` has in each table the purge must empty."""
    counts = {}
    async with engine.connect() as conn:
        for table in TENANT_TABLES:
            query = select(func.count()).select_from(table).where(table.c.tenant_id == tenant_id)
            counts[table.name] = int((await conn.execute(query)).scalar_one())
    return counts


def everywhere(count: int) -> dict[str, int]:
    """``count`` rows in every table, or as many as a table holds per tenant if fewer."""
    return {table.name: min(count, rows_per_tenant(table)) for table in TENANT_TABLES}


async def assert_purged(
    directory: TenantDirectory, tenant_id: str, purged_rows: dict[str, int]
) -> TenantDeletion:
    """Check the deletion is done, having purged exactly ``purged_rows``; return it."""
    done = await directory.deletion(tenant_id)
    assert done.state is DeletionState.PURGED
    assert dict(done.purged_rows) == purged_rows
    return done


# --- the schema and the purge agree -------------------------------------------------------


def test_the_purge_covers_every_table_with_a_tenant_id_but_the_deletion_record() -> None:
    with_tenant = {t.name for t in metadata.sorted_tables if "tenant_id" in t.c}
    assert {t.name for t in purged_tables()} == with_tenant - {"tenant_deletions"}
    assert {t.name for t in TENANT_TABLES} == with_tenant - {"tenant_deletions"}
    # Children before parents: no ON DELETE CASCADE removes rows behind a batch's back.
    order = [t.name for t in purged_tables()]
    for table in purged_tables():
        for key in table.foreign_keys:
            assert order.index(table.name) < order.index(key.column.table.name), table.name


def _leads_with_tenant_id(table: Table) -> bool:
    keys = [list(index.columns) for index in table.indexes]
    keys.append(list(table.primary_key.columns))
    keys += [list(c.columns) for c in table.constraints if hasattr(c, "columns")]
    return any(columns and columns[0].name == "tenant_id" for columns in keys)


def test_every_purged_table_has_an_index_that_starts_with_tenant_id() -> None:
    """Each batch finds the tenant's rows through an index, never by scanning the table."""
    assert [t.name for t in purged_tables() if not _leads_with_tenant_id(t)] == []


# --- deleting stops everything at once ----------------------------------------------------


async def test_after_delete_credentials_lookups_and_listings_fail_at_once(
    directory: TenantDirectory, bus: InProcessEventBus
) -> None:
    tenant, secret = await new_tenant(directory)
    await directory.validate(Credentials(tenant.client_id, secret))
    announced: list[bytes] = []
    subscription = await bus.subscribe(TENANT_CHANGED_TOPIC, announced.append)
    try:
        deletion = await directory.delete(tenant.id)
    finally:
        await subscription.close()

    assert (deletion.tenant_id, deletion.name, deletion.state) == (
        tenant.id,
        tenant.name,
        DeletionState.DELETING,
    )
    assert deletion.finish_time is None and dict(deletion.purged_rows) == {}
    assert announced == [tenant.id.encode()]
    with pytest.raises(InvalidCredentials):
        await directory.validate(Credentials(tenant.client_id, secret))
    with pytest.raises(TenantNotFound):
        await directory.get(tenant.id)
    with pytest.raises(TenantNotFound):
        await directory.lookup(tenant.id)
    assert tenant.id not in await listed_ids(directory)
    with pytest.raises(TenantNotFound):
        await directory.delete(tenant.id)  # once is enough: the second finds no tenant


async def test_a_deleted_tenants_name_and_client_id_are_free_at_once(
    directory: TenantDirectory,
) -> None:
    old, _ = await new_tenant(directory, client_id=unique("reuse"))
    await directory.delete(old.id)
    new, secret = await new_tenant(directory, name=old.name, client_id=old.client_id)
    assert new.id != old.id
    assert (await directory.validate(Credentials(new.client_id, secret))).tenant_id == new.id
    assert (await directory.deletion(old.id)).name == old.name


async def test_only_deleted_tenants_have_a_deletion(directory: TenantDirectory) -> None:
    live, _ = await new_tenant(directory)
    for tenant_id in (live.id, str(uuid.uuid4())):
        with pytest.raises(DeletionNotFound):
            await directory.deletion(tenant_id)


async def test_deleting_enqueues_one_purge_job_in_the_same_transaction(
    engine: AsyncEngine, directory: TenantDirectory
) -> None:
    tenant, _ = await new_tenant(directory)
    await directory.delete(tenant.id)
    async with engine.connect() as conn:
        query = select(jobs_table).where(
            jobs_table.c.unique_key == f"{TENANT_PURGE_JOB}:{tenant.id}"
        )
        (job,) = (await conn.execute(query)).all()
    assert (job.kind, job.payload, job.tenant_id) == (
        TENANT_PURGE_JOB,
        {"tenant_id": tenant.id},
        None,  # installation-wide: the purge removes the tenant's own jobs, not itself
    )
    assert job.state == "queued" and job.max_attempts is None


# --- the purge ----------------------------------------------------------------------------


async def test_the_purge_removes_every_row_of_the_tenant_and_none_of_another(
    engine: AsyncEngine, directory: TenantDirectory
) -> None:
    gone, _ = await new_tenant(directory)
    kept, kept_secret = await new_tenant(directory)
    for tenant in (gone, kept):
        await fill_every_table(engine, tenant.id)
    assert await rows_of(engine, gone.id) == everywhere(ROWS)

    await directory.delete(gone.id)
    await purge_tenant(engine, gone.id, batch_size=2)

    assert await rows_of(engine, gone.id) == everywhere(0)
    assert await rows_of(engine, kept.id) == everywhere(ROWS)
    deletion = await assert_purged(directory, gone.id, everywhere(ROWS))
    assert deletion.finish_time is not None and deletion.finish_time >= deletion.start_time
    assert (await directory.validate(Credentials(kept.client_id, kept_secret))).tenant_id == kept.id


async def test_a_purge_run_again_after_it_finished_changes_nothing(
    engine: AsyncEngine, directory: TenantDirectory
) -> None:
    tenant, _ = await new_tenant(directory)
    await fill_every_table(engine, tenant.id)
    await directory.delete(tenant.id)
    await purge_tenant(engine, tenant.id)
    finished = await directory.deletion(tenant.id)
    await purge_tenant(engine, tenant.id)
    assert await directory.deletion(tenant.id) == finished


def stop_after(checkpoints: int) -> Callable[[], Awaitable[None]]:
    """A checkpoint that lets ``checkpoints`` batches through, then interrupts."""
    passed = 0

    async def check() -> None:
        nonlocal passed
        passed += 1
        if passed > checkpoints:
            raise JobInterrupted("stopped by the test")

    return check


async def test_an_interrupted_purge_resumes_where_it_was_and_counts_exactly(
    engine: AsyncEngine, directory: TenantDirectory
) -> None:
    tenant, _ = await new_tenant(directory)
    await fill_every_table(engine, tenant.id)
    await directory.delete(tenant.id)
    job = Job("j", TENANT_PURGE_JOB, {"tenant_id": tenant.id})

    # Batches of one row: the first table's three rows, then the stop.
    with pytest.raises(JobInterrupted):
        await purge_tenant(
            engine, tenant.id, batch_size=1, job=replace(job, interrupt_check=stop_after(3))
        )
    halfway = await directory.deletion(tenant.id)
    assert halfway.state is DeletionState.DELETING
    assert dict(halfway.purged_rows) == {purged_tables()[0].name: 3}
    assert sum((await rows_of(engine, tenant.id)).values()) == sum(everywhere(ROWS).values()) - 3

    # A second run stopped after a few more batches, then one that finishes.
    with pytest.raises(JobInterrupted):
        await purge_tenant(
            engine, tenant.id, batch_size=2, job=replace(job, interrupt_check=stop_after(5))
        )
    await purge_tenant(engine, tenant.id, batch_size=2, job=job)

    assert await rows_of(engine, tenant.id) == everywhere(0)
    await assert_purged(directory, tenant.id, everywhere(ROWS))


async def test_two_purges_of_one_tenant_at_once_count_every_row_once(
    engine: AsyncEngine, directory: TenantDirectory
) -> None:
    """A purge whose lease expired while it still ran meets the purge that took over."""
    other = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        tenant, _ = await new_tenant(directory)
        await fill_every_table(engine, tenant.id)
        await directory.delete(tenant.id)
        async with asyncio.timeout(WAIT):
            await asyncio.gather(
                purge_tenant(engine, tenant.id, batch_size=1),
                purge_tenant(other, tenant.id, batch_size=1),
            )
    finally:
        await other.dispose()
    await assert_purged(directory, tenant.id, everywhere(ROWS))


async def test_rows_written_during_the_purge_are_caught_by_its_next_pass(
    engine: AsyncEngine, directory: TenantDirectory
) -> None:
    """A write in flight when the tenant was deleted may land in a table already passed.

    The late rows go to a table without foreign keys either way (a late child of a parent
    not yet passed would go with its parent by ON DELETE CASCADE, uncounted), as soon as
    the purge has moved on to the next table.
    """
    tenant, _ = await new_tenant(directory)
    await fill_every_table(engine, tenant.id)
    await directory.delete(tenant.id)
    tables = purged_tables()
    referenced = {key.column.table.name for table in tables for key in table.foreign_keys}
    late_table, next_table = next(
        (table, tables[i + 1])
        for i, table in enumerate(tables[:-1])
        if not table.foreign_keys and table.name not in referenced and rows_per_tenant(table) > 1
    )
    late: list[str] = []

    async def write_late() -> None:
        counts = await rows_of(engine, tenant.id)
        if not late and counts[late_table.name] == 0 and counts[next_table.name] < ROWS:
            await fill(engine, tenant.id, [late_table])
            late.append("written")

    job = Job("j", TENANT_PURGE_JOB, {"tenant_id": tenant.id}, interrupt_check=write_late)
    await purge_tenant(engine, tenant.id, batch_size=ROWS, job=job)

    assert late
    assert await rows_of(engine, tenant.id) == everywhere(0)
    await assert_purged(directory, tenant.id, everywhere(ROWS) | {late_table.name: 2 * ROWS})


async def test_a_worker_stopped_mid_purge_hands_it_back_and_the_next_worker_finishes(
    engine: AsyncEngine, directory: TenantDirectory
) -> None:
    tenant, _ = await new_tenant(directory)
    await fill_every_table(engine, tenant.id)
    await directory.delete(tenant.id)
    purge = tenant_purge_handler(engine, batch_size=1)
    paused, resume = asyncio.Event(), asyncio.Event()

    async def pausing_purge(job: Job) -> None:
        """The real handler; the purge of this test's tenant pauses at its 4th batch."""
        if job.payload.get("tenant_id") != tenant.id:
            await purge(job)  # another test's deleted tenant: purged as usual
            return
        checkpoints = 0

        async def check() -> None:
            nonlocal checkpoints
            checkpoints += 1
            if checkpoints == 4:
                paused.set()
                await resume.wait()
            await job.interrupt_check()

        await purge(replace(job, interrupt_check=check))

    worker = JobWorker(engine, {TENANT_PURGE_JOB: pausing_purge}, concurrency=1, poll_interval=0.05)
    worker.start()
    try:
        async with asyncio.timeout(WAIT):
            await paused.wait()
    except TimeoutError:
        await worker.stop(0)
        pytest.fail(f"the purge did not reach its 4th batch within {WAIT}s")
    stopping = asyncio.create_task(worker.stop(grace=WAIT))
    await asyncio.sleep(0)  # the worker is stopping now...
    resume.set()  # ...so the purge stops at this checkpoint
    await stopping

    halfway = await directory.deletion(tenant.id)
    assert halfway.state is DeletionState.DELETING
    assert sum(halfway.purged_rows.values()) == 3

    finisher = JobWorker(engine, {TENANT_PURGE_JOB: purge}, poll_interval=0.05)
    finisher.start()
    try:
        async with asyncio.timeout(WAIT):
            while True:
                if (await directory.deletion(tenant.id)).state is DeletionState.PURGED:
                    break
                await asyncio.sleep(0.02)
    finally:
        await finisher.stop(grace=WAIT)
    await assert_purged(directory, tenant.id, everywhere(ROWS))
    assert await rows_of(engine, tenant.id) == everywhere(0)
    async with engine.connect() as conn:
        query = select(jobs_table.c.state, jobs_table.c.attempts).where(
            jobs_table.c.unique_key == f"{TENANT_PURGE_JOB}:{tenant.id}"
        )
        assert tuple((await conn.execute(query)).one()) == ("succeeded", 2)


# --- through the gRPC API -----------------------------------------------------------------


class Keel:
    """A server with the tenant and gateway services, and this process's job worker."""

    def __init__(self, channel: grpc.aio.Channel, worker: JobWorker) -> None:
        self.tenants = tenants_pb2_grpc.TenantServiceStub(channel)
        self.chat = channels_pb2_grpc.ChannelServiceStub(channel)
        self.worker = worker


@pytest.fixture
async def keel(database_url: str, tmp_path: Path) -> AsyncIterator[Keel]:
    runtime = await open_runtime(settings_for(database_url, tmp_path))
    tenants = tenant_server.build(runtime)
    authenticator = Authenticator(tenants.directory, lookup=tenants.directory)
    await authenticator.follow_changes(runtime.bus)
    server = KeelServer(
        runtime, [tenants.spec, *gateway_server.build(runtime)], authenticator=authenticator
    )
    await server.start()
    client = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    # Not started: each test runs the due jobs when it wants the purge to happen.
    worker = JobWorker(runtime.engine, tenants.job_handlers)
    try:
        yield Keel(client, worker)
    finally:
        await worker.stop(0)
        await client.close()
        await server.stop(1)
        await authenticator.close()
        await runtime.close()


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def test_delete_tenant_stops_its_calls_at_once_and_get_tenant_deletion_follows_the_purge(
    keel: Keel,
) -> None:
    created = await keel.tenants.CreateTenant(
        tenants_pb2.CreateTenantRequest(
            tenant=tenants_pb2.Tenant(name=unique("rpc"), permissions=["chat:*"])
        ),
        metadata=ADMIN,
    )
    tenant = created.tenant
    creds = (("x-client-id", tenant.client_id), ("x-client-secret", created.client_secret))
    channel = await keel.chat.CreateChannel(
        channels_pb2.CreateChannelRequest(name="general"), metadata=creds
    )
    for text in ("one", "two"):
        await keel.chat.SendMessage(
            channels_pb2.SendMessageRequest(channel_id=channel.channel.id, content=text),
            metadata=creds,
        )

    deleted = await keel.tenants.DeleteTenant(
        tenants_pb2.DeleteTenantRequest(id=tenant.id), metadata=ADMIN
    )
    assert deleted.deletion.tenant_id == tenant.id
    assert deleted.deletion.state == tenants_pb2.TENANT_DELETION_STATE_DELETING
    assert not deleted.deletion.HasField("finish_time")

    # At once, although the credentials were cached by the calls above.
    listing = channels_pb2.ListChannelsRequest()
    assert await code_of(keel.chat.ListChannels(listing, metadata=creds)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    check = tenants_pb2.ValidateCredentialsRequest(
        client_id=tenant.client_id, client_secret=created.client_secret
    )
    assert await code_of(keel.tenants.ValidateCredentials(check)) == grpc.StatusCode.UNAUTHENTICATED
    get = tenants_pb2.GetTenantRequest(id=tenant.id)
    assert await code_of(keel.tenants.GetTenant(get, metadata=ADMIN)) == grpc.StatusCode.NOT_FOUND
    delete = tenants_pb2.DeleteTenantRequest(id=tenant.id)
    assert await code_of(keel.tenants.DeleteTenant(delete, metadata=ADMIN)) == (
        grpc.StatusCode.NOT_FOUND
    )

    ask = tenants_pb2.GetTenantDeletionRequest(tenant_id=tenant.id)
    before = (await keel.tenants.GetTenantDeletion(ask, metadata=ADMIN)).deletion
    assert before.state == tenants_pb2.TENANT_DELETION_STATE_DELETING
    assert dict(before.purged_rows) == {}

    async with asyncio.timeout(WAIT):
        while (await keel.tenants.GetTenantDeletion(ask, metadata=ADMIN)).deletion.state != (
            tenants_pb2.TENANT_DELETION_STATE_PURGED
        ):
            await keel.worker.run_due()
    after = (await keel.tenants.GetTenantDeletion(ask, metadata=ADMIN)).deletion
    assert after.name == tenant.name
    assert after.HasField("finish_time") and after.HasField("start_time")
    purged = dict(after.purged_rows)
    assert purged["channels"] == 1 and purged["messages"] == 2
    assert purged["events"] >= 3  # channel created, two messages


async def test_get_tenant_deletion_answers_not_found_and_invalid_argument(keel: Keel) -> None:
    created = await keel.tenants.CreateTenant(
        tenants_pb2.CreateTenantRequest(tenant=tenants_pb2.Tenant(name=unique("rpc"))),
        metadata=ADMIN,
    )
    for tenant_id, code in (
        (created.tenant.id, grpc.StatusCode.NOT_FOUND),  # alive
        (str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
        ("not-an-id", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        ask = tenants_pb2.GetTenantDeletionRequest(tenant_id=tenant_id)
        assert await code_of(keel.tenants.GetTenantDeletion(ask, metadata=ADMIN)) == code
    ask = tenants_pb2.GetTenantDeletionRequest(tenant_id=created.tenant.id)
    assert await code_of(keel.tenants.GetTenantDeletion(ask)) == grpc.StatusCode.UNAUTHENTICATED


async def test_the_deletion_record_is_what_the_table_holds(engine: AsyncEngine) -> None:
    """The store reads back each column of the record (times in UTC, counts as ints)."""
    store = SqlTenantStore(engine)
    tenant_id = str(uuid.uuid4())
    start = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    async with write_transaction(engine) as conn:
        await conn.execute(
            insert(tenant_deletions).values(
                tenant_id=tenant_id,
                name="old",
                state="purged",
                purged_rows={"messages": 12, "channels": 1},
                start_time=start,
                update_time=start,
                finish_time=start,
            )
        )
    found = await store.get_deletion(tenant_id)
    assert found is not None
    assert (found.state, dict(found.purged_rows), found.start_time, found.finish_time) == (
        DeletionState.PURGED,
        {"messages": 12, "channels": 1},
        start,
        start,
    )
