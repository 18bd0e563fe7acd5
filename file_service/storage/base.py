"""The interface every blob store implements, and the rules all of them share.

A blob is an immutable sequence of bytes under a key. Keys are relative, ``/``-separated
paths of safe segments (``tenant-id/file-id``), checked by :func:`check_key` in every
backend so that the same key is accepted or refused everywhere and none can escape the
local root (``..``, absolute paths, backslashes).

Memory is bounded on both paths: :meth:`BlobStore.write` consumes its chunks as they come
(holding at most one S3 part), and :meth:`BlobStore.read` yields chunks of at most the
store's ``chunk_size``. A write either completes whole or leaves nothing behind: no blob,
no temporary file, no pending multipart upload.

A resumable upload on S3 stores each part as a blob of its own and, once every byte is in,
composes them into the file's blob (:meth:`BlobStore.compose`). A store that can write a
blob at an offset (:class:`AppendingBlobStore`: local disk) takes every part of an upload
into one blob instead, which becomes the file's as it is: no byte is copied again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Final, NewType, Protocol, TypeAlias, runtime_checkable

from file_service.storage.errors import InvalidBlobKey, InvalidRange

BlobKey = NewType("BlobKey", str)
#: A piece of a blob's bytes on their way in: ``bytes``, or a ``memoryview`` of bytes received
#: (a gRPC upload's chunk, :mod:`file_service.wire`), which a store may keep only until
#: :meth:`BlobStore.write` returns.
Chunk: TypeAlias = bytes | memoryview
if TYPE_CHECKING:
    #: A running SHA-256 (``hashlib.sha256()``; the type exists for type checkers only).
    Hash: TypeAlias = hashlib._Hash
else:
    Hash = type(hashlib.sha256())

#: The largest chunk :meth:`BlobStore.read` yields unless a store is built with another.
DEFAULT_CHUNK_SIZE: Final = 64 * 1024
MAX_KEY_LENGTH: Final = 512
# A segment starts with a letter or digit, so ``.``, ``..`` and the local backend's
# ``.tmp-…`` files can never be keys.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class WrittenBlob:
    """What :meth:`BlobStore.write` stored: its size in bytes and SHA-256 (hex)."""

    key: BlobKey
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class BlobStat:
    """What a store knows of a stored blob without reading it."""

    key: BlobKey
    size: int


class BlobStore(Protocol):
    """Where file bytes live: a local directory or an S3 bucket."""

    #: The largest chunk :meth:`read` yields.
    chunk_size: int
    #: Whether a blob written with ``durable=False`` can be lost or cut short by a crash of
    #: the machine (not of the process) until :meth:`sync` (local disk: yes; S3: no, an
    #: object it stored is as durable as it gets).
    unsynced_writes: bool

    async def write(
        self,
        key: BlobKey,
        chunks: AsyncIterable[Chunk],
        *,
        hashed: bool = True,
        digest: Hash | None = None,
        durable: bool = True,
    ) -> WrittenBlob:
        """Store the bytes of ``chunks`` under ``key``, replacing any blob there.

        The blob becomes visible only once every chunk is stored. If ``chunks`` raises, or
        the write fails or is cancelled, nothing is left behind and the error propagates.
        The bytes are hashed into ``digest`` when given (a SHA-256 the caller keeps: the
        running hash of an upload's parts), else into a new one; ``WrittenBlob.sha256`` is
        that digest's. ``hashed=False`` (and no ``digest``) skips hashing (``sha256`` is
        then empty): a part of an upload is hashed when the parts are composed.
        Once this returns every process reads the whole blob; with ``durable`` (the
        default) it is also on disk, so it survives a crash of the machine — without, that
        takes a :meth:`sync` (see :attr:`unsynced_writes`).
        Raises :class:`InvalidBlobKey`, :class:`StorageUnavailable`.
        """
        ...

    async def sync(self, key: BlobKey) -> None:
        """Make the blob written under ``key`` with ``durable=False`` durable (as if it had
        been written with ``durable=True``). Raises :class:`BlobNotFound`,
        :class:`InvalidBlobKey`, :class:`StorageUnavailable`."""
        ...

    async def compose(
        self, key: BlobKey, parts: Sequence[BlobKey], *, sha256: str | None = None
    ) -> WrittenBlob:
        """Store under ``key`` the bytes of ``parts``, one after the other (the parts stay),
        and answer their size and SHA-256 — ``sha256`` when the caller knows it (it hashed
        the parts as they were written): then they are not read to hash them again.
        Whole or nothing, as :meth:`write`. Raises :class:`BlobNotFound` (a part is
        missing), :class:`InvalidBlobKey`, :class:`StorageUnavailable`.
        """
        ...

    def read(
        self, key: BlobKey, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield the bytes ``[offset, offset + length)`` in chunks of at most ``chunk_size``.

        ``length`` None (or reaching past the end) reads to the end; ``offset`` equal to the
        size yields nothing. Raises :class:`BlobNotFound`, :class:`InvalidRange` (offset past
        the end, negative offset or length), :class:`InvalidBlobKey`,
        :class:`StorageUnavailable` — on the first iteration.
        """
        ...

    async def stat(self, key: BlobKey) -> BlobStat:
        """The blob's size. Raises :class:`BlobNotFound`, :class:`InvalidBlobKey`."""
        ...

    async def exists(self, key: BlobKey) -> bool:
        """Whether a blob is stored under ``key``."""
        ...

    async def delete(self, key: BlobKey) -> None:
        """Remove the blob; deleting a missing blob is not an error."""
        ...

    async def delete_tree(self, prefix: BlobKey) -> int:
        """Remove every blob whose key starts with ``prefix`` + ``/`` (a tenant's, say) and
        return how many there were; unfinished writes under it are abandoned too.
        Raises :class:`InvalidBlobKey`, :class:`StorageUnavailable`."""
        ...

    async def check(self) -> None:
        """Whether the backend answers (for health): returns, or raises
        :class:`StorageUnavailable` saying why not (directory not writable, bucket missing
        or unreachable)."""
        ...


