"""The file service's rules: what may be stored, how bytes become a READY file, and when
blobs go away. The gRPC servicer and the HTTP endpoints (tus, upload URLs, downloads) are
thin faces over :class:`FileService`.

How bytes arrive:

- **A stream** (gRPC ``UploadFile``): the bytes go straight to the file's blob as they come
  — never more than a chunk in memory — counted against the declared size and the maximum
  file size as they pass; the first bytes are kept to sniff the type.
- **Parts** (tus ``PATCH``, the upload URL's ``PUT``): each request's bytes are recorded as
  a part with its offset by a conditional update (so two processes offering the same offset
  cannot both win). On local disk every part is written into one blob, at its offset, by
  one request at a time (a lock on the blob; the offset is read again under it), and that
  blob becomes the file's. On S3 each part is a blob of its own; when the last byte arrives
  the parts are composed into the file's blob and removed. A request cut off mid-way keeps
  what arrived.

Either way the file becomes READY only after its bytes pass every check — size and SHA-256
as declared, the type sniffed from the bytes on the tenant's allowlist, an image that
decodes within the pixel limit (its thumbnail made) — and the tenant's quota holds. A
refused file leaves no blob and no visible file: it is marked deleted and purged at once.

Deleted and expired files lose their blobs in :meth:`FileService.sweep`, which every
file-service process may run at once (deleting a blob twice is harmless; the rows change
by conditional updates).
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, BinaryIO, Final

from prometheus_client import Counter, Gauge

from file_service import images, sniff
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
from file_service.models import (
    OCTET_STREAM,
    FileLimits,
    FileState,
    NewFile,
    StoredFile,
    Thumbnail,
    UploadPart,
)
from file_service.per_upload import RecentUploads, RunningHashes
from file_service.storage import (
    AppendingBlobStore,
    BlobAppender,
    BlobBusy,
    BlobKey,
    BlobNotFound,
    BlobStore,
    Chunk,
    FileBlobStore,
    InvalidRange,
    StorageError,
    WrittenBlob,
)
from file_service.store import After, FileStore
from file_service.web.backend import Variant
from service_kit.clock import Clock, utcnow
from service_kit.errors import KeelError, OutOfRange, ResourceExhausted, Unavailable
from service_kit.ratelimit import RateLimiter
from service_kit.validation import Violations, new_id

log = logging.getLogger(__name__)

BYTES_RECEIVED = Counter(
    "keel_file_bytes_received_total", "File bytes received from uploaders (streams and parts)."
)
BYTES_SENT = Counter("keel_file_bytes_sent_total", "File bytes sent to downloaders.")
UPLOADS_IN_PROGRESS = Gauge(
    "keel_file_uploads_in_progress", "Upload streams and parts being received now."
)
FILES_REFUSED = Counter(
    "keel_files_refused_total", "Uploads refused after their bytes arrived, by reason.", ["reason"]
)

DEFAULT_UPLOAD_TTL: Final = timedelta(hours=24)
MAX_UPLOAD_TTL: Final = timedelta(days=7)
MAX_FILENAME_LENGTH: Final = 255
MAX_TYPE_LENGTH: Final = 255
#: Images decoded for thumbnails at once in a process: each may take a few hundred MiB
#: while it decodes (up to images.MAX_PIXELS), so they queue rather than add up.
THUMBNAILS_AT_ONCE: Final = 2
#: How many expired uploads and deleted files one sweep handles at most.
SWEEP_BATCH: Final = 200


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What an uploader says about a file before its bytes."""

    filename: str
    content_type: str = ""
    #: The size in bytes; 0 when not declared (streams only; upload URLs need it).
    size: int = 0
    user_id: str = ""
    metadata: dict[str, Any] | None = None
    #: The SHA-256 as lowercase hex, checked on arrival; "" when not declared.
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class _StoredPart:
    """A part just stored: what the blob store wrote, and its first bytes (to sniff)."""

    written: WrittenBlob
    head: bytes


class _Counted:
    """Passes chunks through, counting them, keeping the first bytes (to sniff the type)
    and refusing more than ``limit`` bytes."""

    def __init__(
        self,
        chunks: AsyncIterable[Chunk],
        limit: int,
        what: str,
        refusal: Callable[[str], KeelError] = InvalidFile,
    ) -> None:
        self._chunks = chunks
        self._limit = limit
        self._what = what
        self._refusal = refusal
        self.size = 0
        self.head = b""

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        async for chunk in self._chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self._limit:
                raise self._refusal(f"{self._what}: more than {self._limit} bytes")
            if len(self.head) < sniff.HEAD_BYTES:
                self.head += chunk[: sniff.HEAD_BYTES - len(self.head)]
            BYTES_RECEIVED.inc(len(chunk))
            yield chunk


