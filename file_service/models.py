"""What the file service stores and the limits it keeps, independent of gRPC and SQL.

A file's life::

    PENDING ──(bytes complete, checked)──▶ READY ──(DeleteFile)──▶ DELETED ──▶ purged
       │                                                              ▲
       └──────────(upload expired unused, or terminated)──────────────┘

A pending file is one whose bytes are still arriving (a tus upload, an upload URL); its
``upload_offset`` says how many have been stored, in parts (:class:`UploadPart`). A deleted
file keeps its metadata; its blobs (the file, its thumbnail, any parts) are removed by the
purge that follows (``purge_time`` set once they are gone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

#: The media type of a file whose type is neither given nor recognised.
OCTET_STREAM: Final = "application/octet-stream"
#: The most parts one upload may be sent in (the last part always fits): each is a row and
#: a blob to assemble and remove, so tiny requests must not add up without end.
MAX_PARTS_PER_UPLOAD: Final = 10_000


class FileState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A small image made from an image file (EXIF stripped), stored under ``blob_key``."""

    blob_key: str
    content_type: str
    width: int
    height: int
    size: int


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file's row.

    ``size`` is the declared size while pending (0 if not declared) and the real size once
    ready; ``sha256`` is empty until ready. ``expire_time`` is when a pending upload stops
    being accepted (None once ready).
    """

    id: str
    tenant_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    user_id: str
    metadata: dict[str, Any]
    state: FileState
    blob_key: str
    create_time: datetime
    upload_offset: int = 0
    expire_time: datetime | None = None
    ready_time: datetime | None = None
    delete_time: datetime | None = None
    purge_time: datetime | None = None
    thumbnail: Thumbnail | None = None


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file about to be created pending (its id and blob key chosen by the service)."""

    id: str
    tenant_id: str
    filename: str
    content_type: str
    #: The declared size; 0 when not declared (a gRPC stream without a size).
    size: int
    user_id: str
    metadata: dict[str, Any]
    blob_key: str
    create_time: datetime
    #: When the upload stops being accepted.
    expire_time: datetime
    #: The SHA-256 the uploader declared (checked when the bytes are complete), or "".
    declared_sha256: str = ""


@dataclass(frozen=True, slots=True)
class UploadPart:
    """Bytes ``[offset, offset + size)`` of a pending upload, stored as one blob."""

    file_id: str
    offset: int
    size: int
    blob_key: str


@dataclass(frozen=True, slots=True)
class Usage:
    """What a tenant's files take: bytes and count of pending and ready files."""

    bytes: int = 0
    files: int = 0


@dataclass(frozen=True, slots=True)
class FileLimits:
    """The bounds every tenant's files are held to (``KEEL_FILES_*``)."""

    max_file_bytes: int = 1 << 30
    max_tenant_bytes: int = 10 << 30
    max_tenant_files: int = 100_000
    #: Media types (``image/png``) or families (``image/*``) accepted; ``*/*`` accepts all.
    allowed_types: tuple[str, ...] = ("*/*",)
    #: Types a download URL may show inline; every other type is served as an attachment
    #: (so no HTML or SVG ever renders from Keel's origin).
    inline_types: tuple[str, ...] = field(
        default=("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")
    )
