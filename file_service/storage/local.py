"""Blobs as files in a local directory (the embedded default, ``<KEEL_DATA_DIR>/files``).

A key ``a/b`` is the file ``<root>/a/b``. A write goes to ``.tmp-<random>`` in the target's
directory (never a valid key: segments start with a letter or digit), is fsynced, then
renamed over the target — atomic on one file system — and the directory is fsynced, so a
reader sees the old blob or the whole new one, and a crash leaves at most a temporary file.
A write with ``durable=False`` (the parts of a resumable upload) skips both fsyncs: the
rename still makes the whole blob visible at once, to every process, and a crash of the
process (``kill -9``) loses none of it — the kernel has its bytes; only a crash of the
machine can lose a blob or cut it short, until :meth:`LocalBlobStore.sync`.
An upload's parts go into one blob (:meth:`LocalBlobStore.appender`): each request writes
its bytes at its offset while it holds an exclusive ``flock`` on the file — one writer at a
time, in any process on the machine; the lock goes with a process that dies — and the blob
becomes the file's as it is once every byte is in: no copy. File I/O runs in worker threads
so the event loop never waits on the disk.

Each hand-off to a worker thread costs about as much as writing 64 KiB, so bytes cross in
batches of about a MiB: a write gathers the incoming chunks and hands each batch to two
worker threads at once — one hashes it (SHA-256), the other writes it; each takes about as
long — while the next batch is gathered, and a read fetches the next MiB while the current
one is sent. hashlib and file I/O release the GIL, so the disk, the hash and the event
loop's socket work overlap. A read takes what the page cache holds on the event loop
itself, without waiting for the disk (``preadv(RWF_NOWAIT)``, Linux: a copy of a MiB, about
what framing it for gRPC costs), and goes to the threads only for the rest: a hand-off
per MiB was about 0.15 CPU-seconds per GB of a gRPC download (the copy's block of a MiB
reuses freed pages: see :mod:`file_service.allocator`). Memory stays bounded: two
batches of a write, three chunks of a read (the one sent, the one read ahead from the disk,
the buffer the cache is read into).
An appender's write can return once its last batch is written, leaving the hash of that
batch to finish while the caller records the part (``digest_behind``).

The thread that writes a batch then asks the kernel to start writing it to the disk
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``, on Linux: it does not wait for the disk), so
the disk works while the next batches arrive and the fsync that makes a blob durable
finds little left to do — without it that fsync wrote the whole blob after its last byte
came, about a fifth of a 256 MiB upload's time on this kind of disk. Durability is
unchanged: the fsync still decides.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final

from file_service.storage.base import (
    BlobKey,
    BlobStat,
    Chunk,
    Hash,
    WrittenBlob,
    byte_range,
    check_key,
)
from file_service.storage.errors import BlobBusy, BlobNotFound, StorageUnavailable

TEMP_PREFIX = ".tmp-"
#: The largest chunk a read yields, and about how many bytes a write hands a thread at once.
LOCAL_CHUNK_SIZE: Final = 1 << 20
#: How many bytes a compose copies or hashes in one call.
COPY_STEP: Final = 8 << 20
#: ``sync_file_range``'s flag: start writing the range's dirty pages, without waiting.
SYNC_FILE_RANGE_WRITE: Final = 2
#: The most bytes one ``write`` call hands the kernel (see :func:`_write_all`).
WRITE_SLICE: Final = 256 * 1024
#: ``preadv``'s flag for a read of what the page cache holds only (Linux; None elsewhere).
_RWF_NOWAIT: Final[int | None] = getattr(os, "RWF_NOWAIT", None)


class LocalBlobStore:
    """A :class:`~file_service.storage.base.BlobStore` in a directory it creates if missing.

    ``chunk_size`` bounds the chunks :meth:`read` yields and sets the batches :meth:`write`
    hands a worker thread (see the module docstring). ``appends`` off stores each part of
    an upload as a blob of its own and composes them, as on S3 (for tests of that way).
    """

    def __init__(
        self, root: Path, *, chunk_size: int = LOCAL_CHUNK_SIZE, appends: bool = True
    ) -> None:
        self.root = root.resolve()
        self.chunk_size = chunk_size
        self.appends = appends

    #: What ``write(durable=False)`` stored is in the page cache, not yet on the disk.
    unsynced_writes = True

    def _path(self, key: BlobKey) -> Path:
        path = self.root / check_key(key)
        # check_key already refuses '..' and absolute keys; this guards the invariant.
        if not path.resolve().is_relative_to(self.root):
            raise StorageUnavailable(f"blob key {key!r} resolves outside the store's root")
        return path

    async def write(
        self,
        key: BlobKey,
        chunks: AsyncIterable[Chunk],
        *,
        hashed: bool = True,
        digest: Hash | None = None,
        durable: bool = True,
    ) -> WrittenBlob:
        path = self._path(key)
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            file = await asyncio.to_thread(open, temp, "xb")
        except OSError as exc:
            raise StorageUnavailable(f"cannot write blob {key!r}: {exc}") from exc
        if digest is None and hashed:
            digest = hashlib.sha256()
        writer = _BatchWriter(file, self.chunk_size, digest)
        try:
            async for chunk in chunks:
                await writer.add(chunk)
            sha256 = await writer.finish(sync=durable)
            await asyncio.to_thread(_rename, temp, path, durable)
        except BaseException as exc:
            await asyncio.shield(writer.discard(temp))
            if isinstance(exc, OSError):
                raise StorageUnavailable(f"cannot write blob {key!r}: {exc}") from exc
            raise
        return WrittenBlob(key=key, size=writer.size, sha256=sha256)

    async def compose(
        self, key: BlobKey, parts: Sequence[BlobKey], *, sha256: str | None = None
    ) -> WrittenBlob:
        path = self._path(key)
        sources = [self._path(part) for part in parts]
        temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        # The kernel copies (no byte enters Python) while a second thread hashes the parts
        # from their pages (mmap: no copy either), unless their hash is known already.
        copying = asyncio.ensure_future(asyncio.to_thread(_concatenate, sources, temp))
        hashing = asyncio.ensure_future(
            asyncio.to_thread(_hash_files, [(source, None) for source in sources])
            if sha256 is None
            else _known(sha256)
        )
        try:
            await asyncio.wait([copying, hashing])  # never cancels them: see below
            size, sha256 = copying.result(), hashing.result()
            await asyncio.to_thread(_rename, temp, path, True)
        except BaseException as exc:
            # The threads must be done with the temporary file before it goes (and the
            # error of the other one is superseded by this one).
            for future in (copying, hashing):
                await asyncio.shield(_settled(future))
            await asyncio.shield(asyncio.to_thread(temp.unlink, missing_ok=True))
            if isinstance(exc, FileNotFoundError) and exc.filename != str(temp):
                raise BlobNotFound(f"a part of blob {key!r} is missing: {exc}") from exc
            if isinstance(exc, OSError):
                raise StorageUnavailable(f"cannot compose blob {key!r}: {exc}") from exc
            raise
        return WrittenBlob(key=key, size=size, sha256=sha256)

    @asynccontextmanager
    async def appender(self, key: BlobKey) -> AsyncIterator[LocalAppender]:
        path = self._path(key)
        # Opening, locking and closing the file touch no data, only its inode (cached after
        # the first request of an upload): done here, not in a worker thread, which a
        # request in many PATCHes paid twice each — a hand-off took 1-3 ms on a busy machine,
        # longer than the calls themselves.
        try:
            file = _open_locked(path)
        except BlockingIOError as exc:
            raise BlobBusy(f"blob {key!r} is being written by another request") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot write blob {key!r}: {exc}") from exc
        appender = LocalAppender(key, file, self.chunk_size)
        try:
            yield appender
        finally:
            file.close()  # flushed already (no thread writes to it any more); releases the lock

    async def open_file(self, key: BlobKey) -> BinaryIO:
        path = self._path(key)
        try:
            return await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no blob {key!r}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key!r}: {exc}") from exc

    async def sha256(self, key: BlobKey, size: int) -> str:
        path = self._path(key)
        try:
            return await asyncio.to_thread(_hash_files, [(path, size)])
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no blob {key!r}") from exc
        except (OSError, ValueError) as exc:  # ValueError: shorter than ``size`` (mmap)
            raise StorageUnavailable(f"cannot read blob {key!r}: {exc}") from exc

    async def read(
        self, key: BlobKey, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no blob {key!r}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key!r}: {exc}") from exc
        loop = asyncio.get_running_loop()
        ahead: asyncio.Future[bytes] | None = None
        try:
            start, end = byte_range(os.fstat(file.fileno()).st_size, offset, length)
            buffer = memoryview(bytearray(min(self.chunk_size, end - start)))
            position = start
            while position < end:
                size = min(self.chunk_size, end - position)
                chunk = None if ahead is not None else _read_cached(file, buffer[:size], position)
                if chunk is None:  # from the disk, in a worker thread
                    if ahead is None:
                        ahead = _read_at(loop, file, position, size)
                    chunk = await asyncio.shield(ahead)
                    ahead = None
                    if not chunk:
                        raise StorageUnavailable(f"blob {key!r} was cut short while read")
                    following = min(self.chunk_size, end - position - len(chunk))
                    if following > 0:  # read ahead while the caller sends this chunk
                        ahead = _read_at(loop, file, position + len(chunk), following)
                position += len(chunk)
                yield chunk
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key!r}: {exc}") from exc
        finally:
            if ahead is not None:  # the thread must be done with the file before it closes
                await _settled(ahead)
            file.close()

    async def sync(self, key: BlobKey) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(_sync_file, path)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no blob {key!r}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot sync blob {key!r}: {exc}") from exc

    async def stat(self, key: BlobKey) -> BlobStat:
        path = self._path(key)
        try:
            info = await asyncio.to_thread(path.stat)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"no blob {key!r}") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot stat blob {key!r}: {exc}") from exc
        return BlobStat(key=key, size=info.st_size)

    async def exists(self, key: BlobKey) -> bool:
        path = self._path(key)
        return await asyncio.to_thread(path.is_file)

    async def delete(self, key: BlobKey) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(_unlink, path, self.root)
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete blob {key!r}: {exc}") from exc

    async def delete_tree(self, prefix: BlobKey) -> int:
        path = self._path(prefix)

        def remove() -> int:
            if not path.is_dir():
                return 0
            count = sum(
                1 for p in path.rglob("*") if p.is_file() and not p.name.startswith(TEMP_PREFIX)
            )
            shutil.rmtree(path)
            return count

        try:
            return await asyncio.to_thread(remove)
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete the blobs under {prefix!r}: {exc}") from exc

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot create the files directory {self.root}: {exc}"
            ) from exc
        if not await asyncio.to_thread(os.access, self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"the files directory {self.root} is not writable")


class LocalAppender:
    """The one writer of a blob (a :class:`~file_service.storage.base.BlobAppender`), holding
    its file open and locked."""

    def __init__(self, key: BlobKey, file: BinaryIO, batch: int) -> None:
        self.key = key
        self._file = file
        self._batch = batch
        #: The blob's size when the writer got it.
        self.size = os.fstat(file.fileno()).st_size
        #: The hashing of the last write_at's last batch, when it was left behind.
        self._hashing: asyncio.Future[None] | None = None

    async def write_at(
        self,
        offset: int,
        chunks: AsyncIterable[Chunk],
        *,
        hashed: bool = True,
        digest: Hash | None = None,
        digest_behind: bool = False,
    ) -> WrittenBlob:
        await self.digested()  # its digest may be this one (not so in Keel's use)
        if digest is None and hashed:
            digest = hashlib.sha256()
        self._file.seek(offset)  # nothing buffered: an lseek
        writer = _BatchWriter(self._file, self._batch, digest, offset)
        try:
            async for chunk in chunks:
                await writer.add(chunk)
            if digest_behind and digest is not None:
                self._hashing = await writer.finish_writing()
                sha256 = ""
            else:
                sha256 = await writer.finish(sync=False, close=False)
        except BaseException as exc:
            await asyncio.shield(writer.settle())
            if isinstance(exc, OSError):
                raise StorageUnavailable(f"cannot write blob {self.key!r}: {exc}") from exc
            raise
        self.size = max(self.size, offset + writer.size)
        return WrittenBlob(key=self.key, size=writer.size, sha256=sha256)

    async def digested(self) -> None:
        hashing, self._hashing = self._hashing, None
        if hashing is not None:
            await hashing

    async def truncate(self, size: int) -> None:
        try:
            await asyncio.to_thread(self._file.truncate, size)
        except OSError as exc:
            raise StorageUnavailable(f"cannot truncate blob {self.key!r}: {exc}") from exc
        self.size = size


class _BatchWriter:
    """Hashes and writes a blob's chunks to ``file`` in batches of about ``batch`` bytes, each
    in one worker-thread call, one batch in flight while the next is gathered."""

    def __init__(self, file: BinaryIO, batch: int, digest: Hash | None, start: int = 0) -> None:
        self._file = file
        self._batch = batch
        self._digest = digest
        #: Where in the file the first byte goes.
        self._start = start
        self._gathered: list[Chunk] = []
        self._gathered_size = 0
        #: The batch being hashed and written (two calls, one thread each).
        self._in_flight: list[asyncio.Future[None]] = []
        #: Bytes handed over so far.
        self.size = 0

    async def add(self, chunk: Chunk) -> None:
        self._gathered.append(chunk)
        self._gathered_size += len(chunk)
        if self._gathered_size >= self._batch:
            await self._hand_over()

    async def finish(self, *, sync: bool, close: bool = True) -> str:
        """Write what is left, flush, fsync (when ``sync``) and close (when ``close``); the
        SHA-256 of every byte (hex). The thread that writes the last batch ends with the
        flush: one hand-off fewer per request (a tus upload makes one at each PATCH)."""
        await self._hand_over(then=partial(_flush_and_close if close else _flush, self._file, sync))
        await self._wait_in_flight()
        return self._digest.hexdigest() if self._digest is not None else ""

    async def finish_writing(self) -> asyncio.Future[None] | None:
        """Write what is left and flush (not synced, not closed); return once every byte is
        written, leaving the digest to take the last batch behind: the future it answers
        (None when nothing is hashed) ends when the digest has taken every byte. Saves the
        caller the wait for the last batch's hash (hashing a MiB takes longer than writing
        it to the page cache) while it does what comes next."""
        hashing = await self._hand_over(partial(_flush, self._file, False), hash_behind=True)
        writing = self._in_flight[0]
        await asyncio.wait([writing])
        writing.result()
        return hashing

    async def settle(self) -> None:
        """Wait until no thread writes to the file any more."""
        for future in self._in_flight:
            await _settled(future)

    async def discard(self, temp: Path) -> None:
        """Close and remove the temporary file, once no thread writes to it any more."""
        await self.settle()
        await asyncio.to_thread(_close_and_unlink, self._file, temp)

    async def _hand_over(
        self, then: Callable[[], None] | None = None, *, hash_behind: bool = False
    ) -> asyncio.Future[None] | None:
        """Hand the gathered batch to the threads; the writing one calls ``then`` after it
        (even with no batch). With ``hash_behind``, only the previous batch's write is
        waited for, and the batch's hashing follows the previous batch's (the digest takes
        the batches in order): the future of that hashing is returned (None without one)."""
        previous_hash: asyncio.Future[None] | None = None
        if hash_behind and self._in_flight:
            writing, *hashing = self._in_flight
            await asyncio.wait([writing])
            writing.result()
            previous_hash = hashing[0] if hashing else None
        else:
            await self._wait_in_flight()
        if not self._gathered and then is None:
            return None
        pieces, self._gathered, self._gathered_size = self._gathered, [], 0
        position = self._start + self.size
        self.size += sum(len(piece) for piece in pieces)
        loop = asyncio.get_running_loop()
        # Hashing and writing a MiB take about as long each: two threads do them at once.
        write = partial(_write_all, self._file, pieces, position, then)
        self._in_flight = [loop.run_in_executor(None, write)]
        if self._digest is None or not (pieces or previous_hash is not None):
            return None
        hashed: asyncio.Future[None]
        if hash_behind:
            hashed = asyncio.ensure_future(_hash_after(previous_hash, self._digest, pieces))
        else:
            hashed = loop.run_in_executor(None, _hash_all, self._digest, pieces)
        self._in_flight.append(hashed)
        return hashed

    async def _wait_in_flight(self) -> None:
        if self._in_flight:
            # asyncio.wait does not cancel them: a cancelled caller must not mark as done a
            # write its thread is still doing (discard waits for it before closing the file).
            await asyncio.wait(self._in_flight)
            done, self._in_flight = self._in_flight, []
            for future in done:
                future.result()


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait until a worker thread's call is over, whatever its outcome (an error there is
    superseded by the one being handled)."""
    await asyncio.wait([future])
    if not future.cancelled():
        future.exception()


