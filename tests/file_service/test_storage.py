"""One suite for every blob store: the local directory and S3 (moto's server).

Each test runs once per backend (``backend`` fixture); what differs between backends is only
how leftovers are seen (temporary files, pending multipart uploads).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest

from file_service.storage import (
    BlobKey,
    BlobNotFound,
    Chunk,
    Hash,
    InvalidBlobKey,
    InvalidRange,
    LocalBlobStore,
    S3BlobStore,
    StorageUnavailable,
    build_blob_store,
    local,
)
from file_service.storage.s3 import DEFAULT_PART_SIZE
from service_kit.config import FileSettings
from tests.file_service.conftest import Backend

MiB = 1024 * 1024


def new_key() -> BlobKey:
    return BlobKey(f"tenant-{uuid.uuid4().hex[:8]}/file-{uuid.uuid4().hex}")


def pattern(index: int, size: int) -> bytes:
    """Deterministic, non-repeating-per-chunk bytes, made on demand."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


class SourceBroke(Exception):
    pass


async def test_a_blob_round_trips_with_its_size_and_sha256(backend: Backend) -> None:
    data = b"hello, keel " * 1000
    key = new_key()

    written = await backend.store.write(key, chunks_of(data, 777))

    assert (written.key, written.size, written.sha256) == (
        key,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert await collect(backend.store.read(key)) == data
    assert (await backend.store.stat(key)).size == len(data)
    assert await backend.store.exists(key)


async def test_an_empty_blob_round_trips(backend: Backend) -> None:
    key = new_key()
    written = await backend.store.write(key, chunks_of(b"", 1))
    assert (written.size, written.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert await collect(backend.store.read(key)) == b""


async def test_writing_a_key_again_replaces_the_blob(backend: Backend) -> None:
    key = new_key()
    await backend.store.write(key, chunks_of(b"first version", 4))
    await backend.store.write(key, chunks_of(b"second", 4))
    assert await collect(backend.store.read(key)) == b"second"


async def test_a_blob_of_several_parts_is_streamed_in_bounded_chunks(backend: Backend) -> None:
    # 12 MiB: more than one S3 part (8 MiB), so S3 writes it as a multipart upload.
    chunk, count = 256 * 1024, 48
    assert chunk * count > DEFAULT_PART_SIZE
    expected = hashlib.sha256()
    for index in range(count):
        expected.update(pattern(index, chunk))

    async def source() -> AsyncIterator[bytes]:
        for index in range(count):
            yield pattern(index, chunk)

    key = new_key()
    written = await backend.store.write(key, source())
    assert (written.size, written.sha256) == (chunk * count, expected.hexdigest())

    read_digest, read_size, largest = hashlib.sha256(), 0, 0
    async for piece in backend.store.read(key):
        largest = max(largest, len(piece))
        read_size += len(piece)
        read_digest.update(piece)
    assert (read_size, read_digest.hexdigest()) == (chunk * count, expected.hexdigest())
    assert 0 < largest <= backend.store.chunk_size
    assert await backend.leftovers() == []


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 10, slice(0, 10)),
        (1000, 2345, slice(1000, 3345)),
        (9990, None, slice(9990, 10000)),
        (9990, 500, slice(9990, 10000)),
        (10000, None, slice(10000, 10000)),
        (5, 0, slice(5, 5)),
    ],
    ids=["start", "middle", "end", "length-past-end", "at-end", "zero-length"],
)
async def test_a_byte_range_is_read(
    backend: Backend, offset: int, length: int | None, expected: slice
) -> None:
    data = pattern(7, 10000)
    key = new_key()
    await backend.store.write(key, chunks_of(data, 4096))
    assert await collect(backend.store.read(key, offset=offset, length=length)) == data[expected]


@pytest.mark.parametrize(("offset", "length"), [(10001, None), (20000, 5), (-1, None), (0, -1)])
async def test_a_range_outside_the_blob_is_refused(
    backend: Backend, offset: int, length: int | None
) -> None:
    key = new_key()
    await backend.store.write(key, chunks_of(b"x" * 10000, 4096))
    with pytest.raises(InvalidRange, match=r"past the end|must not be negative"):
        await collect(backend.store.read(key, offset=offset, length=length))


async def test_a_deleted_blob_is_not_found_and_deleting_again_is_fine(backend: Backend) -> None:
    key = new_key()
    await backend.store.write(key, chunks_of(b"gone soon", 4))

    await backend.store.delete(key)
    await backend.store.delete(key)

    assert not await backend.store.exists(key)
    with pytest.raises(BlobNotFound):
        await backend.store.stat(key)
    with pytest.raises(BlobNotFound):
        await collect(backend.store.read(key))


