"""The SQL file store on SQLite and PostgreSQL: every promise of the ``FileStore`` role.

Each test works in tenants of its own (random ids), so tests share the session's database;
the sweeps that work across tenants (expiry, purge) are run until they have nothing left,
as a sweeper does, and the test looks for its own files in what they returned.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from file_service.errors import (
    FileNotFound,
    FileNotReady,
    InvalidFile,
    OffsetMismatch,
    QuotaExceeded,
    UploadExpired,
)
from file_service.models import (
    FileLimits,
    FileState,
    NewFile,
    StoredFile,
    Thumbnail,
    UploadPart,
    Usage,
)
from file_service.store import FileStore, SqlFileStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
LIMITS = FileLimits(max_tenant_bytes=1_000_000, max_tenant_files=1_000)


@pytest.fixture
def store(engine: AsyncEngine) -> FileStore:
    return SqlFileStore(engine)


def new_id() -> str:
    return str(uuid.uuid4())


def new_file(
    tenant_id: str,
    *,
    size: int = 0,
    user_id: str = "alice",
    create_time: datetime = T0,
    expire_time: datetime | None = None,
    **changes: Any,
) -> NewFile:
    file_id = new_id()
    return NewFile(
        id=file_id,
        tenant_id=tenant_id,
        filename="photo.png",
        content_type="image/png",
        size=size,
        user_id=user_id,
        metadata={"album": "holidays"},
        blob_key=f"{tenant_id}/{file_id}",
        create_time=create_time,
        expire_time=expire_time or create_time + HOUR,
        **changes,
    )


def part(file: NewFile | StoredFile, offset: int, size: int) -> UploadPart:
    return UploadPart(file.id, offset, size, f"{file.blob_key}.part-{offset}")


async def mark_ready(
    store: FileStore,
    tenant_id: str,
    file_id: str,
    size: int,
    *,
    limits: FileLimits = LIMITS,
    now: datetime = T0,
    **checked: Any,
) -> StoredFile:
    """``store.mark_ready`` with a PNG's checked values unless ``checked`` says otherwise."""
    values: dict[str, Any] = {"sha256": "ab" * 32, "content_type": "image/png", "thumbnail": None}
    return await store.mark_ready(
        tenant_id, file_id, size=size, limits=limits, now=now, **(values | checked)
    )


async def ready_file(store: FileStore, tenant_id: str, size: int, **changes: Any) -> StoredFile:
    file = await store.create_pending(new_file(tenant_id, size=size, **changes), LIMITS)
    return await mark_ready(store, tenant_id, file.id, size, now=file.create_time)


# -- creating, reading, quotas ---------------------------------------------------------------


async def test_a_created_file_is_pending_and_reserves_its_declared_size(store: FileStore) -> None:
    tenant = new_id()
    file = new_file(tenant, size=1234, declared_sha256="cd" * 32)

    created = await store.create_pending(file, LIMITS)

    assert created.state is FileState.PENDING
    assert await store.get(tenant, file.id) == created
    assert (created.size, created.upload_offset, created.sha256) == (1234, 0, "")
    assert created.metadata == {"album": "holidays"}
    assert created.expire_time == T0 + HOUR
    assert await store.declared_sha256(tenant, file.id) == "cd" * 32
    assert await store.usage(tenant) == Usage(bytes=1234, files=1)


async def test_another_tenants_file_is_absent(store: FileStore) -> None:
    owner, other = new_id(), new_id()
    file = await store.create_pending(new_file(owner, size=10), LIMITS)

    assert await store.get(other, file.id) is None
    assert await store.list(other, user_id=None, after=None, limit=10) == []
    assert await store.parts(other, file.id) == []
    with pytest.raises(FileNotFound):
        await store.declared_sha256(other, file.id)
    with pytest.raises(FileNotFound):
        await store.add_part(part(file, 0, 5), other, now=T0)
    with pytest.raises(FileNotFound):
        await mark_ready(store, other, file.id, 10)
    with pytest.raises(FileNotFound):
        await store.delete(other, file.id, now=T0)
    await store.mark_purged(other, [file.id], now=T0)
    assert await store.get(owner, file.id) == file
    assert await store.usage(other) == Usage()


async def test_a_tenant_without_files_uses_nothing(store: FileStore) -> None:
    assert await store.usage(new_id()) == Usage(bytes=0, files=0)