def _write_all(
    file: BinaryIO, pieces: list[Chunk], position: int, then: Callable[[], None] | None
) -> None:
    """Write ``pieces`` (the file is at ``position``), start their way to the disk, then
    call ``then``.

    A piece is written :data:`WRITE_SLICE` bytes at a time (no copy: views of it). For a
    write of a MiB the page cache takes large folios, blocks of contiguous free pages as
    large as the write; memory freed lately is rarely free in such blocks, so they come
    from memory left free for longer, which a virtual machine that reports free memory to
    its host (free page reporting, as on the benchmark machine) has handed back — and
    every one of its pages then costs a fault in the host when the bytes are copied in.
    Writes of 256 KiB take smaller folios, from memory freed lately: there, the writing
    threads' system time during a gRPC upload (1 MiB chunks) that followed another
    server's went from 1.8-2.3 to 0.3-0.6 CPU-s per GB, and 256 MiB written in a plain loop
    took 0.22-0.37 s of system time per GiB instead of 0.3-2.7. The bytes and what reaches
    the disk are the same; the syscalls are four times as many (microseconds per MiB)."""
    for piece in pieces:
        if len(piece) <= WRITE_SLICE:
            file.write(piece)
            continue
        view = memoryview(piece)
        for start in range(0, len(view), WRITE_SLICE):
            file.write(view[start : start + WRITE_SLICE])
    if pieces:
        # From the batch's first byte to the end of the file (what the file object still
        # buffers, a few KiB at most, is left to the fsync).
        start_writeback(file.fileno(), position)
    if then is not None:
        then()


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE: Final = _sync_file_range()


