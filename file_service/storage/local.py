"""Blobs as files in a local directory (the embedded default, ``<KEEL_DATA_DIR>/files``).

A key ``a/b`` is the file ``<root>/a/b``. A write goes to ``.tmp-<random>`` in the target's
directory (never a valid key: segments start with a letter or digit), is fsynced, then
renamed over the target — atomic on one file system — and the directory is fsynced, so a
reader sees the old blob or the whole new one, and a crash leaves at most a temporary file.
File I/O runs in worker threads so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from file_service.storage.base import (
    DEFAULT_CHUNK_SIZE,
    BlobKey,
    BlobStat,
    WrittenBlob,
    byte_range,
    check_key,
)
from file_service.storage.errors import BlobNotFound, StorageUnavailable

TEMP_PREFIX = ".tmp-"


class LocalBlobStore:
    """A :class:`~file_service.storage.base.BlobStore` in a directory it creates if missing."""

    def __init__(self, root: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.root = root.resolve()
        self.chunk_size = chunk_size

    def _path(self, key: BlobKey) -> Path:
        path = self.root / check_key(key)
        # check_key already refuses '..' and absolute keys; this guards the invariant.
        if not path.resolve().is_relative_to(self.root):
            raise StorageUnavailable(f"blob key {key!r} resolves outside the store's root")
        return path

    async def write(self, key: BlobKey, chunks: AsyncIterable[bytes]) -> WrittenBlob:
        path = self._path(key)
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            file = await asyncio.to_thread(open, temp, "xb")
        except OSError as exc:
            raise StorageUnavailable(f"cannot write blob {key!r}: {exc}") from exc
        digest = hashlib.sha256()
        size = 0
        try:
            with file:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(file.write, chunk)
                await asyncio.to_thread(_flush_and_sync, file)
            await asyncio.to_thread(_rename_durably, temp, path)
        except BaseException as exc:
            await asyncio.shield(asyncio.to_thread(temp.unlink, missing_ok=True))
            if isinstance(exc, OSError):
                raise StorageUnavailable(f"cannot write blob {key!r}: {exc}") from exc
            raise
        return WrittenBlob(key=key, size=size, sha256=digest.hexdigest())

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
        with file:
            start, end = byte_range(os.fstat(file.fileno()).st_size, offset, length)
            await asyncio.to_thread(file.seek, start)
            remaining = end - start
            while remaining > 0:
                chunk = await asyncio.to_thread(file.read, min(self.chunk_size, remaining))
                if not chunk:
                    raise StorageUnavailable(f"blob {key!r} was cut short while read")
                remaining -= len(chunk)
                yield chunk

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
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete blob {key!r}: {exc}") from exc

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot create the files directory {self.root}: {exc}"
            ) from exc
        if not await asyncio.to_thread(os.access, self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"the files directory {self.root} is not writable")


def _flush_and_sync(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _rename_durably(temp: Path, path: Path) -> None:
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
