"""tus 1.0.0 uploads, and the upload URL's single PUT, over aiohttp.

Routes (see :mod:`file_service.web.app`)::

    OPTIONS /files/tus            what this server speaks (and the CORS preflight)
    POST    /files/tus            creation (+ creation-with-upload); client token
    HEAD    /files/tus/{id}       the upload's offset
    PATCH   /files/tus/{id}       bytes at an offset (+ checksum)
    DELETE  /files/tus/{id}       termination
    POST    /files/tus/{id}       PATCH or DELETE named by X-HTTP-Method-Override
    PUT     /files/tus/{id}       every byte at once, for plain clients of CreateUploadUrl

Bodies are streamed to :meth:`FileBackend.append` in the pieces aiohttp read from the
socket (up to 256 KiB each), never read whole. When the client goes away mid-body the chunks
simply end, so the service keeps what arrived (tus: "the Server SHOULD accept as many
bytes as possible") and the client resumes from there after a HEAD.

Every tus response carries ``Tus-Resumable: 1.0.0`` and ``Cache-Control: no-store`` (an
offset must never come from a cache).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from aiohttp import ClientPayloadError, StreamReader, web
from aiohttp.http_exceptions import PayloadEncodingError

from file_service.errors import OffsetMismatch, UploadExpired
from file_service.models import FileLimits, FileState, StoredFile
from file_service.urls import upload_url
from file_service.web import tus
from file_service.web.auth import UploadAuth
from file_service.web.backend import FileBackend
from file_service.web.errors import (
    BodyTooLarge,
    LengthRequired,
    TusHeaderError,
    UnsupportedBodyType,
    UnsupportedTusVersion,
)
from service_kit.clock import Clock, rfc3339
from service_kit.errors import KeelError

TUS_PATH: Final = "/files/tus"


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request's body in chunks; it ends, without an error, if the client goes away
    (the connection drops or the body is cut short of its length)."""
    content = request.content
    try:
        # Each piece as aiohttp read it: ``iter_chunked(n)`` and ``iter_any()`` join the
        # pieces waiting in its buffer into a new bytes (a copy of the body); the blob
        # store gathers pieces into batches itself.
        async for chunk, _ in content.iter_chunks():
            if chunk:
                yield chunk
    except (ClientPayloadError, ConnectionResetError, PayloadEncodingError):
        # aiohttp raises as soon as the connection is lost, even while bytes of the body
        # that arrived before (in order: they are the client's) wait in its buffer. Hand
        # those over too, so everything that reached the server is kept. The buffer is
        # bounded by aiohttp's flow control (it stops reading the socket past its limit).
        rest = _buffered(content)
        if rest:
            yield rest


def _buffered(content: StreamReader) -> bytes:
    """What ``content`` holds unread, ignoring the error it was failed with. Uses aiohttp's
    private ``_read_nowait`` (which, unlike ``read_nowait``, does not raise that error);
    without it, nothing."""
    read_nowait = getattr(content, "_read_nowait", None)
    if read_nowait is None:
        return b""
    try:
        data = read_nowait(-1)
    except Exception:  # an aiohttp whose internals differ: keep what was read before
        return b""
    return data if isinstance(data, bytes) else b""