class FileService:
    """The files of every tenant: metadata in ``store``, bytes in ``blobs``."""

    def __init__(
        self,
        store: FileStore,
        blobs: BlobStore,
        limits: FileLimits,
        *,
        clock: Clock = utcnow,
        default_upload_ttl: timedelta = DEFAULT_UPLOAD_TTL,
        rate_limiter: RateLimiter | None = None,
        uploads_per_minute: int = 600,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self.limits = limits
        self._clock = clock
        self._default_ttl = default_upload_ttl
        self._limiter = rate_limiter
        self._uploads_per_minute = uploads_per_minute
        self._decoding = asyncio.Semaphore(THUMBNAILS_AT_ONCE)
        self._running = RunningHashes()
        self._recent = RecentUploads()

    # -- reading ------------------------------------------------------------------------

    async def get_file(self, tenant_id: str, file_id: str) -> StoredFile:
        """The file in any state. Raises ``FileNotFound``."""
        found = await self._store.get(tenant_id, file_id)
        if found is None:
            raise FileNotFound(file_id)
        return found

    async def get_upload(self, tenant_id: str, file_id: str, *, offset: int) -> StoredFile:
        """The upload about to take bytes at ``offset``: as the last request of this process
        that moved it left it, when that was to ``offset`` (its row not read again: see
        :class:`~file_service.per_upload.RecentUploads`); else as :meth:`get_file` reads it.
        Raises ``FileNotFound``."""
        kept = self._recent.take(tenant_id, file_id, offset)
        return kept if kept is not None else await self.get_file(tenant_id, file_id)

    async def list_files(
        self, tenant_id: str, *, user_id: str | None, after: After, limit: int
    ) -> list[StoredFile]:
        """Pending and ready files, newest first."""
        return await self._store.list(tenant_id, user_id=user_id, after=after, limit=limit)

    async def ready_file(self, tenant_id: str, file_id: str) -> StoredFile:
        """The file if it is READY. Raises ``FileNotFound``, ``FileNotReady``."""
        file = await self.get_file(tenant_id, file_id)
        if file.state is not FileState.READY:
            raise FileNotReady(f"file {file_id} is {file.state.value}, not ready")
        return file

    async def read(
        self, file: StoredFile, *, variant: Variant, offset: int, length: int | None
    ) -> AsyncIterator[bytes]:
        """The bytes of a READY file (or its thumbnail) in chunks; the first chunk is fetched
        before this returns, so a missing blob or a bad range raises here."""
        key = self._variant_key(file, variant)
        chunks = aiter(self._blobs.read(key, offset=offset, length=length))
        try:
            first = await anext(chunks, b"")
        except BlobNotFound as exc:
            # Deleted between the row's read and this one.
            raise FileNotReady(f"file {file.id} is no longer stored") from exc
        except InvalidRange as exc:
            raise OutOfRange(f"file {file.id} has {file.size} bytes: {exc}") from exc
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        return _prepend(first, chunks)

    async def send_file(
        self,
        file: StoredFile,
        *,
        variant: Variant,
        offset: int,
        length: int,
        send: Callable[[BinaryIO, int, int], Awaitable[None]],
    ) -> bool:
        """Hand ``send`` the open file of a READY file's blob (or its thumbnail's) with
        ``offset`` and ``length``, when the store keeps blobs as files here (local disk: the
        caller can ``sendfile``), and answer True; False, doing nothing, when it does not
        (S3: use :meth:`read`). Raises ``FileNotReady`` (also when the blob is gone)."""
        if not isinstance(self._blobs, FileBlobStore):
            return False
        key = self._variant_key(file, variant)
        try:
            opened = await self._blobs.open_file(key)
        except BlobNotFound as exc:
            raise FileNotReady(f"file {file.id} is no longer stored") from exc
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        try:
            await send(opened, offset, length)
        finally:
            await asyncio.to_thread(opened.close)
        BYTES_SENT.inc(length)
        return True

    def _variant_key(self, file: StoredFile, variant: Variant) -> BlobKey:
        if file.state is not FileState.READY:
            raise FileNotReady(f"file {file.id} is {file.state.value}, not ready")
        if variant == "thumbnail":
            if file.thumbnail is None:
                raise FileNotFound(file.id, f"file {file.id} has no thumbnail")
            return BlobKey(file.thumbnail.blob_key)
        return BlobKey(file.blob_key)

    # -- uploading ----------------------------------------------------------------------

    async def upload(
        self, tenant_id: str, info: FileInfo, chunks: AsyncIterable[Chunk]
    ) -> StoredFile:
        """Store a streamed file and return it READY (see the module docstring). Raises
        ``InvalidFile`` (nothing kept), ``QuotaExceeded``."""
        file = await self._create(tenant_id, info, ttl=self._default_ttl, size_required=False)
        if info.size:
            counted = _Counted(chunks, info.size, f"file {file.id} declared {info.size} bytes")
        else:
            # Undeclared: nothing is reserved, so stop at what the quota has left (checked
            # again, race-free, when the file becomes READY), not only at the file maximum.
            room = self.limits.max_tenant_bytes - (await self._store.usage(tenant_id)).bytes
            if room < self.limits.max_file_bytes:
                what = f"the tenant's files may take {max(0, room)} bytes more"
                counted = _Counted(chunks, max(0, room), what, QuotaExceeded)
            else:
                limit = self.limits.max_file_bytes
                counted = _Counted(chunks, limit, f"the largest file allowed is {limit} bytes")
        try:
            try:
                with UPLOADS_IN_PROGRESS.track_inprogress():
                    written = await self._blobs.write(BlobKey(file.blob_key), counted)
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            return await self._finish(file, written, counted.head, info.sha256)
        except BaseException as exc:
            _count_refusal(exc)
            await self._discard(file)
            raise

    async def create_upload(
        self,
        tenant_id: str,
        *,
        user_id: str,
        filename: str,
        content_type: str,
        size: int,
        metadata: dict[str, Any],
        ttl: timedelta | None = None,
        sha256: str = "",
    ) -> StoredFile:
        """A PENDING file whose ``size`` bytes arrive later in parts (:meth:`append`)."""
        info = FileInfo(filename, content_type, size, user_id, metadata, sha256)
        return await self._create(tenant_id, info, ttl=ttl or self._default_ttl, size_required=True)

    async def append(
        self,
        tenant_id: str,
        file_id: str,
        offset: int,
        chunks: AsyncIterable[Chunk],
        *,
        sha256: bytes | None = None,
        known: StoredFile | None = None,
    ) -> StoredFile:
        """Store the bytes of ``chunks`` as the part at ``offset`` of a pending upload; the
        file after, READY when it was the last part (see
        :class:`~file_service.web.backend.FileBackend`). ``known``: the file as the caller
        just read it (saves reading it again)."""
        file = known if known is not None else await self.get_file(tenant_id, file_id)
        if file.state is FileState.READY and offset == file.size:
            return file  # a retry of the end (its answer was lost; a HEAD): it is done
        self._check_open(file, offset)
        try:
            file = await self._append(file, offset, chunks, sha256)
        except FileNotReady as exc:
            # Completed, terminated or expired since ``file`` was read (or as this process
            # last knew it): answered as a request that came after it would have been.
            now = await self.get_file(file.tenant_id, file.id)
            closed = self._closed(now, offset) if now.state is not FileState.PENDING else None
            if closed is None:
                raise
            raise closed from exc
        self._recent.keep_file(file)  # the next request of the upload starts from it
        return file

    async def _append(
        self, file: StoredFile, offset: int, chunks: AsyncIterable[Chunk], sha256: bytes | None
    ) -> StoredFile:
        appending = _appending(self._blobs)
        if file.upload_offset < file.size and appending is not None:
            appended = await self._append_into(appending, file, offset, chunks, sha256)
            if appended is not None:
                file = appended
                if file.state is FileState.READY or file.upload_offset < file.size:
                    return file
                return await self._complete(file)
        if file.upload_offset < file.size:
            file, stored = await self._add_part(file, offset, chunks, sha256)
            if stored is not None and stored.written.size == file.size:
                # One request brought the whole file (a PUT, a tus client's one PATCH): its
                # part becomes the file as it is, without a second copy.
                return await self._complete_whole(file, stored)
        if file.upload_offset == file.size:
            # The last part is in (here, or by a request whose completion failed): finish.
            return await self._complete(file)
        return file

    async def terminate(self, tenant_id: str, file_id: str) -> None:
        """Abandon a pending upload; its parts are removed."""
        file = await self.get_file(tenant_id, file_id)
        if file.state is not FileState.PENDING:
            raise FileNotReady(f"file {file.id} is {file.state.value}, not an upload in progress")
        await self._discard(file)

    # -- deleting -----------------------------------------------------------------------

    async def delete_file(self, tenant_id: str, file_id: str) -> StoredFile:
        """Mark the file deleted and remove its blobs (the sweep retries what fails)."""
        self._recent.forget(tenant_id, file_id)
        deleted = await self._store.delete(tenant_id, file_id, now=self._clock())
        if deleted.purge_time is None:
            await self._purge([(deleted, await self._store.parts(tenant_id, file_id))])
        return deleted

    async def sweep(self) -> tuple[int, int]:
        """Expire abandoned uploads and purge the blobs of deleted files; return how many of
        each. Safe in several processes at once."""
        expired = await self._store.expire_uploads(self._clock(), limit=SWEEP_BATCH)
        purged = await self._store.unpurged(limit=SWEEP_BATCH)
        await self._purge(purged)
        return len(expired), len(purged)

    async def purge_tenant(self, tenant_id: str) -> int:
        """Remove every blob of a deleted tenant (its rows go with the tenant purge); return
        how many there were. Safe to repeat."""
        try:
            removed = await self._blobs.delete_tree(BlobKey(tenant_id))
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        log.info(
            "a deleted tenant's files are removed", extra={"tenant_id": tenant_id, "blobs": removed}
        )
        return removed

    # -- the steps ----------------------------------------------------------------------

    async def _create(
        self, tenant_id: str, info: FileInfo, *, ttl: timedelta, size_required: bool
    ) -> StoredFile:
        await self._admit(tenant_id)
        v = Violations()
        v.text("filename", info.filename, max_length=MAX_FILENAME_LENGTH)
        filename = posixpath.basename(info.filename.replace("\\", "/"))
        v.check(
            not info.filename.strip() or (bool(filename.strip()) and filename not in (".", "..")),
            "filename",
            "must name a file, not a directory",
        )
        v.check(
            not any(ord(c) < 32 or ord(c) == 127 for c in info.filename),
            "filename",
            "must not contain control characters",
        )
        v.check(info.size >= 0, "size_bytes", "must not be negative")
        if size_required:
            v.check(info.size > 0, "size_bytes", "is required (the exact size of the file)")
        v.check(
            info.size <= self.limits.max_file_bytes,
            "size_bytes",
            f"is {info.size}; the largest file allowed is {self.limits.max_file_bytes} bytes",
        )
        v.text("content_type", info.content_type, max_length=MAX_TYPE_LENGTH, required=False)
        declared = info.content_type.strip().lower() or OCTET_STREAM
        v.check(
            sniff.allowed(declared, self.limits.allowed_types) or declared == OCTET_STREAM,
            "content_type",
            f"{declared!r} is not an allowed type ({_allowed(self.limits)})",
        )
        sha = info.sha256.strip().lower()
        v.check(
            not sha or (len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)),
            "sha256",
            "must be 64 lowercase hex digits",
        )
        v.check(
            timedelta(0) < ttl <= MAX_UPLOAD_TTL,
            "ttl_seconds",
            f"must be between 1 and {int(MAX_UPLOAD_TTL.total_seconds())}",
        )
        v.raise_if_any(InvalidFile)
        now = self._clock()
        file_id = new_id()
        return await self._store.create_pending(
            NewFile(
                id=file_id,
                tenant_id=tenant_id,
                filename=filename,
                content_type=declared,
                size=info.size,
                user_id=info.user_id,
                metadata=dict(info.metadata or {}),
                blob_key=f"{tenant_id}/{file_id}",
                create_time=now,
                expire_time=now + ttl,
                declared_sha256=sha,
            ),
            self.limits,
        )

    async def _admit(self, tenant_id: str) -> None:
        """Take one of the tenant's uploads per minute, or raise ``ResourceExhausted``."""
        if self._limiter is None:
            return
        per_minute = self._uploads_per_minute
        wait = await self._limiter.acquire(
            f"files:uploads:{tenant_id}", per_minute / 60.0, max(1, per_minute // 6)
        )
        if wait > 0:
            raise ResourceExhausted(
                f"this tenant may start {per_minute} uploads a minute; retry in {wait:.1f} s",
                retry_after=wait,
            )

    def _check_open(self, file: StoredFile, offset: int) -> None:
        """Raise unless ``file`` is an upload in progress that takes bytes at ``offset``
        (see :meth:`_closed`)."""
        closed = self._closed(file, offset)
        if closed is not None:
            raise closed

    def _closed(self, file: StoredFile, offset: int) -> KeelError | None:
        """Why ``file`` takes no bytes at ``offset``, or None when it does: the same answer
        for every transport (tus maps them to 409 and 410).

        - ``OffsetMismatch``: it is at another offset — its size, once READY (its client
          then asks where it is, and is done);
        - ``UploadExpired``: deleted (terminated, refused) or out of time — it never takes
          another byte.
        """
        if file.state is FileState.READY:
            return OffsetMismatch(file.size, offset)
        expired = file.expire_time is not None and file.expire_time <= self._clock()
        if file.state is not FileState.PENDING or expired:
            return UploadExpired(f"the upload of file {file.id} has expired or was terminated")
        if offset != file.upload_offset:
            return OffsetMismatch(file.upload_offset, offset)
        return None

    async def _add_part(
        self,
        file: StoredFile,
        offset: int,
        chunks: AsyncIterable[Chunk],
        sha256: bytes | None,
    ) -> tuple[StoredFile, _StoredPart | None]:
        """Store and record one part; the file after, and the part (None when no byte
        arrived)."""
        key = BlobKey(f"{file.blob_key}-parts/{offset:016d}-{secrets.token_hex(4)}")
        counted = _Counted(chunks, file.size - offset, f"file {file.id} is {file.size} bytes")
        # The running hash of the parts before this one, if this process hashed them: it
        # goes on through this part, and the composition need not read them all again.
        # With a checksum to check, the part is hashed on its own instead.
        running = self._running.take(file.tenant_id, file.id, offset) if sha256 is None else None
        try:
            with UPLOADS_IN_PROGRESS.track_inprogress():
                # Not synced (see verify_upload): a part is made durable only if it becomes
                # the file's blob; parts composed into one are copied into a synced blob.
                written = await self._blobs.write(
                    key, counted, hashed=sha256 is not None, digest=running, durable=False
                )
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        if sha256 is not None and bytes.fromhex(written.sha256) != sha256:
            await self._blobs.delete(key)
            raise ChecksumMismatch("the body's SHA-256 is not the one in Upload-Checksum")
        if written.size == 0:
            await self._blobs.delete(key)
            return file, None
        part = UploadPart(file.id, offset, written.size, key)
        try:
            new_offset = await self._store.add_part(part, file.tenant_id, now=self._clock())
        except BaseException:
            await self._blobs.delete(key)
            raise
        if running is not None:
            self._running.keep(file.tenant_id, file.id, offset + written.size, running)
        return replace(file, upload_offset=new_offset), _StoredPart(written, counted.head)

    async def _append_into(
        self,
        blobs: AppendingBlobStore,
        file: StoredFile,
        offset: int,
        chunks: AsyncIterable[Chunk],
        sha256: bytes | None,
    ) -> StoredFile | None:
        """Write the bytes of ``chunks`` into the upload's one blob at ``offset`` and record
        them as a part; the file after (not completed). None when the upload's earlier
        parts are blobs of their own (stored before this way was used): the caller stores
        this one so too."""
        key = _data_key(file)
        try:
            async with blobs.appender(key) as appender:
                now = file
                if appender.size != offset:
                    # Bytes past the offset (a request that held the lock moved the upload
                    # on, or one killed mid-way left them) or fewer: the upload as it is now.
                    # (Only the lock's holder changes the blob, and a refused part is cut
                    # back off, so a blob that ends at the offset means it is current.)
                    found = await self._store.get(file.tenant_id, file.id)
                    if found is None or found.state is FileState.DELETED:
                        await self._delete_blob(key)  # the lock made it anew: nothing to keep
                    if found is None:
                        raise FileNotFound(file.id)
                    now = found
                if now.state is FileState.READY and offset == now.size:
                    return now
                self._check_open(now, offset)
                if appender.size < offset:
                    # The bytes before ``offset`` are not in the blob: parts stored as blobs
                    # of their own, or lost by a crash of the machine.
                    parts = await self._store.parts(now.tenant_id, now.id)
                    if any(part.blob_key != key for part in parts):
                        if appender.size == 0:
                            await self._delete_blob(key)
                        return None
                    intact = await self._intact(now, parts)
                    raise OffsetMismatch(intact.upload_offset, offset)
                return await self._write_part(appender, now, offset, chunks, sha256)
        except BlobBusy as exc:
            raise UploadBusy(f"another request is writing the upload of file {file.id}") from exc
        except StorageError as exc:
            raise _storage_failed(exc) from exc

    async def _write_part(
        self,
        appender: BlobAppender,
        file: StoredFile,
        offset: int,
        chunks: AsyncIterable[Chunk],
        sha256: bytes | None,
    ) -> StoredFile:
        """Write and record one part into the upload's blob (its writer held)."""
        counted = _Counted(chunks, file.size - offset, f"file {file.id} is {file.size} bytes")
        # As in _add_part: the running hash goes on through this part (none with a checksum).
        running = self._running.take(file.tenant_id, file.id, offset) if sha256 is None else None
        try:
            with UPLOADS_IN_PROGRESS.track_inprogress():
                # The running hash may take the last bytes while the part is recorded: it
                # is kept (below) only once it has taken them all.
                written = await appender.write_at(
                    offset,
                    counted,
                    hashed=sha256 is not None,
                    digest=running,
                    digest_behind=running is not None,
                )
            if sha256 is not None and bytes.fromhex(written.sha256) != sha256:
                raise ChecksumMismatch("the body's SHA-256 is not the one in Upload-Checksum")
            if written.size == 0:
                return file
            part = UploadPart(file.id, offset, written.size, written.key)
            new_offset = await self._store.add_part(part, file.tenant_id, now=self._clock())
        except BaseException:
            # Nothing of a refused or failed part is kept: the blob ends where the upload does.
            await asyncio.shield(self._cut_back(appender, offset))
            raise
        if running is not None:
            await appender.digested()
            self._running.keep(file.tenant_id, file.id, offset + written.size, running)
        return replace(file, upload_offset=new_offset)

    async def _cut_back(self, appender: BlobAppender, offset: int) -> None:
        try:
            if offset == 0:
                await self._blobs.delete(appender.key)
            elif appender.size > offset:
                await appender.truncate(offset)
        except StorageError:
            # What stays past the upload's offset is overwritten by the next part, or
            # removed with the upload.
            log.warning("could not cut an upload's blob back", extra={"key": appender.key})

    async def _complete_appended(self, file: StoredFile, blobs: AppendingBlobStore) -> StoredFile:
        """Finish an upload whose parts are all in its one blob (checked intact): that blob,
        synced, becomes the file's."""
        key = _data_key(file)
        known = self._running.take(file.tenant_id, file.id, file.size)

        async def finish() -> StoredFile:
            try:
                await blobs.sync(key)  # written unsynced
                head = await self._head([key])
                sha256 = known.hexdigest() if known is not None else None
                if sha256 is None:
                    sha256 = await blobs.sha256(key, file.size)
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            declared = await self._store.declared_sha256(file.tenant_id, file.id)
            return await self._finish(file, WrittenBlob(key, file.size, sha256), head, declared)

        return await self._settle(file, key, finish())

    async def _complete_whole(self, file: StoredFile, part: _StoredPart) -> StoredFile:
        """Finish an upload whose one part holds every byte: that blob becomes the file's."""

        async def finish() -> StoredFile:
            try:
                await self._blobs.sync(part.written.key)  # it was written unsynced
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            declared = await self._store.declared_sha256(file.tenant_id, file.id)
            return await self._finish(file, part.written, part.head, declared)

        return await self._settle(file, part.written.key, finish())

    async def _complete(self, file: StoredFile) -> StoredFile:
        """Assemble the parts into a blob of this attempt's own (several requests may
        complete the same upload at once: none may overwrite another's) and finish."""
        parts = await self._store.parts(file.tenant_id, file.id)
        intact = await self._intact(file, parts)
        if intact.state is FileState.READY:
            return intact  # another request completed it meanwhile
        if intact.upload_offset != file.size:
            # A part was lost (a crash of the machine): the client resumes from there.
            raise OffsetMismatch(intact.upload_offset, file.size)
        data, appending = _data_key(file), _appending(self._blobs)
        if appending is not None and all(p.blob_key == data for p in parts):
            return await self._complete_appended(file, appending)
        key = BlobKey(f"{file.blob_key}-{secrets.token_hex(4)}")
        part_keys = [BlobKey(part.blob_key) for part in parts]

        known = self._running.take(file.tenant_id, file.id, file.size)

        async def finish() -> StoredFile:
            try:
                head = await self._head(part_keys)
                written = await self._blobs.compose(
                    key, part_keys, sha256=known.hexdigest() if known is not None else None
                )
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            declared = await self._store.declared_sha256(file.tenant_id, file.id)
            return await self._finish(file, written, head, declared)

        ready = await self._settle(file, key, finish())
        if ready.blob_key == key:  # this attempt made it READY: its parts are done with
            for part in parts:
                await self._delete_blob(part.blob_key)
        return ready

    async def verify_upload(self, file: StoredFile) -> StoredFile:
        """The upload as its stored parts really are: ``file`` itself, unless a part it
        records is missing or short — possible only after a crash of the machine, since
        parts are not synced as they arrive (a crash of the process loses none of their
        bytes) — in which case the upload goes back to where its intact parts end, the
        damaged part and those after it removed. What a resuming client (tus HEAD) is told."""
        if file.state is not FileState.PENDING or not self._blobs.unsynced_writes:
            return file
        return await self._intact(file, await self._store.parts(file.tenant_id, file.id))

    async def _intact(self, file: StoredFile, parts: list[UploadPart]) -> StoredFile:
        """:meth:`verify_upload` with the upload's ``parts`` in hand."""
        if not self._blobs.unsynced_writes:
            return file
        data = _data_key(file)
        sizes: dict[str, int] = {}  # of each blob (the upload's one blob holds many parts)
        for part in parts:
            try:
                if part.blob_key not in sizes:
                    sizes[part.blob_key] = (await self._blobs.stat(BlobKey(part.blob_key))).size
                stored = sizes[part.blob_key]
                # A part in the upload's one blob ends within it; a blob of its own is the part.
                whole = (
                    stored >= part.offset + part.size
                    if part.blob_key == data
                    else (stored == part.size)
                )
            except BlobNotFound:
                whole = False
            except StorageError as exc:
                raise _storage_failed(exc) from exc
            if not whole:
                break
        else:
            return file
        self._running.forget(file.tenant_id, file.id)
        self._recent.forget(file.tenant_id, file.id)
        removed = await self._store.truncate_upload(
            file.tenant_id, file.id, offset=part.offset, was=file.upload_offset
        )
        if removed is None:  # another request moved it meanwhile: as it is now
            return await self.get_file(file.tenant_id, file.id)
        log.warning(
            "an upload lost bytes it had acknowledged (a crash of the machine?): it resumes"
            " from where its intact parts end",
            extra={"file_id": file.id, "was": file.upload_offset, "offset": part.offset},
        )
        for lost in removed:
            if lost.blob_key != data:  # the one blob stays: the next parts overwrite it
                await self._delete_blob(lost.blob_key)
        return replace(file, upload_offset=part.offset)

    async def _head(self, keys: list[BlobKey]) -> bytes:
        """The first bytes (to sniff the type) of the blobs ``keys`` one after the other."""
        head = b""
        for key in keys:
            async for chunk in self._blobs.read(key, length=sniff.HEAD_BYTES - len(head)):
                head += chunk
            if len(head) >= sniff.HEAD_BYTES:
                break
        return head

    async def _settle(
        self, file: StoredFile, written: BlobKey, finishing: Awaitable[StoredFile]
    ) -> StoredFile:
        """The end of one attempt to complete ``file`` (its bytes at ``written``):

        - READY by this attempt: the file;
        - any failure while another request made it READY (a race: it took the parts, or
          won ``mark_ready``): that file, this attempt's blob removed;
        - storage unavailable, or cancelled: the error, the parts kept for a retry;
        - refused (checksum, size, type, image, quota): the upload discarded, the error;
        - deleted meanwhile (expired, terminated): this attempt's blob removed, the error.
        """
        try:
            return await finishing
        except BaseException as exc:
            now = await self._store.get(file.tenant_id, file.id)
            if now is not None and now.state is FileState.READY:
                if written != now.blob_key:
                    await self._delete_blob(written)
                return now
            if isinstance(exc, Unavailable | asyncio.CancelledError):
                if "-parts/" not in written:  # a part stays, for the retry
                    await self._delete_blob(written)
                raise
            if now is not None and now.state is FileState.PENDING:
                _count_refusal(exc)
                await self._discard(file)
            await self._delete_blob(written)
            raise

    async def _finish(
        self, file: StoredFile, written: WrittenBlob, head: bytes, declared_sha256: str
    ) -> StoredFile:
        """Check the stored bytes and make the file READY (or raise; the caller discards)."""
        if file.size and written.size != file.size:
            raise InvalidFile(f"file {file.id} declared {file.size} bytes; {written.size} arrived")
        if declared_sha256 and written.sha256 != declared_sha256.lower():
            raise ChecksumMismatch(
                f"the bytes' SHA-256 is {written.sha256}, not the declared {declared_sha256}"
            )
        content_type = sniff.sniff(head, file.content_type, file.filename)
        if not sniff.allowed(content_type, self.limits.allowed_types):
            raise InvalidFile(
                f"the file's bytes are {content_type!r}, which is not an allowed type"
                f" ({_allowed(self.limits)})"
            )
        thumbnail = await self._thumbnail(file, written.key, content_type, written.size)
        try:
            return await self._store.mark_ready(
                file.tenant_id,
                file.id,
                size=written.size,
                sha256=written.sha256,
                content_type=content_type,
                thumbnail=thumbnail,
                limits=self.limits,
                now=self._clock(),
                blob_key=None if written.key == file.blob_key else written.key,
            )
        except BaseException:
            if thumbnail is not None:
                await self._delete_blob(thumbnail.blob_key)
            raise

    async def _thumbnail(
        self, file: StoredFile, key: BlobKey, content_type: str, size: int
    ) -> Thumbnail | None:
        if content_type not in images.IMAGE_TYPES:
            return None
        if size > images.MAX_IMAGE_BYTES:
            raise InvalidFile(
                f"images may be at most {images.MAX_IMAGE_BYTES} bytes (this one is {size})"
            )
        async with self._decoding:
            data = b"".join([chunk async for chunk in self._blobs.read(key)])
            try:
                made = await images.thumbnail(data)
            except images.ImageRefused as exc:
                raise InvalidFile(str(exc)) from exc
            del data
        if made is None:
            return None
        # A key of this attempt's own: two requests completing the same upload at once must
        # not remove each other's thumbnail when one of them loses.
        key = BlobKey(f"{file.blob_key}-thumbnail-{secrets.token_hex(4)}")

        async def one() -> AsyncIterator[bytes]:
            yield made.data

        try:
            stored = await self._blobs.write(key, one())
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        return Thumbnail(key, made.content_type, made.width, made.height, stored.size)

    async def _discard(self, file: StoredFile) -> None:
        """Make a refused or abandoned upload invisible and remove its blobs, now — if it is
        still pending: a file a concurrent completion made READY is left alone."""
        self._recent.forget(file.tenant_id, file.id)
        try:
            deleted = await self._store.abandon(file.tenant_id, file.id, now=self._clock())
            if deleted is None:
                return
            parts = await self._store.parts(file.tenant_id, file.id)
            await self._purge([(deleted, parts)])
        except Exception:
            # The row stays deleted-but-unpurged (or pending until it expires): the sweep
            # removes the blobs later.
            log.exception("could not discard a refused file", extra={"file_id": file.id})

    async def _purge(self, files: list[tuple[StoredFile, list[UploadPart]]]) -> None:
        by_tenant: dict[str, list[str]] = {}
        for file, parts in files:
            thumbnail = file.thumbnail.blob_key if file.thumbnail else f"{file.blob_key}-thumbnail"
            keys = [file.blob_key, thumbnail]
            keys += [part.blob_key for part in parts]
            try:
                for key in keys:
                    await self._blobs.delete(BlobKey(key))
            except StorageError:
                log.warning("could not remove a deleted file's blobs", extra={"file_id": file.id})
                continue
            by_tenant.setdefault(file.tenant_id, []).append(file.id)
        for tenant_id, ids in by_tenant.items():
            await self._store.mark_purged(tenant_id, ids, now=self._clock())

    async def _delete_blob(self, key: str) -> None:
        try:
            await self._blobs.delete(BlobKey(key))
        except StorageError:
            log.warning("could not remove a blob; the sweep will not see it", extra={"key": key})


def _appending(blobs: BlobStore) -> AppendingBlobStore | None:
    """``blobs`` if uploads write their parts into one blob there."""
    return blobs if isinstance(blobs, AppendingBlobStore) and blobs.appends else None


def _data_key(file: StoredFile) -> BlobKey:
    """The one blob an upload's parts are written into, on a store that can
    (:class:`~file_service.storage.AppendingBlobStore`)."""
    return BlobKey(f"{file.blob_key}-parts/data")


def _count_refusal(exc: BaseException) -> None:
    if isinstance(exc, KeelError) and not isinstance(exc, Unavailable):
        FILES_REFUSED.labels(type(exc).__name__).inc()


def _allowed(limits: FileLimits) -> str:
    return "allowed: " + ", ".join(limits.allowed_types)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        BYTES_SENT.inc(len(first))
        yield first
    async for chunk in rest:
        BYTES_SENT.inc(len(chunk))
        yield chunk


def _storage_failed(exc: StorageError) -> Unavailable:
    return Unavailable(f"the file storage failed: {exc}", retry_after=1.0)