@pytest.mark.parametrize("size", [1000, 9 * MiB], ids=["small", "after-a-part"])
async def test_a_write_whose_source_fails_leaves_nothing(backend: Backend, size: int) -> None:
    key = new_key()

    async def source() -> AsyncIterator[bytes]:
        for index in range(size // (MiB // 4) + 1):
            yield pattern(index, min(size, MiB // 4))
        raise SourceBroke

    with pytest.raises(SourceBroke):
        await backend.store.write(key, source())

    assert not await backend.store.exists(key)
    assert await backend.leftovers() == []


async def test_a_failed_write_keeps_the_blob_it_would_have_replaced(backend: Backend) -> None:
    key = new_key()
    await backend.store.write(key, chunks_of(b"the original", 5))

    async def source() -> AsyncIterator[bytes]:
        yield b"half of a new"
        raise SourceBroke

    with pytest.raises(SourceBroke):
        await backend.store.write(key, source())
    assert await collect(backend.store.read(key)) == b"the original"


async def test_composed_parts_are_one_blob_with_the_size_and_sha256_of_all(
    backend: Backend,
) -> None:
    # Parts of odd sizes, one empty, one larger than a copy step: the bytes must follow
    # each other exactly, whatever each backend copies at a time.
    pieces = [pattern(1, 1000), b"", pattern(2, 9 * MiB + 3), pattern(3, 1)]
    parts = [new_key() for _ in pieces]
    for part, data in zip(parts, pieces, strict=True):
        await backend.store.write(part, chunks_of(data, MiB), hashed=False)
    key = new_key()

    written = await backend.store.compose(key, parts)

    whole = b"".join(pieces)
    assert (written.key, written.size, written.sha256) == (
        key,
        len(whole),
        hashlib.sha256(whole).hexdigest(),
    )
    assert await collect(backend.store.read(key)) == whole
    assert [await backend.store.exists(part) for part in parts] == [True] * len(parts)
    assert await backend.leftovers() == []


async def test_composing_with_a_missing_part_fails_and_leaves_nothing(backend: Backend) -> None:
    present, missing, key = new_key(), new_key(), new_key()
    await backend.store.write(present, chunks_of(b"here", 2))

    with pytest.raises(BlobNotFound):
        await backend.store.compose(key, [present, missing])

    assert not await backend.store.exists(key)
    assert await backend.store.exists(present)
    assert await backend.leftovers() == []


async def test_an_unhashed_write_stores_the_same_bytes_without_a_sha256(backend: Backend) -> None:
    key, data = new_key(), pattern(4, 3 * MiB)
    written = await backend.store.write(key, chunks_of(data, MiB), hashed=False)
    assert (written.size, written.sha256) == (len(data), "")
    assert await collect(backend.store.read(key)) == data


@pytest.mark.parametrize(
    "key",
    ["../escape", "a/../../escape", "/etc/passwd", "a//b", "a/./b", ".hidden", "a\\..\\b", ""],
)
async def test_a_key_that_could_escape_the_root_is_refused(backend: Backend, key: str) -> None:
    bad = BlobKey(key)
    with pytest.raises(InvalidBlobKey, match="blob key"):
        await backend.store.write(bad, chunks_of(b"x", 1))
    with pytest.raises(InvalidBlobKey, match="blob key"):
        await collect(backend.store.read(bad))
    with pytest.raises(InvalidBlobKey, match="blob key"):
        await backend.store.stat(bad)
    with pytest.raises(InvalidBlobKey, match="blob key"):
        await backend.store.delete(bad)


async def test_the_local_store_writes_nothing_outside_its_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "files")
    with pytest.raises(InvalidBlobKey):
        await store.write(BlobKey("../outside"), chunks_of(b"x", 1))
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


def test_local_writes_hand_the_kernel_at_most_a_slice_at_a_time(tmp_path: Path) -> None:
    """A piece longer than WRITE_SLICE (a gRPC chunk of a MiB) is written in slices of it,
    views and not copies, in order: the kernel then takes small folios (see _write_all)."""

    class Recorded:
        def __init__(self, file: BinaryIO) -> None:
            self.file = file
            self.sizes: list[int] = []

        def write(self, data: Chunk) -> int:
            self.sizes.append(len(data))
            return self.file.write(data)

        def fileno(self) -> int:
            return self.file.fileno()

    slice_ = local.WRITE_SLICE
    big, small = pattern(5, 4 * slice_ + 7), pattern(6, 100)
    with open(tmp_path / "blob", "wb") as file:
        recorded = Recorded(file)
        local._write_all(recorded, [memoryview(big), small], 0, None)  # type: ignore[arg-type]
    assert recorded.sizes == [slice_, slice_, slice_, slice_, 7, 100]
    assert (tmp_path / "blob").read_bytes() == big + small


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's")
async def test_local_writes_start_their_writeback_and_keep_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch a write hands its thread asks the kernel to start writing it out (from
    the batch's first byte), a blob's and an appender's alike; the bytes are the same."""
    started: list[int] = []

    def noted(descriptor: int, position: int) -> None:
        started.append(position)
        real(descriptor, position)

    real = local.start_writeback
    monkeypatch.setattr(local, "start_writeback", noted)
    assert local._SYNC_FILE_RANGE is not None
    store = LocalBlobStore(tmp_path / "files", chunk_size=64 * 1024)
    data = pattern(7, 300 * 1024)
    key = new_key()
    written = await store.write(key, chunks_of(data, 64 * 1024))
    assert started == [0, 64 * 1024, 128 * 1024, 192 * 1024, 256 * 1024]
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    started.clear()
    async with store.appender(key) as appender:
        await appender.write_at(100 * 1024, chunks_of(data[: 128 * 1024], 64 * 1024))
    assert started == [100 * 1024, 164 * 1024]
    expected = data[: 100 * 1024] + data[: 128 * 1024] + data[228 * 1024 :]
    assert await collect(store.read(key)) == expected


async def test_an_appender_can_leave_its_digest_behind_the_written_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``digest_behind``, write_at returns once its bytes are in the blob, while the
    digest may still be taking the last batch; digested() waits until it has them all.
    Without it, write_at waits for every byte to be hashed, as before."""
    release = threading.Event()
    real = local._hash_all

    def held(digest: Hash, pieces: list[Chunk]) -> None:
        release.wait(10)
        real(digest, pieces)

    monkeypatch.setattr(local, "_hash_all", held)
    store = LocalBlobStore(tmp_path / "files", chunk_size=64 * 1024)
    data, key, digest = pattern(3, 50 * 1024), new_key(), hashlib.sha256()
    async with store.appender(key) as appender:
        written = await appender.write_at(
            0, chunks_of(data, 16 * 1024), digest=digest, digest_behind=True
        )
        assert (written.size, written.sha256) == (len(data), "")
        assert await collect(store.read(key)) == data  # every byte is in the blob...
        assert digest.hexdigest() == hashlib.sha256().hexdigest()  # ...none hashed yet
        release.set()
        await appender.digested()
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()

        release.clear()
        more = asyncio.ensure_future(appender.write_at(len(data), chunks_of(data, 16 * 1024)))
        await asyncio.sleep(0.2)
        assert not more.done()
        release.set()
        assert (await more).sha256 == hashlib.sha256(data).hexdigest()


async def test_local_writes_without_sync_file_range_keep_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where libc has no ``sync_file_range`` (macOS) there is nothing to call, and a call
    that fails (here on a pipe) is only a hint not taken: neither makes a write fail."""

    class NoSyncFileRange:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    if local._SYNC_FILE_RANGE is not None:
        reading, writing = os.pipe()
        try:
            local.start_writeback(writing, 0)  # ESPIPE: ignored
        finally:
            os.close(reading)
            os.close(writing)
    monkeypatch.setattr("ctypes.CDLL", NoSyncFileRange)
    assert local._sync_file_range() is None
    monkeypatch.setattr(local, "_SYNC_FILE_RANGE", None)
    store = LocalBlobStore(tmp_path / "files", chunk_size=64 * 1024)
    data = pattern(3, 200 * 1024)
    key = new_key()
    written = await store.write(key, chunks_of(data, 64 * 1024))
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert await collect(store.read(key)) == data


async def test_settings_choose_the_backend(tmp_path: Path, s3_store: S3BlobStore) -> None:
    async with build_blob_store(FileSettings(local_dir=tmp_path / "blobs")) as local:
        assert isinstance(local, LocalBlobStore)
        assert local.root == (tmp_path / "blobs").resolve()
    assert isinstance(s3_store, S3BlobStore)


async def test_a_store_that_answers_passes_its_check(backend: Backend) -> None:
    await backend.store.check()


async def test_a_local_root_that_cannot_be_a_directory_fails_the_check(tmp_path: Path) -> None:
    blocker = tmp_path / "files"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(StorageUnavailable, match="cannot create the files directory"):
        await LocalBlobStore(blocker / "blobs").check()


async def test_a_missing_bucket_fails_the_check(s3_store: S3BlobStore) -> None:
    missing = S3BlobStore(s3_store._client, f"keel-missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(StorageUnavailable, match="cannot reach bucket"):
        await missing.check()


async def test_a_presigned_url_serves_the_blob_with_the_headers_asked_for(
    s3_store: S3BlobStore,
) -> None:
    key = BlobKey(f"t/{uuid.uuid4().hex}")
    await s3_store.write(key, chunks_of(b"0123456789" * 100, 300))
    url = await s3_store.presigned_get(
        key,
        expires_in=60,
        content_type="text/plain",
        content_disposition='attachment; filename="digits.txt"',
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": "bytes=10-19"}) as answer:
            assert answer.status == 206
            assert await answer.read() == b"0123456789"
            assert answer.headers["Content-Type"] == "text/plain"
            assert answer.headers["Content-Disposition"] == 'attachment; filename="digits.txt"'


async def test_deleting_a_tree_removes_every_blob_under_it_and_nothing_else(
    backend: Backend,
) -> None:
    root, other = f"t{uuid.uuid4().hex[:8]}", f"u{uuid.uuid4().hex[:8]}"
    keys = [f"{root}/a", f"{root}/b-parts/000-x", f"{root}/c-thumbnail", f"{other}/a"]
    for key in keys:
        await backend.store.write(BlobKey(key), chunks_of(b"bytes", 5))
    assert await backend.store.delete_tree(BlobKey(root)) == 3
    assert [await backend.store.exists(BlobKey(k)) for k in keys] == [False, False, False, True]
    assert await backend.store.delete_tree(BlobKey(root)) == 0  # again: nothing, no error
    assert await backend.leftovers() == []


@pytest.mark.skipif(local._RWF_NOWAIT is None, reason="no preadv(RWF_NOWAIT) here")
async def test_a_local_read_takes_cached_bytes_on_the_loop_and_the_rest_from_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the page cache holds is read without a worker thread; once the file's pages
    are dropped from it, threads read them: the same bytes, offsets and ranges, both ways."""
    store = LocalBlobStore(tmp_path / "files", chunk_size=64 * 1024)
    data = pattern(5, 300 * 1024 + 17)
    key = new_key()
    await store.write(key, chunks_of(data, 64 * 1024))
    threads: list[int] = []
    read_at = local._read_at

    def counted(loop: asyncio.AbstractEventLoop, file: BinaryIO, position: int, size: int) -> Any:
        threads.append(position)
        return read_at(loop, file, position, size)

    monkeypatch.setattr(local, "_read_at", counted)
    assert await collect(store.read(key)) == data
    assert await collect(store.read(key, offset=70_000, length=150_000)) == data[70_000:220_000]
    assert threads == []

    descriptor = os.open(tmp_path / "files" / key, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    finally:
        os.close(descriptor)
    assert await collect(store.read(key, offset=70_000, length=150_000)) == data[70_000:220_000]
    assert threads and threads[0] == 70_000
    assert await collect(store.read(key)) == data


async def test_a_local_blob_cut_short_while_read_fails_after_serving_only_what_it_held(
    tmp_path: Path,
) -> None:
    """A blob truncated between two chunks of a read (cached or not): the read yields only
    bytes the file held — never a buffer's stale bytes as if they were the file's — and
    then raises StorageUnavailable instead of ending as if the blob were whole."""
    store = LocalBlobStore(tmp_path / "files", chunk_size=64 * 1024)
    data = pattern(6, 300 * 1024)
    key = new_key()
    await store.write(key, chunks_of(data, 64 * 1024))
    cut = 64 * 1024 + 1000  # inside the second chunk
    received = bytearray()
    reading = store.read(key)
    received += await anext(reading)
    os.truncate(tmp_path / "files" / key, cut)
    with pytest.raises(StorageUnavailable, match="cut short"):
        async for chunk in reading:
            received += chunk
    assert bytes(received) == data[: len(received)]
    assert len(received) <= cut


async def test_a_digest_left_behind_takes_the_batches_in_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``digest_behind`` the last batch's hash starts only after the batch before it
    has been hashed, however long that takes: a running SHA-256 fed out of order would make
    a completed upload's checksum wrong."""
    release = threading.Event()
    real = local._hash_all
    data, key, digest = os.urandom(2 * 64 * 1024 + 10 * 1024), new_key(), hashlib.sha256()
    second_batch = data[64 * 1024 : 64 * 1024 + 32]
    calls: list[int] = []

    def second_held(digest: Hash, pieces: list[Chunk]) -> None:
        calls.append(len(calls))
        if bytes(pieces[0][:32]) == second_batch:  # the batch before the last: still hashing
            release.wait(10)
        real(digest, pieces)

    monkeypatch.setattr(local, "_hash_all", second_held)
    store = LocalBlobStore(tmp_path / "files", chunk_size=64 * 1024)
    async with store.appender(key) as appender:
        written = await appender.write_at(
            0, chunks_of(data, 16 * 1024), digest=digest, digest_behind=True
        )
        assert written.size == len(data)
        await asyncio.sleep(0.1)  # time for a hash that did not wait to run
        release.set()
        await appender.digested()
    assert len(calls) == 3
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