async def add_tus_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: the headers of every response under ``/files/tus``."""
    if request.path == TUS_PATH or request.path.startswith(TUS_PATH + "/"):
        response.headers["Tus-Resumable"] = tus.VERSION
        response.headers["Cache-Control"] = "no-store"


class TusHandlers:
    """The request handlers of tus uploads and upload URLs."""

    def __init__(
        self,
        backend: FileBackend,
        auth: UploadAuth,
        limits: FileLimits,
        *,
        clock: Clock,
        public_base: str | None,
    ) -> None:
        self._backend = backend
        self._auth = auth
        self._limits = limits
        self._clock = clock
        self._public_base = public_base

    async def options(self, request: web.Request) -> web.Response:
        """What this server speaks; no credentials needed (tus discovery, CORS preflight)."""
        return web.Response(
            status=204,
            headers={
                "Tus-Version": tus.VERSION,
                "Tus-Extension": tus.EXTENSIONS,
                "Tus-Max-Size": str(self._limits.max_file_bytes),
                "Tus-Checksum-Algorithm": tus.CHECKSUM_ALGORITHMS,
            },
        )

    async def create(self, request: web.Request) -> web.Response:
        """POST /files/tus: a new upload of ``Upload-Length`` bytes for the token's user;
        201 with ``Location``. A body (creation-with-upload) is its first bytes."""
        _require_tus(request)
        creation = tus.parse_creation(
            request.headers.get("Upload-Length"), request.headers.get("Upload-Metadata")
        )
        with_body = _has_body(request)
        if with_body and not tus.is_offset_stream(request.headers.get("Content-Type")):
            raise UnsupportedBodyType(f"an upload's body must be {tus.OFFSET_OCTET_STREAM}")
        checksum = tus.parse_checksum(request.headers.get("Upload-Checksum"))
        if creation.size > self._limits.max_file_bytes:
            raise BodyTooLarge(f"files are at most {self._limits.max_file_bytes} bytes")
        if (request.content_length or 0) > creation.size:
            raise BodyTooLarge(f"the body passes the upload's {creation.size} bytes")
        user = self._auth.uploader(request.headers)
        file = await self._backend.create_upload(
            user.tenant_id,
            user_id=user.user_id,
            filename=creation.filename,
            content_type=creation.content_type,
            size=creation.size,
            metadata=creation.metadata,
        )
        location = upload_url(self._public_base or "", file.id)
        if with_body:
            try:
                file = await self._append(request, file, 0, checksum)
            except KeelError:
                # The client gets no Location with an error, so it could neither resume nor
                # terminate this upload: terminate it here, freeing what it reserved.
                await self._backend.terminate(file.tenant_id, file.id)
                raise
        return web.Response(status=201, headers={"Location": location, **_offset_headers(file)})

    async def head(self, request: web.Request) -> web.Response:
        """HEAD /files/tus/{id}: how many bytes the server has, to resume from."""
        _require_tus(request)
        file = await self._upload(request)
        self._check_open(file)
        file = await self._backend.verify_upload(file)
        if file.state is FileState.PENDING and file.upload_offset == file.size:
            # Every byte is in but the upload is not READY (its completion failed or was cut
            # short): complete it now, so a client that resumes from here finds its file
            # READY — or gets the error (a 503 to retry) rather than a false success.
            file = await self._backend.append(file.tenant_id, file.id, file.size, _nothing())
        return web.Response(status=200, headers=_offset_headers(file))

    async def patch(self, request: web.Request) -> web.Response:
        """PATCH /files/tus/{id}: the body's bytes at ``Upload-Offset``; 204 with the new
        offset."""
        _require_tus(request)
        if not tus.is_offset_stream(request.headers.get("Content-Type")):
            raise UnsupportedBodyType(f"a PATCH body must be {tus.OFFSET_OCTET_STREAM}")
        offset = tus.offset_header(request.headers.get("Upload-Offset"), "Upload-Offset")
        checksum = tus.parse_checksum(request.headers.get("Upload-Checksum"))
        file = await self._upload(request, offset=offset)
        file = await self._append(request, file, offset, checksum)
        return web.Response(status=204, headers=_offset_headers(file))

    async def terminate(self, request: web.Request) -> web.Response:
        """DELETE /files/tus/{id}: abandon the upload; its bytes are removed."""
        _require_tus(request)
        file = await self._upload(request)
        if file.state is FileState.DELETED:
            raise UploadExpired(f"the upload of file {file.id} is already gone")
        await self._backend.terminate(file.tenant_id, file.id)
        return web.Response(status=204)

    async def overridden(self, request: web.Request) -> web.Response:
        """POST /files/tus/{id}: the method ``X-HTTP-Method-Override`` names (for clients
        and proxies that cannot send PATCH or DELETE)."""
        method = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
        if method == "PATCH":
            return await self.patch(request)
        if method == "DELETE":
            return await self.terminate(request)
        raise web.HTTPMethodNotAllowed(request.method, ["HEAD", "PATCH", "DELETE", "PUT"])

    async def put(self, request: web.Request) -> web.Response:
        """PUT /files/tus/{id}: the whole file in one body, from offset 0 (what a client
        given only ``CreateUploadUrl``'s URL and headers does); 200 with the file as JSON.
        No ``Tus-Resumable`` is needed; ``Upload-Checksum`` is honoured."""
        length = request.content_length
        if length is None:
            raise LengthRequired("a PUT upload needs Content-Length")
        checksum = tus.parse_checksum(request.headers.get("Upload-Checksum"))
        file = await self._upload(request)
        self._check_open(file)
        if file.state is FileState.READY and length == file.size:
            # A retry of a PUT whose answer was lost: the file is there.
            if checksum is None or bytes.fromhex(file.sha256) == checksum:
                return web.json_response(_file_json(file))
        if file.state is FileState.PENDING and file.upload_offset != 0:
            raise OffsetMismatch(file.upload_offset, 0)
        if length != file.size:
            error = BodyTooLarge if length > file.size else TusHeaderError
            raise error(f"the upload is {file.size} bytes; Content-Length is {length}")
        file = await self._append(request, file, 0, checksum)
        return web.json_response(_file_json(file))

    async def _upload(self, request: web.Request, *, offset: int | None = None) -> StoredFile:
        return await self._auth.upload(
            self._backend, request.headers, request.match_info["id"], offset=offset
        )

    def _check_open(self, file: StoredFile) -> None:
        """Refuse an upload that can take no more bytes and never will (410)."""
        expired = file.expire_time is not None and file.expire_time <= self._clock()
        if file.state is FileState.DELETED or (file.state is FileState.PENDING and expired):
            raise UploadExpired(f"the upload of file {file.id} has expired or was terminated")

    async def _append(
        self, request: web.Request, file: StoredFile, offset: int, checksum: bytes | None
    ) -> StoredFile:
        """The body's bytes at ``offset``; the service says whether the upload takes them
        (OffsetMismatch 409, UploadExpired 410)."""
        length = request.content_length
        if length is not None and offset + length > file.size:
            raise BodyTooLarge(f"the upload is {file.size} bytes; this body passes its end")
        return await self._backend.append(
            file.tenant_id, file.id, offset, body_chunks(request), sha256=checksum, known=file
        )


async def _nothing() -> AsyncIterator[bytes]:
    """An empty body."""
    return
    yield b""  # makes this an async generator


def _require_tus(request: web.Request) -> None:
    if request.headers.get("Tus-Resumable") != tus.VERSION:
        raise UnsupportedTusVersion(f"this server speaks tus {tus.VERSION} (Tus-Resumable)")


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get("Transfer-Encoding") is not None


def _offset_headers(file: StoredFile) -> dict[str, str]:
    ready = file.state is FileState.READY
    headers = {
        "Upload-Offset": str(file.size if ready else file.upload_offset),
        "Upload-Length": str(file.size),
    }
    if not ready and file.expire_time is not None:
        headers["Upload-Expires"] = tus.http_date(file.expire_time)
    return headers


def _file_json(file: StoredFile) -> dict[str, object]:
    """What a PUT answers: the file as the service now has it."""
    body: dict[str, object] = {
        "id": file.id,
        "filename": file.filename,
        "content_type": file.content_type,
        "size": file.size,
        "sha256": file.sha256,
        "state": file.state.value,
        "upload_offset": file.size if file.state is FileState.READY else file.upload_offset,
    }
    if file.ready_time is not None:
        body["ready_time"] = rfc3339(file.ready_time)
    return body
