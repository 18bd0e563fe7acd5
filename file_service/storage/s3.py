"""Blobs as objects in an S3-compatible bucket, through aiobotocore.

The client is built by the caller (see :func:`file_service.storage.build_blob_store`) and
handed in; nothing connects at import time. A write of less than one part is a single
``PutObject``; a longer one is a multipart upload of ``part_size`` parts (S3's minimum is
5 MiB), so memory holds at most one part. A failed or cancelled multipart write is aborted,
so no parts are left billed in the bucket. Reads are ranged ``GetObject`` calls whose body is
streamed in chunks of at most ``chunk_size``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from file_service.storage.base import (
    DEFAULT_CHUNK_SIZE,
    BlobKey,
    BlobStat,
    Chunk,
    Hash,
    WrittenBlob,
    byte_range,
    check_key,
)
from file_service.storage.errors import BlobNotFound, StorageError, StorageUnavailable

DEFAULT_PART_SIZE: Final = 8 * 1024 * 1024
MIN_PART_SIZE: Final = 5 * 1024 * 1024
_NOT_FOUND_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})


class S3BlobStore:
    """A :class:`~file_service.storage.base.BlobStore` in one bucket of an S3 client."""

    #: An object S3 stored is durable: ``write``'s ``durable`` changes nothing here.
    unsynced_writes = False

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self._client = client
        self.bucket = bucket
        self.part_size = part_size
        self.chunk_size = chunk_size

    async def write(
        self,
        key: BlobKey,
        chunks: AsyncIterable[Chunk],
        *,
        hashed: bool = True,
        digest: Hash | None = None,
        durable: bool = True,
    ) -> WrittenBlob:
        check_key(key)
        if digest is None and hashed:
            digest = hashlib.sha256()
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                if digest is not None:
                    digest.update(chunk)
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        created = await self._client.create_multipart_upload(
                            Bucket=self.bucket, Key=key
                        )
                        upload_id = created["UploadId"]
                    part = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
            size = sum(p["Size"] for p in parts) + len(buffer)
            if upload_id is None:
                await self._client.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer))
            else:
                if buffer:
                    last = await self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer))
                    parts.append(last)
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"ETag": p["ETag"], "PartNumber": p["PartNumber"]} for p in parts]
                    },
                )
        except BaseException as exc:
            if upload_id is not None:
                await asyncio.shield(self._abort(key, upload_id))
            if isinstance(exc, ClientError | BotoCoreError):
                raise _storage_error(exc, key, "write") from exc
            raise
        return WrittenBlob(
            key=key, size=size, sha256=digest.hexdigest() if digest is not None else ""
        )

    async def compose(
        self, key: BlobKey, parts: Sequence[BlobKey], *, sha256: str | None = None
    ) -> WrittenBlob:
        # Streamed through this process (S3's UploadPartCopy would need parts of 5 MiB or
        # more), hashed on the way unless the hash is known.
        async def concatenated() -> AsyncIterator[bytes]:
            for part in parts:
                async for chunk in self.read(part):
                    yield chunk

        written = await self.write(key, concatenated(), hashed=sha256 is None)
        return written if sha256 is None else replace(written, sha256=sha256)

    async def _upload_part(
        self, key: BlobKey, upload_id: str, number: int, body: bytes
    ) -> dict[str, Any]:
        answer = await self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return {"ETag": answer["ETag"], "PartNumber": number, "Size": len(body)}

    async def _abort(self, key: BlobKey, upload_id: str) -> None:
        # Best effort: the write's own error is the one to report. A failed abort leaves
        # parts that a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes.
        try:
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError):
            pass

    async def read(
        self, key: BlobKey, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        stat = await self.stat(key)
        start, end = byte_range(stat.size, offset, length)
        if start == end:
            return
        try:
            answer = await self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(self.chunk_size):
                    yield chunk
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, key, "read") from exc

    async def stat(self, key: BlobKey) -> BlobStat:
        check_key(key)
        try:
            answer = await self._client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, key, "stat") from exc
        return BlobStat(key=key, size=int(answer["ContentLength"]))

    async def sync(self, key: BlobKey) -> None:
        await self.stat(key)  # nothing to sync; a missing blob is still an error

    async def exists(self, key: BlobKey) -> bool:
        try:
            await self.stat(key)
        except BlobNotFound:
            return False
        return True

    async def delete(self, key: BlobKey) -> None:
        check_key(key)
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, key, "delete") from exc

    async def presigned_get(
        self, key: BlobKey, *, expires_in: int, content_type: str, content_disposition: str
    ) -> str:
        """A URL from which anyone may GET the blob (with ``Range``) for ``expires_in``
        seconds, answered with these ``Content-Type`` and ``Content-Disposition`` headers;
        signed by this client's credentials (SigV4: at most 7 days), so S3 refuses it once
        altered or expired. The endpoint must be reachable by whoever gets the URL."""
        check_key(key)
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition,
        }
        try:
            url: str = await self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in
            )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, key, "presign") from exc
        return url

    async def delete_tree(self, prefix: BlobKey) -> int:
        check_key(prefix)
        under = f"{prefix}/"
        count = 0
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=under
            )
            async for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:  # a page holds at most 1,000 keys: one DeleteObjects call
                    await self._client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                    )
                    count += len(keys)
            uploads = await self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=under)
            for upload in uploads.get("Uploads", []):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, prefix, "delete the blobs under") from exc
        return count

    async def check(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"cannot reach bucket {self.bucket!r}: {exc}") from exc


def _storage_error(exc: ClientError | BotoCoreError, key: BlobKey, action: str) -> StorageError:
    """The storage error a botocore error means: not found, or the backend failed."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in _NOT_FOUND_CODES:
            return BlobNotFound(f"no blob {key!r}")
    return StorageUnavailable(f"cannot {action} blob {key!r}: {exc}")