@pytest.mark.parametrize(
    ("limits", "size", "reason"),
    [
        (FileLimits(max_tenant_bytes=100, max_tenant_files=10), 61, "bytes"),
        (FileLimits(max_tenant_bytes=10_000, max_tenant_files=1), 1, "files"),
    ],
)
async def test_a_file_over_quota_is_refused_and_nothing_is_stored(
    store: FileStore, limits: FileLimits, size: int, reason: str
) -> None:
    tenant = new_id()
    await store.create_pending(new_file(tenant, size=40), limits)
    refused = new_file(tenant, size=size)

    with pytest.raises(QuotaExceeded) as caught:
        await store.create_pending(refused, limits)

    assert reason in str(caught.value)
    assert await store.get(tenant, refused.id) is None
    assert await store.usage(tenant) == Usage(bytes=40, files=1)


async def test_concurrent_creations_never_pass_the_quota_together(store: FileStore) -> None:
    tenant = new_id()
    limits = FileLimits(max_tenant_bytes=1000, max_tenant_files=7)
    # 20 files of 100 bytes: the byte limit lets 10 in, the file limit only 7.
    outcomes = await asyncio.gather(
        *(store.create_pending(new_file(tenant, size=100), limits) for _ in range(20)),
        return_exceptions=True,
    )

    created = [o for o in outcomes if isinstance(o, StoredFile)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert (len(created), len(refused)) == (7, 13), outcomes
    assert await store.usage(tenant) == Usage(bytes=700, files=7)
    listed = await store.list(tenant, user_id=None, after=None, limit=100)
    assert {f.id for f in listed} == {f.id for f in created}


async def test_concurrent_creations_never_pass_the_byte_quota_together(store: FileStore) -> None:
    tenant = new_id()
    limits = FileLimits(max_tenant_bytes=1000, max_tenant_files=100)

    outcomes = await asyncio.gather(
        *(store.create_pending(new_file(tenant, size=300), limits) for _ in range(20)),
        return_exceptions=True,
    )

    assert sum(isinstance(o, StoredFile) for o in outcomes) == 3, outcomes
    assert sum(isinstance(o, QuotaExceeded) for o in outcomes) == 17, outcomes
    assert await store.usage(tenant) == Usage(bytes=900, files=3)


# -- uploading parts -------------------------------------------------------------------------


async def test_parts_advance_the_offset_and_are_listed_in_order(store: FileStore) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant, size=10), LIMITS)

    assert await store.add_part(part(file, 0, 4), tenant, now=T0) == 4
    assert await store.add_part(part(file, 4, 6), tenant, now=T0) == 10

    assert await store.parts(tenant, file.id) == [part(file, 0, 4), part(file, 4, 6)]
    stored = await store.get(tenant, file.id)
    assert stored is not None and stored.upload_offset == 10


async def test_parts_past_4_gib_keep_their_64_bit_offsets(store: FileStore) -> None:
    tenant = new_id()
    size = 6 << 30
    limits = FileLimits(max_tenant_bytes=8 << 30, max_tenant_files=10, max_file_bytes=size)
    file = await store.create_pending(new_file(tenant, size=size), limits)

    assert await store.add_part(part(file, 0, 5 << 30), tenant, now=T0) == 5 << 30
    assert await store.add_part(part(file, 5 << 30, 1 << 30), tenant, now=T0) == size

    assert await store.parts(tenant, file.id) == [
        part(file, 0, 5 << 30),
        part(file, 5 << 30, 1 << 30),
    ]


async def test_a_part_at_another_offset_is_refused_with_the_current_one(store: FileStore) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant, size=10), LIMITS)
    await store.add_part(part(file, 0, 4), tenant, now=T0)

    for offset in (0, 5):
        with pytest.raises(OffsetMismatch) as caught:
            await store.add_part(part(file, offset, 1), tenant, now=T0)
        assert caught.value.expected == 4

    assert await store.parts(tenant, file.id) == [part(file, 0, 4)]


