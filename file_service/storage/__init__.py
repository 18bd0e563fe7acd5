"""Blob storage of the file service: one small interface, a local and an S3 backend.

:class:`~file_service.storage.base.BlobStore` is the interface;
:class:`~file_service.storage.local.LocalBlobStore` and
:class:`~file_service.storage.s3.S3BlobStore` implement it, and :func:`build_blob_store`
picks one from :class:`service_kit.config.FileSettings`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from file_service.storage.base import (
    AppendingBlobStore,
    BlobAppender,
    BlobKey,
    BlobStat,
    BlobStore,
    Chunk,
    FileBlobStore,
    Hash,
    WrittenBlob,
    check_key,
)
from file_service.storage.errors import (
    BlobBusy,
    BlobNotFound,
    InvalidBlobKey,
    InvalidRange,
    StorageError,
    StorageUnavailable,
)
from file_service.storage.local import LocalBlobStore
from file_service.storage.s3 import S3BlobStore
from service_kit.config import FileSettings

__all__ = [
    "AppendingBlobStore",
    "BlobAppender",
    "BlobBusy",
    "BlobKey",
    "BlobNotFound",
    "BlobStat",
    "BlobStore",
    "Chunk",
    "FileBlobStore",
    "Hash",
    "InvalidBlobKey",
    "InvalidRange",
    "LocalBlobStore",
    "S3BlobStore",
    "StorageError",
    "StorageUnavailable",
    "WrittenBlob",
    "build_blob_store",
    "check_key",
]


@asynccontextmanager
async def build_blob_store(settings: FileSettings) -> AsyncIterator[BlobStore]:
    """The blob store the settings choose, open for the ``async with`` block.

    S3 when ``settings.s3_bucket`` is set (its client, with credentials from the usual
    ``AWS_*`` variables or files, is closed on exit), otherwise the local directory.
    """
    if settings.s3_bucket is None:
        yield LocalBlobStore(settings.local_dir)
        return
    config = AioConfig(s3={"addressing_style": "path"}) if settings.s3_endpoint_url else None
    async with get_session().create_client(
        "s3",
        region_name=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        config=config,
    ) as client:
        yield S3BlobStore(client, settings.s3_bucket)
