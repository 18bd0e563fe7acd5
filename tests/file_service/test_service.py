"""The file service's rules for uploads in parts (what tus and upload URLs use), expiry and
the sweep, on SQLite and PostgreSQL with a local blob store and a clock the test moves."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from file_service.errors import (
    ChecksumMismatch,
    FileNotFound,
    FileNotReady,
    InvalidFile,
    OffsetMismatch,
    QuotaExceeded,
    UploadBusy,
    UploadExpired,
)
from file_service.models import FileLimits, FileState, StoredFile, Usage
from file_service.service import FileInfo, FileService
from file_service.storage import (
    BlobKey,
    Chunk,
    Hash,
    LocalBlobStore,
    StorageUnavailable,
    WrittenBlob,
    local,
)
from file_service.store import SqlFileStore
from service_kit.errors import ResourceExhausted, Unavailable
from service_kit.ratelimit import InMemoryRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def service(engine: AsyncEngine, blobs: LocalBlobStore, clock: Clock) -> FileService:
    limits = FileLimits(max_file_bytes=1 << 20, max_tenant_bytes=2 << 20, max_tenant_files=10)
    return FileService(SqlFileStore(engine), blobs, limits, clock=clock)


def tenant() -> str:
    return str(uuid.uuid4())


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def cut_off(data: bytes) -> AsyncIterator[bytes]:
    """A request body whose client goes away after ``data``: the stream just ends."""
    yield data


def stored_blobs(blobs: LocalBlobStore, tenant_id: str) -> list[str]:
    root = blobs.root / tenant_id
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def new_upload(service: FileService, tenant_id: str, size: int, **more: str) -> str:
    file = await service.create_upload(
        tenant_id,
        user_id="alice",
        filename="notes.txt",
        content_type="text/plain",
        size=size,
        metadata={},
        **more,  # type: ignore[arg-type]
    )
    assert file.state is FileState.PENDING
    return file.id


async def test_parts_arriving_in_order_make_a_ready_file_and_leave_no_parts(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    data = b"hello, resumable world\n" * 100
    file_id = await new_upload(service, t, len(data))
    after = await service.append(t, file_id, 0, body(data[:1000]))
    assert after.upload_offset == 1000 and after.state is FileState.PENDING
    done = await service.append(t, file_id, 1000, body(data[1000:]))
    assert done.state is FileState.READY
    assert done.sha256 == hashlib.sha256(data).hexdigest() and done.size == len(data)
    assert stored_blobs(blobs, t) == [done.blob_key.rsplit("/", 1)[1]]  # the parts are gone
    chunks = await service.read(done, variant="file", offset=0, length=None)
    assert b"".join([c async for c in chunks]) == data


async def test_a_request_cut_off_mid_way_keeps_what_arrived_and_resumes_there(
    service: FileService,
) -> None:
    t = tenant()
    data = bytes(range(256)) * 40
    file_id = await new_upload(service, t, len(data))
    after = await service.append(t, file_id, 0, cut_off(data[:3333]))
    assert after.upload_offset == 3333
    assert (await service.get_file(t, file_id)).upload_offset == 3333
    with pytest.raises(OffsetMismatch) as caught:
        await service.append(t, file_id, 0, body(data))
    assert caught.value.expected == 3333
    done = await service.append(t, file_id, 3333, body(data[3333:]))
    assert done.state is FileState.READY and done.sha256 == hashlib.sha256(data).hexdigest()


async def test_two_requests_at_the_same_offset_store_one_part(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 10)
    results = await asyncio.gather(
        service.append(t, file_id, 0, body(b"abc", b"de")),
        service.append(t, file_id, 0, body(b"ABC", b"DE")),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    # The loser found the upload's blob being written (423: retry) or the offset moved (409).
    assert len(won) == 1 and len(lost) == 1
    assert isinstance(lost[0], UploadBusy | OffsetMismatch)
    assert won[0].upload_offset == 5
    assert len(stored_blobs(blobs, t)) == 1  # the upload's one blob
    done = await service.append(t, file_id, 5, body(b"12345"))
    chunks = await service.read(done, variant="file", offset=0, length=None)
    stored = b"".join([c async for c in chunks])
    assert stored in (b"abcde12345", b"ABCDE12345")  # one request's bytes, never a mix
    assert done.sha256 == hashlib.sha256(stored).hexdigest()


async def test_parts_of_an_upload_on_local_disk_go_into_one_blob_that_becomes_the_file(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    data = bytes(range(256)) * 64
    file_id = await new_upload(service, t, len(data))
    for offset in range(0, len(data), 4096):
        after = await service.append(t, file_id, offset, body(data[offset : offset + 4096]))
        assert stored_blobs(blobs, t) == ["data"]  # no part blobs, no copy at the end
    assert after.state is FileState.READY and after.blob_key.endswith("-parts/data")
    assert after.sha256 == hashlib.sha256(data).hexdigest()
    chunks = await service.read(after, variant="file", offset=0, length=None)
    assert b"".join([c async for c in chunks]) == data


async def test_a_part_refused_by_its_checksum_leaves_no_byte_and_the_upload_goes_on(
    service: FileService,
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 10)
    await service.append(t, file_id, 0, body(b"abcde"))
    with pytest.raises(ChecksumMismatch):
        # Written into the blob past the offset, then cut off again.
        await service.append(
            t, file_id, 5, body(b"XXXXXXXX"[:5]), sha256=hashlib.sha256(b"other").digest()
        )
    assert (await service.get_file(t, file_id)).upload_offset == 5
    done = await service.append(t, file_id, 5, body(b"fghij"))
    chunks = await service.read(done, variant="file", offset=0, length=None)
    assert b"".join([c async for c in chunks]) == b"abcdefghij"
    assert done.sha256 == hashlib.sha256(b"abcdefghij").hexdigest()


async def test_a_request_holding_an_uploads_blob_keeps_others_out_until_it_ends(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 10)
    file = await service.get_file(t, file_id)
    async with blobs.appender(BlobKey(f"{file.blob_key}-parts/data")):
        with pytest.raises(UploadBusy):
            await service.append(t, file_id, 0, body(b"abcde"))
    assert (await service.append(t, file_id, 0, body(b"abcde"))).upload_offset == 5


async def test_a_part_with_a_wrong_checksum_is_not_kept(service: FileService) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 10)
    with pytest.raises(ChecksumMismatch):
        await service.append(t, file_id, 0, body(b"abcde"), sha256=hashlib.sha256(b"x").digest())
    assert (await service.get_file(t, file_id)).upload_offset == 0
    right = hashlib.sha256(b"abcde").digest()
    assert (await service.append(t, file_id, 0, body(b"abcde"), sha256=right)).upload_offset == 5


async def test_more_bytes_than_declared_are_refused_and_nothing_is_kept(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 4)
    with pytest.raises(InvalidFile):
        await service.append(t, file_id, 0, body(b"abc", b"de"))
    assert (await service.get_file(t, file_id)).upload_offset == 0
    assert stored_blobs(blobs, t) == []


async def test_a_completed_upload_whose_hash_differs_from_the_declared_one_is_discarded(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 5, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ChecksumMismatch):
        await service.append(t, file_id, 0, body(b"abcde"))
    gone = await service.get_file(t, file_id)
    assert gone.state is FileState.DELETED
    assert stored_blobs(blobs, t) == []
    assert await usage_of(service, t) == Usage(0, 0)


async def test_an_expired_upload_takes_no_more_bytes_and_the_sweep_removes_it(
    service: FileService, blobs: LocalBlobStore, clock: Clock
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 100, ttl=timedelta(minutes=5))  # type: ignore[arg-type]
    await service.append(t, file_id, 0, body(b"x" * 40))
    assert len(stored_blobs(blobs, t)) == 1
    clock.now += timedelta(minutes=6)
    with pytest.raises(UploadExpired):
        await service.append(t, file_id, 40, body(b"y" * 60))
    expired, purged = await service.sweep()
    assert expired >= 1 and purged >= 1
    assert (await service.get_file(t, file_id)).state is FileState.DELETED
    assert stored_blobs(blobs, t) == []
    assert await usage_of(service, t) == Usage(0, 0)


async def test_terminating_an_upload_removes_its_parts_and_frees_its_room(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 1 << 20)
    await service.append(t, file_id, 0, body(b"z" * 1000))
    await service.terminate(t, file_id)
    assert stored_blobs(blobs, t) == []
    assert await usage_of(service, t) == Usage(0, 0)
    with pytest.raises(FileNotReady):
        await service.terminate(t, file_id)


async def test_another_tenants_upload_is_not_found(service: FileService) -> None:
    owner, other = tenant(), tenant()
    file_id = await new_upload(service, owner, 10)
    for call in (
        service.append(other, file_id, 0, body(b"hijack")),
        service.terminate(other, file_id),
        service.get_file(other, file_id),
    ):
        with pytest.raises(FileNotFound):
            await call


async def test_a_stream_stops_at_the_largest_file_allowed(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    big = b"q" * (256 * 1024)
    with pytest.raises(InvalidFile, match="largest file"):
        await service.upload(t, FileInfo("big.bin"), body(*[big] * 5))  # 1.25 MiB > 1 MiB
    assert stored_blobs(blobs, t) == []


async def usage_of(service: FileService, tenant_id: str) -> Usage:
    return await service._store.usage(tenant_id)


async def test_bytes_in_and_out_are_counted_for_metrics(service: FileService) -> None:
    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    received, sent = sample("keel_file_bytes_received_total"), sample("keel_file_bytes_sent_total")
    stored = await service.upload(tenant(), FileInfo("m.txt"), body(b"a" * 1000, b"b" * 500))
    assert sample("keel_file_bytes_received_total") - received == 1500
    chunks = await service.read(stored, variant="file", offset=100, length=200)
    assert len(b"".join([c async for c in chunks])) == 200
    assert sample("keel_file_bytes_sent_total") - sent == 200
    assert sample("keel_file_uploads_in_progress") == 0


async def test_a_tenant_starting_uploads_too_fast_is_told_when_to_retry(
    engine: AsyncEngine, blobs: LocalBlobStore, clock: Clock
) -> None:
    limited = FileService(
        SqlFileStore(engine),
        blobs,
        FileLimits(),
        clock=clock,
        rate_limiter=InMemoryRateLimiter(clock=lambda: 1000.0),  # time stands still
        uploads_per_minute=12,  # a burst of 2, then one every 5 s
    )
    busy, calm = tenant(), tenant()
    for _ in range(2):
        await limited.upload(busy, FileInfo("a.txt"), body(b"x"))
    with pytest.raises(ResourceExhausted) as caught:
        await limited.upload(busy, FileInfo("a.txt"), body(b"x"))
    assert caught.value.retry_after == pytest.approx(5.0)
    await limited.upload(calm, FileInfo("a.txt"), body(b"x"))  # another tenant's own bucket


async def test_a_whole_file_in_one_request_is_kept_as_sent_without_a_copy(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    data = b"all at once\n" * 1000
    file_id = await new_upload(service, t, len(data))
    done = await service.append(t, file_id, 0, body(data))
    assert done.state is FileState.READY and done.sha256 == hashlib.sha256(data).hexdigest()
    assert "-parts/" in done.blob_key  # the part itself became the file's blob
    assert stored_blobs(blobs, t) == [done.blob_key.rsplit("/", 1)[1]]
    chunks = await service.read(done, variant="file", offset=0, length=None)
    assert b"".join([c async for c in chunks]) == data
    await service.delete_file(t, file_id)
    assert stored_blobs(blobs, t) == []


async def test_parts_whose_whole_breaks_a_rule_leave_nothing(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 5, sha256=hashlib.sha256(b"other").hexdigest())
    await service.append(t, file_id, 0, body(b"abc"))
    with pytest.raises(ChecksumMismatch):
        await service.append(t, file_id, 3, body(b"de"))
    assert (await service.get_file(t, file_id)).state is FileState.DELETED
    assert stored_blobs(blobs, t) == []
    assert await usage_of(service, t) == Usage(0, 0)


class FailingFinalWrites(LocalBlobStore):
    """A local store whose next ``failures`` writes of a file's final blob (not a part), or
    syncs of a blob, fail as an unreachable backend would."""

    def __init__(self, root: Path, failures: int, *, appends: bool = True) -> None:
        super().__init__(root, appends=appends)
        self.failures = failures

    async def sync(self, key: BlobKey) -> None:
        self._maybe_fail(key, final=True)
        await super().sync(key)

    async def write(
        self, key: BlobKey, chunks: AsyncIterable[Chunk], **options: Any
    ) -> WrittenBlob:
        self._maybe_fail(key)
        return await super().write(key, chunks, **options)

    async def compose(
        self, key: BlobKey, parts: Sequence[BlobKey], *, sha256: str | None = None
    ) -> WrittenBlob:
        self._maybe_fail(key)
        return await super().compose(key, parts, sha256=sha256)

    def _maybe_fail(self, key: BlobKey, *, final: bool = False) -> None:
        final = final or ("-parts/" not in key and "-thumbnail" not in key)
        if final and self.failures > 0:
            self.failures -= 1
            raise StorageUnavailable("the disk is away")


@pytest.mark.parametrize("appends", [True, False], ids=["one-blob", "part-blobs"])
async def test_retries_of_a_failed_completion_at_once_all_end_with_the_one_ready_file(
    engine: AsyncEngine, tmp_path: Path, clock: Clock, appends: bool
) -> None:
    blobs = FailingFinalWrites(tmp_path / "flaky", failures=1, appends=appends)
    service = FileService(SqlFileStore(engine), blobs, FileLimits(), clock=clock)
    t, data = tenant(), b"0123456789" * 1000
    file_id = await new_upload(service, t, len(data))
    await service.append(t, file_id, 0, body(data[:4000]))
    with pytest.raises(Unavailable):  # the last part is in; assembling it failed
        await service.append(t, file_id, 4000, body(data[4000:]))
    assert (await service.get_file(t, file_id)).state is FileState.PENDING
    retries = await asyncio.gather(
        *(service.append(t, file_id, len(data), body()) for _ in range(3)),
        return_exceptions=True,
    )
    failed = [repr(r) for r in retries if isinstance(r, BaseException)]
    assert not failed, failed
    assert {r.state for r in retries if isinstance(r, StoredFile)} == {FileState.READY}
    ready = await service.get_file(t, file_id)
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(data).hexdigest()
    chunks = await service.read(ready, variant="file", offset=0, length=None)
    assert b"".join([c async for c in chunks]) == data
    assert await usage_of(service, t) == Usage(len(data), 1)


async def test_an_upload_deleted_while_it_completes_leaves_no_blob(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t, data = tenant(), b"x" * 2000
    file_id = await new_upload(service, t, len(data))
    await service.append(t, file_id, 0, body(data[:1000]))

    async def deleted_midway() -> AsyncIterator[bytes]:
        yield data[1000:]
        await service.terminate(t, file_id)  # e.g. the sweep expiring it, meanwhile

    with pytest.raises(UploadExpired):
        await service.append(t, file_id, 1000, deleted_midway())
    assert stored_blobs(blobs, t) == []


async def test_a_stream_of_undeclared_size_stops_where_the_quota_ends(
    engine: AsyncEngine, blobs: LocalBlobStore, clock: Clock
) -> None:
    limits = FileLimits(max_file_bytes=1 << 20, max_tenant_bytes=300_000)
    service = FileService(SqlFileStore(engine), blobs, limits, clock=clock)
    t = tenant()
    await service.upload(t, FileInfo("first.bin"), body(b"a" * 200_000))
    chunk = b"b" * 50_000
    with pytest.raises(QuotaExceeded, match="may take 100000 bytes more"):
        await service.upload(t, FileInfo("second.bin"), body(*[chunk] * 20))  # 1 MB offered
    assert await usage_of(service, t) == Usage(200_000, 1)
    assert len(stored_blobs(blobs, t)) == 1


async def test_an_upload_in_parts_leaves_no_directory_behind(
    service: FileService, blobs: LocalBlobStore
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 10)
    await service.append(t, file_id, 0, body(b"12345"))
    done = await service.append(t, file_id, 5, body(b"67890"))
    root = blobs.root / t
    files = [str(p.relative_to(blobs.root)) for p in root.rglob("*") if p.is_file()]
    assert files == [done.blob_key]
    assert all(any(d.iterdir()) for d in root.rglob("*") if d.is_dir())  # none empty
    await service.delete_file(t, file_id)
    assert list(root.iterdir()) == []


class RecordedCompositions(LocalBlobStore):
    """A local store noting the hash each composition was handed (None: it hashed), and
    each blob it read to hash (uploads in one blob)."""

    def __init__(self, root: Path, *, appends: bool = False) -> None:
        super().__init__(root, appends=appends)
        self.known: list[str | None] = []
        self.hashed: list[str] = []

    async def sha256(self, key: BlobKey, size: int) -> str:
        self.hashed.append(key)
        return await super().sha256(key, size)

    async def compose(
        self, key: BlobKey, parts: Sequence[BlobKey], *, sha256: str | None = None
    ) -> WrittenBlob:
        self.known.append(sha256)
        return await super().compose(key, parts, sha256=sha256)


async def append_in_order(
    service: FileService, tenant_id: str, file_id: str, data: bytes, part: int = 3000
) -> None:
    """Upload ``data`` in parts of ``part`` bytes, one after the other."""
    for start in range(0, len(data), part):
        await service.append(tenant_id, file_id, start, body(data[start : start + part]))


async def test_parts_stored_in_order_by_one_process_are_not_hashed_again_when_composed(
    engine: AsyncEngine, tmp_path: Path, clock: Clock
) -> None:
    blobs = RecordedCompositions(tmp_path / "blobs")
    service = FileService(SqlFileStore(engine), blobs, FileLimits(), clock=clock)
    t, data = tenant(), bytes(range(256)) * 40
    file_id = await new_upload(service, t, len(data))
    await append_in_order(service, t, file_id, data)

    ready = await service.get_file(t, file_id)
    assert ready.state is FileState.READY
    assert ready.sha256 == hashlib.sha256(data).hexdigest()
    assert blobs.known == [ready.sha256]  # the running hash, handed over: nothing re-read
    chunks = await service.read(ready, variant="file", offset=0, length=None)
    assert b"".join([c async for c in chunks]) == data


async def test_parts_stored_by_two_processes_are_hashed_when_composed(
    engine: AsyncEngine, tmp_path: Path, clock: Clock
) -> None:
    blobs = RecordedCompositions(tmp_path / "blobs")
    one, other = (FileService(SqlFileStore(engine), blobs, FileLimits(), clock=clock) for _ in "ab")
    t, data = tenant(), bytes(range(256)) * 40
    file_id = await new_upload(one, t, len(data))
    await one.append(t, file_id, 0, body(data[:4000]))
    await other.append(t, file_id, 4000, body(data[4000:7000]))  # it never saw the start
    await one.append(t, file_id, 7000, body(data[7000:]))  # its hash stops at 4000

    ready = await one.get_file(t, file_id)
    assert ready.sha256 == hashlib.sha256(data).hexdigest()
    assert blobs.known == [None]


@pytest.mark.parametrize("hash_delay", [0.0, 0.05], ids=["hash", "slow-hash"])
async def test_an_upload_in_one_blob_is_hashed_as_it_arrives_unless_two_processes_took_it(
    engine: AsyncEngine,
    tmp_path: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    hash_delay: float,
) -> None:
    """A part's last bytes are hashed while the part is recorded; the next part, and the
    completion, go on from the running hash only once it has taken them (a slow hash: the
    file's SHA-256 is still that of its bytes, and nothing is read again)."""
    real = local._hash_all

    def delayed(digest: Hash, pieces: list[Chunk]) -> None:
        time.sleep(hash_delay)
        real(digest, pieces)

    monkeypatch.setattr(local, "_hash_all", delayed)
    blobs = RecordedCompositions(tmp_path / "blobs", appends=True)
    one, other = (FileService(SqlFileStore(engine), blobs, FileLimits(), clock=clock) for _ in "ab")
    t, data = tenant(), bytes(range(256)) * 40
    in_order = await new_upload(one, t, len(data))
    await append_in_order(one, t, in_order, data)
    ready = await one.get_file(t, in_order)
    assert ready.sha256 == hashlib.sha256(data).hexdigest()
    assert blobs.hashed == []  # the running hash: nothing read again

    shared = await new_upload(one, t, len(data))
    await one.append(t, shared, 0, body(data[:4000]))
    await other.append(t, shared, 4000, body(data[4000:7000]))  # it never saw the start
    ready = await one.append(t, shared, 7000, body(data[7000:]))  # its hash stops at 4000
    assert ready.sha256 == hashlib.sha256(data).hexdigest()
    assert blobs.hashed == [ready.blob_key]


async def test_racing_parts_leave_the_hash_of_the_bytes_that_were_stored(
    service: FileService,
) -> None:
    t = tenant()
    file_id = await new_upload(service, t, 1200)
    await service.append(t, file_id, 0, body(b"a" * 400))
    # Two requests for the same offset: one takes the running hash, one is stored.
    raced = await asyncio.gather(
        service.append(t, file_id, 400, body(b"b" * 400)),
        service.append(t, file_id, 400, body(b"c" * 400)),
        return_exceptions=True,
    )
    names = sorted(type(r).__name__ for r in raced)
    assert names in (["OffsetMismatch", "StoredFile"], ["StoredFile", "UploadBusy"])
    await service.append(t, file_id, 800, body(b"d" * 400))

    ready = await service.get_file(t, file_id)
    chunks = await service.read(ready, variant="file", offset=0, length=None)
    stored = b"".join([c async for c in chunks])
    assert stored in (b"a" * 400 + b"b" * 400 + b"d" * 400, b"a" * 400 + b"c" * 400 + b"d" * 400)
    assert ready.sha256 == hashlib.sha256(stored).hexdigest()


def two_processes(
    engine: AsyncEngine, root: Path, clock: Clock, *, appends: bool
) -> tuple[FileService, FileService]:
    """Two file services on one database and one disk, sharing nothing in memory."""
    blobs = LocalBlobStore(root, appends=appends)
    limits = FileLimits(max_file_bytes=1 << 20, max_tenant_bytes=2 << 20, max_tenant_files=10)
    return (
        FileService(SqlFileStore(engine), blobs, limits, clock=clock),
        FileService(SqlFileStore(engine), blobs, limits, clock=clock),
    )


@pytest.mark.parametrize("appends", [True, False], ids=["one-blob", "part-blobs"])
async def test_an_upload_kept_here_but_moved_by_another_process_is_refused_with_its_offset(
    engine: AsyncEngine, tmp_path: Path, clock: Clock, appends: bool
) -> None:
    here, other = two_processes(engine, tmp_path / "blobs", clock, appends=appends)
    t, data = tenant(), bytes(range(100))
    file_id = await new_upload(here, t, len(data))
    await here.append(t, file_id, 0, body(data[:40]))
    await other.append(t, file_id, 40, body(data[40:70]))
    kept = await here.get_upload(t, file_id, offset=40)
    assert kept.upload_offset == 40  # as this process left it: not read again
    with pytest.raises(OffsetMismatch) as refused:
        await here.append(t, file_id, 40, body(b"z" * 30), known=kept)
    assert refused.value.expected == 70
    await here.append(t, file_id, 70, body(data[70:]))
    ready = await here.get_file(t, file_id)
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(data).hexdigest()
    assert (
        b"".join([c async for c in await here.read(ready, variant="file", offset=0, length=None)])
        == data
    )


@pytest.mark.parametrize("appends", [True, False], ids=["one-blob", "part-blobs"])
async def test_an_upload_kept_here_but_completed_by_another_process_is_refused_at_its_size(
    engine: AsyncEngine, tmp_path: Path, clock: Clock, appends: bool
) -> None:
    """The refusal every transport gives (tus: 409 with the offset): the client asks where
    the upload is and finds it done."""
    here, other = two_processes(engine, tmp_path / "blobs", clock, appends=appends)
    t, data = tenant(), bytes(range(100))
    file_id = await new_upload(here, t, len(data))
    await here.append(t, file_id, 0, body(data[:40]))
    await other.append(t, file_id, 40, body(data[40:]))
    kept = await here.get_upload(t, file_id, offset=40)
    with pytest.raises(OffsetMismatch) as refused:
        await here.append(t, file_id, 40, body(b"z" * 60), known=kept)
    assert refused.value.expected == len(data)
    ready = await here.get_file(t, file_id)
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("appends", [True, False], ids=["one-blob", "part-blobs"])
async def test_an_upload_kept_here_but_terminated_by_another_process_keeps_nothing_more(
    engine: AsyncEngine, tmp_path: Path, clock: Clock, appends: bool
) -> None:
    here, other = two_processes(engine, tmp_path / "blobs", clock, appends=appends)
    t = tenant()
    file_id = await new_upload(here, t, 100)
    await here.append(t, file_id, 0, body(b"a" * 40))
    await other.terminate(t, file_id)
    kept = await here.get_upload(t, file_id, offset=40)
    with pytest.raises(UploadExpired):
        await here.append(t, file_id, 40, body(b"z" * 30), known=kept)
    assert stored_blobs(LocalBlobStore(tmp_path / "blobs"), t) == []
    assert (await here.get_file(t, file_id)).state is FileState.DELETED


class RecordedSyncs(LocalBlobStore):
    """A local store noting, in order, each write (its key and whether it was durable) and
    each sync, and what the store said of a file when its blob was synced."""

    def __init__(self, root: Path, *, appends: bool = True) -> None:
        super().__init__(root, appends=appends)
        self.events: list[tuple[str, str, bool]] = []

    async def write(
        self, key: BlobKey, chunks: AsyncIterable[Chunk], **options: Any
    ) -> WrittenBlob:
        self.events.append(("write", key, options.get("durable", True)))
        return await super().write(key, chunks, **options)

    async def sync(self, key: BlobKey) -> None:
        self.events.append(("sync", key, True))
        await super().sync(key)


async def test_parts_are_written_unsynced_and_a_ready_files_blob_is_synced(
    engine: AsyncEngine, tmp_path: Path, clock: Clock
) -> None:
    """A part is not fsynced as it arrives (a crash of the process loses none of its bytes;
    HEAD checks the parts after a crash of the machine); a file is READY only once its blob
    is on disk: the one part that holds it all is synced, parts composed are copied into a
    blob the composition syncs."""
    blobs = RecordedSyncs(tmp_path / "blobs", appends=False)
    service = FileService(SqlFileStore(engine), blobs, FileLimits(), clock=clock)
    t = tenant()
    whole = await new_upload(service, t, 5)
    ready = await service.append(t, whole, 0, body(b"hello"))
    assert ready.state is FileState.READY
    assert blobs.events == [("write", ready.blob_key, False), ("sync", ready.blob_key, True)]

    blobs.events.clear()
    split = await new_upload(service, t, 6)
    await service.append(t, split, 0, body(b"abc"))
    ready = await service.append(t, split, 3, body(b"def"))
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert [(kind, durable) for kind, _, durable in blobs.events] == [
        ("write", False),
        ("write", False),
    ]


async def test_an_upload_in_one_blob_is_synced_once_when_it_is_complete(
    engine: AsyncEngine, tmp_path: Path, clock: Clock
) -> None:
    """Parts written into the upload's one blob are not fsynced as they arrive; the blob is
    synced once, before the file is READY."""
    blobs = RecordedSyncs(tmp_path / "blobs")
    service = FileService(SqlFileStore(engine), blobs, FileLimits(), clock=clock)
    t = tenant()
    split = await new_upload(service, t, 6)
    await service.append(t, split, 0, body(b"abc"))
    assert blobs.events == []
    ready = await service.append(t, split, 3, body(b"def"))
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert blobs.events == [("sync", ready.blob_key, True)]