async def test_of_two_parts_at_the_same_offset_exactly_one_is_recorded(store: FileStore) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant), LIMITS)
    first, second = part(file, 0, 3), UploadPart(file.id, 0, 5, f"{file.blob_key}.other")

    outcomes = await asyncio.gather(
        store.add_part(first, tenant, now=T0),
        store.add_part(second, tenant, now=T0),
        return_exceptions=True,
    )

    mismatches = [o for o in outcomes if isinstance(o, OffsetMismatch)]
    offsets = [o for o in outcomes if isinstance(o, int)]
    assert len(mismatches) == 1 and len(offsets) == 1, outcomes
    [recorded] = await store.parts(tenant, file.id)
    assert recorded in (first, second)
    assert offsets == [recorded.size] and mismatches[0].expected == recorded.size
    stored = await store.get(tenant, file.id)
    assert stored is not None and stored.upload_offset == recorded.size


async def test_a_part_after_the_upload_expired_is_refused(store: FileStore) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant, expire_time=T0 + HOUR), LIMITS)

    with pytest.raises(UploadExpired):
        await store.add_part(part(file, 0, 4), tenant, now=T0 + HOUR)

    assert await store.parts(tenant, file.id) == []
    stored = await store.get(tenant, file.id)
    assert stored is not None and stored.upload_offset == 0


async def test_a_part_past_the_declared_size_is_refused(store: FileStore) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant, size=10), LIMITS)
    await store.add_part(part(file, 0, 8), tenant, now=T0)

    with pytest.raises(InvalidFile):
        await store.add_part(part(file, 8, 3), tenant, now=T0)

    assert await store.parts(tenant, file.id) == [part(file, 0, 8)]
    assert await store.add_part(part(file, 8, 2), tenant, now=T0) == 10


async def test_an_upload_without_a_declared_size_takes_parts_of_any_size(
    store: FileStore,
) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant, size=0), LIMITS)

    assert await store.add_part(part(file, 0, 5000), tenant, now=T0) == 5000


async def test_an_empty_part_is_refused(store: FileStore) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant, size=10), LIMITS)

    with pytest.raises(InvalidFile):
        await store.add_part(part(file, 0, 0), tenant, now=T0)

    assert await store.parts(tenant, file.id) == []


async def test_a_part_of_a_ready_or_deleted_file_is_refused(store: FileStore) -> None:
    tenant = new_id()
    ready = await ready_file(store, tenant, 10)
    deleted = await store.create_pending(new_file(tenant, size=10), LIMITS)
    await store.delete(tenant, deleted.id, now=T0)

    for file in (ready, deleted):
        with pytest.raises(FileNotReady):
            await store.add_part(part(file, 0, 1), tenant, now=T0)
        assert await store.parts(tenant, file.id) == []


# -- becoming ready --------------------------------------------------------------------------


async def test_a_ready_file_holds_its_real_size_hash_and_type(store: FileStore) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant, size=0), LIMITS)
    await store.add_part(part(file, 0, 300), tenant, now=T0)
    thumbnail = Thumbnail(f"{file.blob_key}.thumb", "image/webp", 256, 128, 2048)
    assert await store.usage(tenant) == Usage(bytes=0, files=1)

    ready = await mark_ready(
        store,
        tenant,
        file.id,
        300,
        now=T0 + timedelta(minutes=5),
        sha256="ef" * 32,
        content_type="image/jpeg",
        thumbnail=thumbnail,
    )

    assert ready.state is FileState.READY
    assert (ready.size, ready.sha256, ready.content_type) == (300, "ef" * 32, "image/jpeg")
    assert ready.thumbnail == thumbnail
    assert ready.ready_time == T0 + timedelta(minutes=5) and ready.expire_time is None
    assert await store.get(tenant, file.id) == ready
    assert await store.parts(tenant, file.id) == []
    assert await store.usage(tenant) == Usage(bytes=300, files=1)


async def test_becoming_ready_moves_usage_from_the_declared_to_the_real_size(
    store: FileStore,
) -> None:
    tenant = new_id()
    await ready_file(store, tenant, 500)
    file = await store.create_pending(new_file(tenant, size=400), LIMITS)
    assert await store.usage(tenant) == Usage(bytes=900, files=2)

    await mark_ready(store, tenant, file.id, 250)

    assert await store.usage(tenant) == Usage(bytes=750, files=2)


