"""What the file service's HTTP endpoints (tus uploads, upload URLs, signed downloads) need
from the service: :class:`~file_service.service.FileService` plays this role.

Every method is scoped by ``tenant_id`` (another tenant's file raises ``FileNotFound``)
and raises the errors of :mod:`file_service.errors`, which the HTTP layer maps to statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, BinaryIO, Protocol

from file_service.models import StoredFile
from file_service.storage.base import Chunk
from service_kit.file_links import Variant

__all__ = ["FileBackend", "Variant"]


class FileBackend(Protocol):
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
        """A new PENDING file expecting exactly ``size`` bytes (``ttl`` None: the default
        upload lifetime). Raises ``InvalidFile`` (bad name/size/type, over the maximum file
        size), ``QuotaExceeded``."""
        ...

    async def get_file(self, tenant_id: str, file_id: str) -> StoredFile:
        """The file in any state. Raises ``FileNotFound``."""
        ...

    async def get_upload(self, tenant_id: str, file_id: str, *, offset: int) -> StoredFile:
        """The upload about to take bytes at ``offset``, perhaps as this process last left it
        rather than read anew (what may have changed since is checked again when its bytes
        are recorded: a request of an upload in many need not read it first). Raises
        ``FileNotFound``."""
        ...

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
        """Store the bytes of ``chunks`` at ``offset`` of a pending upload and return the file
        after: its ``upload_offset`` advanced by what arrived, READY once every byte has (the
        bytes then checked, typed and thumbnailed). If ``chunks`` ends early (the client went
        away) what arrived is kept — unless ``sha256`` (the digest of the whole body, tus
        checksum extension) was given and does not match, in which case nothing is kept and
        ``ChecksumMismatch`` is raised. Raises ``FileNotFound``, ``UploadExpired``
        (terminated, refused or out of time, also when that happened while the bytes
        arrived), ``OffsetMismatch`` (the upload is at another offset: its size once READY,
        also when another request completed it meanwhile), ``InvalidFile`` (more bytes than
        declared; bytes refused on completion: type not allowed, hash not the declared one),
        ``QuotaExceeded``, ``UploadBusy`` (another request is writing the upload's bytes).
        ``known`` is the file as the caller just read it, if it did (not read again)."""
        ...

    async def verify_upload(self, file: StoredFile) -> StoredFile:
        """The upload as its stored bytes really are: ``file``, or, when a crash of the
        machine lost bytes it had acknowledged, the file with the offset where its intact
        bytes end (what a HEAD reports). Raises ``Unavailable`` (storage)."""
        ...

    async def terminate(self, tenant_id: str, file_id: str) -> None:
        """Abandon a pending upload (its parts are removed). Raises ``FileNotFound``,
        ``FileNotReady`` (the file is not pending)."""
        ...

    async def send_file(
        self,
        file: StoredFile,
        *,
        variant: Variant,
        offset: int,
        length: int,
        send: Callable[[BinaryIO, int, int], Awaitable[None]],
    ) -> bool:
        """Call ``send(open file, offset, length)`` with the blob's file when the bytes are a
        file of this machine (so the kernel can send them) and answer True; False when they
        are not (then :meth:`read`). Raises ``FileNotReady`` as :meth:`read` does."""
        ...

    async def read(
        self, file: StoredFile, *, variant: Variant, offset: int, length: int | None
    ) -> AsyncIterator[bytes]:
        """The bytes ``[offset, offset + length)`` of a READY file or its thumbnail, in
        chunks; the first chunk is fetched before this returns, so a missing blob raises here
        (``FileNotReady``) rather than mid-response."""
        ...