class BlobAppender(Protocol):
    """One writer of a blob, alone on it until it is closed (see
    :meth:`AppendingBlobStore.appender`)."""

    #: The blob it writes.
    key: BlobKey
    #: The blob's size in bytes as the writer found it, grown by what it wrote since.
    size: int

    async def write_at(
        self,
        offset: int,
        chunks: AsyncIterable[Chunk],
        *,
        hashed: bool = True,
        digest: Hash | None = None,
        digest_behind: bool = False,
    ) -> WrittenBlob:
        """Write the bytes of ``chunks`` into the blob from ``offset`` on (the blob grows as
        needed; bytes past what this writes stay as they were) and answer how many were
        written and their SHA-256 (hashed as :meth:`BlobStore.write` does). Not synced: a
        crash of the process loses none of them, a crash of the machine may until
        :meth:`BlobStore.sync`. If ``chunks`` raises, or the write fails or is cancelled,
        the bytes written so far stay in the blob and the error propagates.

        ``digest_behind`` (with a ``digest``): return once every byte is written, while
        ``digest`` may still be taking the last of them — ``WrittenBlob.sha256`` is then
        empty, and :meth:`digested` waits for it (what the caller does meanwhile, recording
        the part, overlaps the hashing). Raises :class:`StorageUnavailable`."""
        ...

    async def digested(self) -> None:
        """Wait until the ``digest`` of the last :meth:`write_at` with ``digest_behind`` has
        taken every byte it wrote (at once when none is behind). Until then nothing else may
        use that digest."""
        ...

    async def truncate(self, size: int) -> None:
        """Cut the blob to its first ``size`` bytes. Raises :class:`StorageUnavailable`."""
        ...


@runtime_checkable
class AppendingBlobStore(BlobStore, Protocol):
    """A blob store that writes into a blob at an offset: an upload's parts go into one blob
    (local disk). S3 objects cannot be written so; there each part is a blob."""

    #: Whether uploads use :meth:`appender` (off: each part is a blob, as on S3).
    appends: bool

    def appender(self, key: BlobKey) -> AbstractAsyncContextManager[BlobAppender]:
        """The one writer of ``key`` for the ``async with`` block (the blob is created empty
        if missing). Raises :class:`BlobBusy` when another writer, in any process, holds
        it (the lock goes with its process if that dies), :class:`InvalidBlobKey`,
        :class:`StorageUnavailable`."""
        ...

    async def sha256(self, key: BlobKey, size: int) -> str:
        """The SHA-256 (hex) of the blob's first ``size`` bytes. Raises
        :class:`BlobNotFound`, :class:`StorageUnavailable`."""
        ...


@runtime_checkable
class FileBlobStore(BlobStore, Protocol):
    """A blob store whose blobs are files of this machine, which a server can hand the
    kernel to send (``sendfile``) instead of reading them through Python."""

    async def open_file(self, key: BlobKey) -> BinaryIO:
        """The blob's file, open for reading (the caller closes it). Raises
        :class:`BlobNotFound`, :class:`InvalidBlobKey`, :class:`StorageUnavailable`."""
        ...


def check_key(key: str) -> BlobKey:
    """Return ``key`` as a :data:`BlobKey`, or raise :class:`InvalidBlobKey` saying why."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidBlobKey(f"a blob key must be 1 to {MAX_KEY_LENGTH} characters long")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidBlobKey(
                f"invalid blob key {key!r}: each /-separated segment must start with a letter"
                " or digit and hold only letters, digits, '.', '_' and '-' (no '..', no"
                " leading or doubled '/')"
            )
    return BlobKey(key)


def byte_range(size: int, offset: int, length: int | None) -> tuple[int, int]:
    """The ``(start, end)`` (end exclusive) a read of ``offset``/``length`` covers.

    Raises :class:`InvalidRange` for a negative offset or length, or an offset past ``size``.
    """
    if offset < 0 or (length is not None and length < 0):
        raise InvalidRange(f"offset and length must not be negative (got {offset}, {length})")
    if offset > size:
        raise InvalidRange(f"offset {offset} is past the end of the blob ({size} bytes)")
    end = size if length is None else min(size, offset + length)
    return offset, end
