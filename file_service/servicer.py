"""``keel.files.v1.FileService``: protobuf in, :class:`~file_service.service.FileService`
call, protobuf out.

Checks that only concern the wire (ids, page sizes and tokens, the order of an upload
stream's messages, URL lifetimes) happen here; the rules of files are the service's.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from datetime import datetime, timedelta
from typing import Protocol, TypeAlias

import grpc
from keel.files.v1 import files_pb2 as pb

from file_service.errors import FileNotFound, InvalidFile
from file_service.models import FileState, StoredFile
from file_service.service import FileInfo, FileService
from file_service.web.backend import Variant
from service_kit.auth import current_tenant
from service_kit.clock import Clock, utcnow
from service_kit.protobuf import dict_of, struct, timestamp
from service_kit.validation import (
    Violations,
    decode_time_position,
    page_size,
    time_page,
    valid_id,
)

Context: TypeAlias = grpc.aio.ServicerContext

DEFAULT_URL_TTL = 900
MAX_URL_TTL = 86_400

_STATES = {
    FileState.PENDING: pb.FILE_STATE_PENDING,
    FileState.READY: pb.FILE_STATE_READY,
    FileState.DELETED: pb.FILE_STATE_DELETED,
}


class Links(Protocol):
    """Makes the signed URLs of files (:mod:`file_service.urls`, with the public base URL)."""

    def upload(self, file: StoredFile) -> tuple[str, Mapping[str, str]]:
        """The URL to which a pending file's bytes go, and the headers a request needs."""
        ...

    async def download(self, file: StoredFile, *, variant: Variant, expires_at: datetime) -> str:
        """A URL from which the file (or its thumbnail) can be fetched until ``expires_at``."""
        ...


def file_to_proto(file: StoredFile) -> pb.File:
    """The API's view of a stored file."""
    message = pb.File(
        id=file.id,
        filename=file.filename,
        content_type=file.content_type,
        size_bytes=file.size,
        sha256=file.sha256,
        user_id=file.user_id,
        metadata=struct(file.metadata),
        create_time=timestamp(file.create_time),
        state=_STATES[file.state],
    )
    if file.thumbnail is not None and file.state is FileState.READY:
        message.thumbnail.CopyFrom(
            pb.Thumbnail(
                content_type=file.thumbnail.content_type,
                width=file.thumbnail.width,
                height=file.thumbnail.height,
                size_bytes=file.thumbnail.size,
            )
        )
    return message


def _tenant_id() -> str:
    return current_tenant().tenant_id


def _ttl(v: Violations, value: int) -> timedelta:
    v.check(0 <= value <= MAX_URL_TTL, "ttl_seconds", f"must be between 0 and {MAX_URL_TTL}")
    return timedelta(seconds=value or DEFAULT_URL_TTL)


async def _chunks(
    first_after: AsyncIterator[pb.UploadFileRequest],
) -> AsyncIterator[bytes | memoryview]:
    """The chunks after the metadata: ``memoryview`` s of the received messages when
    :mod:`file_service.wire` parsed them, ``bytes`` when protobuf did."""
    async for message in first_after:
        if message.WhichOneof("payload") != "chunk":
            raise InvalidFile.for_field("metadata", "only the first message may carry metadata")
        yield message.chunk


class FileServicer:
    """The gRPC face of :class:`FileService`, registered by
    :func:`file_service.wire.add_to_server`."""

    def __init__(self, service: FileService, links: Links, *, clock: Clock = utcnow) -> None:
        self._service = service
        self._links = links
        self._clock = clock

    async def UploadFile(
        self, request_iterator: AsyncIterable[pb.UploadFileRequest], context: Context
    ) -> pb.UploadFileResponse:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidFile.for_field(
                "metadata", "the first message of an upload must carry the file's metadata"
            )
        meta = first.metadata
        info = FileInfo(
            filename=meta.filename,
            content_type=meta.content_type,
            size=meta.size_bytes,
            user_id=meta.user_id,
            metadata=dict_of(meta.metadata),
            sha256=meta.sha256,
        )
        stored = await self._service.upload(_tenant_id(), info, _chunks(messages))
        return pb.UploadFileResponse(file=file_to_proto(stored))

    async def DownloadFile(
        self, request: pb.DownloadFileRequest, context: Context
    ) -> AsyncIterator[pb.DownloadFileResponse | bytes]:
        """The file's metadata, then its chunks as plain ``bytes``, which
        :func:`file_service.wire.serialize_download_response` sends as chunk messages
        without copying them into protobuf."""
        v = Violations()
        v.uuid("id", request.id)
        v.check(request.offset >= 0, "offset", "must not be negative")
        v.check(request.length >= 0, "length", "must not be negative")
        v.raise_if_any()
        file = await self._service.ready_file(_tenant_id(), request.id)
        chunks = await self._service.read(
            file,
            variant="thumbnail" if request.thumbnail else "file",
            offset=request.offset,
            length=request.length or None,
        )
        yield pb.DownloadFileResponse(file=file_to_proto(file))
        async for chunk in chunks:
            yield chunk

    async def GetFile(self, request: pb.GetFileRequest, context: Context) -> pb.GetFileResponse:
        file = await self._service.get_file(_tenant_id(), valid_id("id", request.id))
        return pb.GetFileResponse(file=file_to_proto(file))

    async def ListFiles(
        self, request: pb.ListFilesRequest, context: Context
    ) -> pb.ListFilesResponse:
        limit = page_size(request.page_size)
        query = f"files:{request.user_id}"
        after = decode_time_position(request.page_token, query=query)
        found = await self._service.list_files(
            _tenant_id(), user_id=request.user_id or None, after=after, limit=limit + 1
        )
        page, token = time_page(found, limit, lambda f: (f.create_time, f.id), query=query)
        return pb.ListFilesResponse(files=[file_to_proto(f) for f in page], next_page_token=token)

    async def DeleteFile(
        self, request: pb.DeleteFileRequest, context: Context
    ) -> pb.DeleteFileResponse:
        file = await self._service.delete_file(_tenant_id(), valid_id("id", request.id))
        return pb.DeleteFileResponse(file=file_to_proto(file))

    async def CreateUploadUrl(
        self, request: pb.CreateUploadUrlRequest, context: Context
    ) -> pb.CreateUploadUrlResponse:
        v = Violations()
        ttl = _ttl(v, request.ttl_seconds)
        v.raise_if_any(InvalidFile)
        file = await self._service.create_upload(
            _tenant_id(),
            user_id=request.user_id,
            filename=request.filename,
            content_type=request.content_type,
            size=request.size_bytes,
            metadata=dict_of(request.metadata),
            ttl=ttl,
        )
        url, headers = self._links.upload(file)
        return pb.CreateUploadUrlResponse(
            url=url, file_id=file.id, expire_time=timestamp(file.expire_time), headers=headers
        )

    async def CreateDownloadUrl(
        self, request: pb.CreateDownloadUrlRequest, context: Context
    ) -> pb.CreateDownloadUrlResponse:
        v = Violations()
        v.uuid("id", request.id)
        ttl = _ttl(v, request.ttl_seconds)
        v.raise_if_any()
        file = await self._service.ready_file(_tenant_id(), request.id)
        variant: Variant = "thumbnail" if request.thumbnail else "file"
        if variant == "thumbnail" and file.thumbnail is None:
            raise FileNotFound(file.id, f"file {file.id} has no thumbnail")
        expires_at = self._clock().replace(microsecond=0) + ttl
        url = await self._links.download(file, variant=variant, expires_at=expires_at)
        return pb.CreateDownloadUrlResponse(url=url, expire_time=timestamp(expires_at))