async def test_a_file_whose_real_size_passes_the_quota_stays_pending(store: FileStore) -> None:
    tenant = new_id()
    limits = FileLimits(max_tenant_bytes=100, max_tenant_files=10)
    file = await store.create_pending(new_file(tenant, size=0), limits)
    await store.add_part(part(file, 0, 101), tenant, now=T0)

    with pytest.raises(QuotaExceeded):
        await mark_ready(store, tenant, file.id, 101, limits=limits, sha256="")

    stored = await store.get(tenant, file.id)
    assert stored is not None and stored.state is FileState.PENDING
    assert await store.parts(tenant, file.id) == [part(file, 0, 101)]
    assert await store.usage(tenant) == Usage(bytes=0, files=1)


async def test_only_a_pending_file_becomes_ready(store: FileStore) -> None:
    tenant = new_id()
    pending = await store.create_pending(new_file(tenant, size=10), LIMITS)
    deleted = await store.delete(tenant, pending.id, now=T0)
    ready = await ready_file(store, tenant, 10)

    for file in (deleted, ready):
        with pytest.raises(FileNotReady):
            await mark_ready(store, tenant, file.id, 10)
        assert await store.get(tenant, file.id) == file


# -- deleting ---------------------------------------------------------------------------------


async def test_deleting_releases_usage_once(store: FileStore) -> None:
    tenant = new_id()
    ready = await ready_file(store, tenant, 300)
    pending = await store.create_pending(new_file(tenant, size=200), LIMITS)

    deleted = await store.delete(tenant, ready.id, now=T0 + HOUR)
    again = await store.delete(tenant, ready.id, now=T0 + 2 * HOUR)
    await store.delete(tenant, pending.id, now=T0 + HOUR)

    assert deleted.state is FileState.DELETED and deleted.delete_time == T0 + HOUR
    assert again == deleted
    assert await store.get(tenant, ready.id) == deleted
    assert await store.usage(tenant) == Usage(bytes=0, files=0)


async def test_concurrent_deletions_of_a_file_release_its_usage_once(store: FileStore) -> None:
    tenant = new_id()
    await ready_file(store, tenant, 100)
    file = await ready_file(store, tenant, 300)

    results = await asyncio.gather(*(store.delete(tenant, file.id, now=T0) for _ in range(5)))

    assert {r.state for r in results} == {FileState.DELETED}
    assert await store.usage(tenant) == Usage(bytes=100, files=1)


async def test_deleting_a_missing_file_is_not_found(store: FileStore) -> None:
    with pytest.raises(FileNotFound):
        await store.delete(new_id(), new_id(), now=T0)


# -- listing ---------------------------------------------------------------------------------


async def test_listing_is_newest_first_in_pages_without_deleted_files(store: FileStore) -> None:
    tenant = new_id()
    made: list[StoredFile] = []
    for minute in range(5):
        at = T0 + timedelta(minutes=minute)
        made.append(await store.create_pending(new_file(tenant, create_time=at), LIMITS))
    # Two files created at the same moment are ordered by id, descending.
    twins = [await store.create_pending(new_file(tenant, create_time=T0), LIMITS) for _ in "ab"]
    await store.delete(tenant, made[2].id, now=T0)
    newest_first = [
        *reversed(made[3:]),
        made[1],
        *sorted(twins + made[:1], key=lambda f: f.id)[::-1],
    ]

    pages: list[list[StoredFile]] = []
    after = None
    while page := await store.list(tenant, user_id=None, after=after, limit=2):
        pages.append(page)
        after = (page[-1].create_time, page[-1].id)

    assert [len(p) for p in pages] == [2, 2, 2]
    assert [f.id for p in pages for f in p] == [f.id for f in newest_first]


async def test_listing_for_a_user_shows_only_their_files(store: FileStore) -> None:
    tenant = new_id()
    mine = await store.create_pending(new_file(tenant, user_id="bob"), LIMITS)
    theirs = await store.create_pending(new_file(tenant, user_id="carol"), LIMITS)

    listed = await store.list(tenant, user_id="bob", after=None, limit=10)
    everyone = await store.list(tenant, user_id=None, after=None, limit=10)

    assert [f.id for f in listed] == [mine.id]
    assert {f.id for f in everyone} == {mine.id, theirs.id}


# -- expiry and purge ------------------------------------------------------------------------


async def expire_all(store: FileStore, now: datetime) -> list[StoredFile]:
    """What a sweeper does: expire uploads in batches until none is left."""
    expired: list[StoredFile] = []
    while batch := await store.expire_uploads(now, limit=3):
        expired += batch
    return expired


