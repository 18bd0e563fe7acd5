"""The ``FileStore`` role: what the file service needs from its database.
:class:`~file_service.store.SqlFileStore` plays it, on SQLite and PostgreSQL alike.

Every method taking ``tenant_id`` is scoped by it: another tenant's file is absent, exactly
like one that does not exist. State changes are conditional updates, so several
file-service processes may call any of them at once (two ``add_part`` at the same offset:
one wins, the other gets :class:`~file_service.errors.OffsetMismatch`; two purges of the
same file: both harmless).

Usage (bytes and files per tenant) is kept in one row per tenant, changed in the same
transaction as the file rows, with conditional updates that refuse to pass a limit — so
concurrent uploads cannot together exceed a quota.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from file_service.models import (
    MAX_PARTS_PER_UPLOAD,
    FileLimits,
    NewFile,
    StoredFile,
    Thumbnail,
    UploadPart,
    Usage,
)

#: A page position: (create_time, id) of the last file of the previous page.
After = tuple[datetime, str] | None


class FileStore(Protocol):
    async def create_pending(self, file: NewFile, limits: FileLimits) -> StoredFile:
        """Insert ``file`` PENDING and reserve its declared size and one file in the tenant's
        usage. Raises ``QuotaExceeded`` (nothing stored) when that passes
        ``limits.max_tenant_bytes`` or ``limits.max_tenant_files``."""
        ...

    async def get(self, tenant_id: str, file_id: str) -> StoredFile | None:
        """The file in any state, or None."""
        ...

    async def declared_sha256(self, tenant_id: str, file_id: str) -> str:
        """The SHA-256 the uploader declared when creating the file ("" if none)."""
        ...

    async def list(
        self, tenant_id: str, *, user_id: str | None, after: After, limit: int
    ) -> builtins.list[StoredFile]:
        """PENDING and READY files, newest first (create_time, then id, descending),
        strictly after ``after``; only ``user_id``'s when given."""
        ...

    async def add_part(
        self,
        part: UploadPart,
        tenant_id: str,
        *,
        now: datetime,
        max_parts: int = MAX_PARTS_PER_UPLOAD,
    ) -> int:
        """Record ``part`` (its blob already written) and advance the upload's offset by its
        size; return the new offset. Raises ``FileNotFound``, ``FileNotReady`` (not pending),
        ``UploadExpired`` (``expire_time`` <= ``now``), ``OffsetMismatch`` (the upload's
        offset is not ``part.offset``), ``InvalidFile`` (the part would pass the declared
        size, or it would be the ``max_parts``-th part without ending the upload). On any
        error nothing is recorded (the caller removes the part's blob)."""
        ...

    async def parts(self, tenant_id: str, file_id: str) -> builtins.list[UploadPart]:
        """The upload's parts in offset order."""
        ...

    async def truncate_upload(
        self, tenant_id: str, file_id: str, *, offset: int, was: int
    ) -> builtins.list[UploadPart] | None:
        """Take a PENDING upload whose offset is ``was`` back to ``offset`` (the start of one
        of its parts): the rows of that part and those after it go; return them (their
        blobs are the caller's to remove). None, changing nothing, when the file is not
        pending or its offset is not ``was`` any more (another request moved it)."""
        ...

    async def mark_ready(
        self,
        tenant_id: str,
        file_id: str,
        *,
        size: int,
        sha256: str,
        content_type: str,
        thumbnail: Thumbnail | None,
        limits: FileLimits,
        now: datetime,
        blob_key: str | None = None,
    ) -> StoredFile:
        """PENDING → READY with the checked size, hash and (sniffed) type; the parts' rows go
        (their blobs are the caller's to remove; ``blob_key``, when given, becomes the
        file's blob: a part that holds the whole file is kept as it is). Usage moves from
        the declared size to ``size``; raises ``QuotaExceeded`` (file still pending) if that
        passes the limit. Raises ``FileNotFound``, ``FileNotReady`` (not pending: e.g.
        deleted meanwhile)."""
        ...

    async def delete(self, tenant_id: str, file_id: str, *, now: datetime) -> StoredFile:
        """PENDING/READY → DELETED (delete_time = now), releasing its usage; deleting a
        deleted file returns it unchanged. Raises ``FileNotFound``."""
        ...

    async def abandon(self, tenant_id: str, file_id: str, *, now: datetime) -> StoredFile | None:
        """PENDING → DELETED (releasing its usage) and the file; None, changing nothing, when
        the file is not pending (gone, or READY: a concurrent completion won)."""
        ...

    async def expire_uploads(self, now: datetime, *, limit: int) -> builtins.list[StoredFile]:
        """Mark up to ``limit`` PENDING files whose ``expire_time`` <= ``now`` DELETED
        (releasing usage) and return them, across tenants."""
        ...

    async def unpurged(
        self, *, limit: int
    ) -> builtins.list[tuple[StoredFile, builtins.list[UploadPart]]]:
        """Up to ``limit`` DELETED files whose blobs are not purged yet, oldest deletion
        first, with any parts they still have, across tenants."""
        ...

    async def mark_purged(self, tenant_id: str, file_ids: Sequence[str], *, now: datetime) -> None:
        """Record that the blobs of these deleted files are gone (and drop their parts)."""
        ...

    async def usage(self, tenant_id: str) -> Usage:
        """What the tenant's pending and ready files take."""
        ...