def start_writeback(descriptor: int, position: int) -> None:
    """Ask the kernel to start writing the file's dirty pages from ``position`` to its end
    to the disk, and return without waiting (a hint: a failure, or a system without
    ``sync_file_range``, only leaves the work to the next fsync). ctypes releases the GIL
    for the call."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(descriptor, position, 0, SYNC_FILE_RANGE_WRITE)


def _hash_all(digest: Hash, pieces: list[Chunk]) -> None:
    for piece in pieces:
        digest.update(piece)


async def _hash_after(
    previous: asyncio.Future[None] | None, digest: Hash, pieces: list[Chunk]
) -> None:
    """Hash ``pieces`` into ``digest`` in a worker thread once ``previous`` (the hashing of
    the bytes before them) is done."""
    if previous is not None:
        await asyncio.wait([previous])  # not cancelled with this task: a thread runs it
        previous.result()
    if pieces:
        await asyncio.get_running_loop().run_in_executor(None, _hash_all, digest, pieces)


async def _known(sha256: str) -> str:
    return sha256


def _concatenate(sources: list[Path], temp: Path) -> int:
    """Copy the files ``sources`` one after the other into the new file ``temp``, fsynced;
    the bytes copied."""
    size = 0
    temp.parent.mkdir(parents=True, exist_ok=True)
    with open(temp, "xb") as out:
        for source in sources:
            with open(source, "rb") as part:
                size += _copy(part, out)
        out.flush()
        os.fsync(out.fileno())
    return size


def _copy(source: BinaryIO, out: BinaryIO) -> int:
    """Append all of ``source`` to ``out``: in the kernel (``copy_file_range``) where the
    file system allows it, else through a buffer."""
    copied = 0
    try:
        while count := os.copy_file_range(source.fileno(), out.fileno(), COPY_STEP):
            copied += count
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        shutil.copyfileobj(source, out, LOCAL_CHUNK_SIZE)  # continues from both positions
        copied = source.tell()
    return copied


def _hash_files(sources: list[tuple[Path, int | None]]) -> str:
    """The SHA-256 (hex) of the files ``sources`` one after the other: of each ``(path,
    size)``, its first ``size`` bytes (None: all of it)."""
    digest = hashlib.sha256()
    for source, size in sources:
        with open(source, "rb") as part:
            length = os.fstat(part.fileno()).st_size if size is None else size
            if length == 0:
                continue  # an empty file cannot be mapped
            with mmap.mmap(part.fileno(), length, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    for start in range(0, len(view), COPY_STEP):
                        digest.update(view[start : start + COPY_STEP])  # releases the GIL
                finally:
                    view.release()
    return digest.hexdigest()


def _read_at(
    loop: asyncio.AbstractEventLoop, file: BinaryIO, position: int, size: int
) -> asyncio.Future[bytes]:
    return loop.run_in_executor(None, os.pread, file.fileno(), size, position)


def _read_cached(file: BinaryIO, buffer: memoryview, position: int) -> bytes | None:
    """The file's bytes from ``position`` that the page cache holds (as many as ``buffer``
    takes, or fewer), read through ``buffer`` without waiting for the disk; None when it
    holds not even the first, at the end of the file, or where such reads are not
    supported: a worker thread reads them then."""
    if _RWF_NOWAIT is None:
        return None
    try:
        count = os.preadv(file.fileno(), [buffer], position, _RWF_NOWAIT)
    except OSError:  # BlockingIOError: not cached; EOPNOTSUPP: not on this file system
        return None
    return bytes(buffer[:count]) if count else None


def _open_locked(path: Path) -> BinaryIO:
    """The file at ``path`` (created if missing) open for writing, with an exclusive
    ``flock``; raises ``BlockingIOError`` when another open file holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.fdopen(descriptor, "r+b")
    except BaseException:
        os.close(descriptor)
        raise


def _flush(file: BinaryIO, sync: bool) -> None:
    file.flush()
    if sync:
        os.fsync(file.fileno())


def _flush_and_close(file: BinaryIO, sync: bool) -> None:
    with file:
        file.flush()
        if sync:
            os.fsync(file.fileno())


def _sync_file(path: Path) -> None:
    """fsync the file at ``path`` and its directory (its name)."""
    _sync_path(path)
    _sync_path(path.parent)


def _unlink(path: Path, root: Path) -> None:
    """Remove the blob's file, and its directory if that is an upload's parts directory
    (``…-parts``) left empty: no upload leaves an empty directory behind."""
    path.unlink(missing_ok=True)
    parent = path.parent
    if parent != root and parent.name.endswith("-parts"):
        try:
            parent.rmdir()
        except OSError:
            pass  # not empty (more parts), or already gone


def _close_and_unlink(file: BinaryIO, temp: Path) -> None:
    file.close()
    temp.unlink(missing_ok=True)


def _rename(temp: Path, path: Path, durable: bool) -> None:
    os.replace(temp, path)
    if durable:
        _sync_path(path.parent)


def _sync_path(path: Path) -> None:
    """fsync the file or directory at ``path``."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