async def purge_all(store: FileStore, now: datetime) -> list[tuple[StoredFile, list[UploadPart]]]:
    """What a purger does: take deleted files in batches and record their blobs gone."""
    purged: list[tuple[StoredFile, list[UploadPart]]] = []
    while batch := await store.unpurged(limit=3):
        purged += batch
        for file, _ in batch:
            await store.mark_purged(file.tenant_id, [file.id], now=now)
    return purged


async def test_expired_uploads_are_deleted_then_purged_with_their_parts(
    store: FileStore,
) -> None:
    tenant = new_id()
    kept = await ready_file(store, tenant, 50)
    live = await store.create_pending(new_file(tenant, size=10, expire_time=T0 + 3 * HOUR), LIMITS)
    stale = await store.create_pending(new_file(tenant, size=10, expire_time=T0 + HOUR), LIMITS)
    await store.add_part(part(stale, 0, 4), tenant, now=T0)
    assert await store.usage(tenant) == Usage(bytes=70, files=3)

    expired = await expire_all(store, T0 + 2 * HOUR)

    [mine] = [f for f in expired if f.tenant_id == tenant]
    assert mine.id == stale.id and mine.state is FileState.DELETED
    assert mine.delete_time == T0 + 2 * HOUR
    assert await store.get(tenant, stale.id) == mine
    assert await store.usage(tenant) == Usage(bytes=60, files=2)
    for file in (kept, live):
        stored = await store.get(tenant, file.id)
        assert stored is not None and stored.state is not FileState.DELETED

    purged = await purge_all(store, T0 + 2 * HOUR)

    assert [(f.id, parts) for f, parts in purged if f.tenant_id == tenant] == [
        (stale.id, [part(stale, 0, 4)])
    ]
    gone = await store.get(tenant, stale.id)
    assert gone is not None and gone.purge_time == T0 + 2 * HOUR
    assert await store.parts(tenant, stale.id) == []
    assert await store.unpurged(limit=100) == []


async def test_deleted_files_are_purged_oldest_deletion_first(store: FileStore) -> None:
    tenant = new_id()
    files = [await ready_file(store, tenant, 10) for _ in range(4)]
    for hours, file in zip((3, 1, 4, 2), files, strict=True):
        await store.delete(tenant, file.id, now=T0 + hours * HOUR)

    purged = await purge_all(store, T0 + 5 * HOUR)

    mine = [f.id for f, _ in purged if f.tenant_id == tenant]
    assert mine == [files[1].id, files[3].id, files[0].id, files[2].id]


async def test_only_deleted_files_are_marked_purged(store: FileStore) -> None:
    tenant = new_id()
    pending = await store.create_pending(new_file(tenant, size=10), LIMITS)
    await store.add_part(part(pending, 0, 4), tenant, now=T0)

    await store.mark_purged(tenant, [pending.id], now=T0)
    await store.mark_purged(tenant, [], now=T0)

    stored = await store.get(tenant, pending.id)
    assert stored is not None and stored.purge_time is None
    assert await store.parts(tenant, pending.id) == [part(pending, 0, 4)]


async def test_purging_twice_is_harmless(store: FileStore) -> None:
    tenant = new_id()
    file = await ready_file(store, tenant, 10)
    await store.delete(tenant, file.id, now=T0)

    await store.mark_purged(tenant, [file.id], now=T0 + HOUR)
    await store.mark_purged(tenant, [file.id], now=T0 + 2 * HOUR)

    stored = await store.get(tenant, file.id)
    assert stored is not None and stored.purge_time == T0 + HOUR


async def test_an_upload_takes_at_most_max_parts_parts_the_last_always_fits(
    store: FileStore,
) -> None:
    tenant = new_id()
    file = await store.create_pending(new_file(tenant, size=10), LIMITS)
    for offset in range(2):
        await store.add_part(part(file, offset, 1), tenant, now=T0, max_parts=3)

    with pytest.raises(InvalidFile, match="at most 3 parts"):
        await store.add_part(part(file, 2, 1), tenant, now=T0, max_parts=3)

    assert len(await store.parts(tenant, file.id)) == 2
    assert await store.add_part(part(file, 2, 8), tenant, now=T0, max_parts=3) == 10
