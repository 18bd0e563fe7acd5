"""Signed downloads: ``GET``/``HEAD /files/download/{token}/{filename}``.

The token (:func:`file_service.urls.download_token`) alone says what is served — the
tenant, the file, the variant — and until when; the last path segment is only the name a
browser proposes when saving. A forged, altered or expired token is 403 before anything is
read. The file must be READY (pending: 404; deleted: 410).

What a response promises:

- one byte range per request (206 + ``Content-Range``; 416 past the end; ``If-Range``
  with the ETag honoured), ``Accept-Ranges: bytes``, ``ETag`` = the file's SHA-256;
- ``Content-Type`` is the type sniffed from the bytes when the file was stored, never the
  uploader's word; ``Content-Disposition`` is ``inline`` only for ``FileLimits.inline_types``
  and ``attachment`` for everything else (HTML, SVG: nothing renders from this origin),
  with ``X-Content-Type-Options: nosniff`` and a CSP that forbids everything, in a sandbox;
- ``Cache-Control: private`` with a ``max-age`` that ends when the token does;
- the bytes are streamed as the blob store yields them, never held whole; on local disk
  the kernel sends them from the file (``sendfile``), as ``web.FileResponse`` does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Final

from aiohttp import web

from file_service.errors import FileNotFound, FileNotReady
from file_service.models import FileLimits, FileState, StoredFile
from file_service.urls import DownloadGrant, read_download_token
from file_service.web.backend import FileBackend, Variant
from file_service.web.http_download import (
    ByteRange,
    RangeNotSatisfiable,
    content_disposition,
    is_inline,
    parse_range,
)
from service_kit.clock import Clock

CONTENT_SECURITY_POLICY: Final = "default-src 'none'; sandbox"


@dataclass(frozen=True, slots=True)
class _Served:
    """The bytes a grant names: the file or its thumbnail."""

    size: int
    content_type: str
    etag: str


class DownloadHandlers:
    """The request handler of signed downloads."""

    def __init__(
        self,
        backend: FileBackend,
        *,
        url_secrets: tuple[str, ...],
        limits: FileLimits,
        clock: Clock,
    ) -> None:
        self._backend = backend
        self._secrets = url_secrets
        self._limits = limits
        self._clock = clock

    async def download(self, request: web.Request) -> web.StreamResponse:
        """GET or HEAD: the bytes (or only the headers) a download token grants."""
        now = self._clock()
        grant = read_download_token(request.match_info["token"], self._secrets, now=now)
        file = await self._ready_file(grant)
        served = _served(file, grant)
        headers = self._headers(file, served, max_age=_seconds_left(grant, now))
        if request.headers.get("If-None-Match") == served.etag:
            return web.Response(status=304, headers=headers)
        try:
            byte_range = self._range(request, served)
        except RangeNotSatisfiable:
            headers["Content-Range"] = f"bytes */{served.size}"
            return web.Response(status=416, headers=headers)
        response = web.StreamResponse(status=200, headers=headers)
        if byte_range is None:
            byte_range = ByteRange(start=0, length=served.size, size=served.size)
        else:
            response.set_status(206)
            response.headers["Content-Range"] = byte_range.content_range
        response.content_length = byte_range.length
        await self._send(request, response, file, grant.variant, byte_range)
        return response

    def _headers(self, file: StoredFile, served: _Served, *, max_age: int) -> dict[str, str]:
        inline = is_inline(served.content_type, self._limits.inline_types)
        return {
            "Accept-Ranges": "bytes",
            "ETag": served.etag,
            "Content-Type": served.content_type,
            "Content-Disposition": content_disposition(file.filename, inline=inline),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": f"private, max-age={max_age}",
        }

    async def _send(
        self,
        request: web.Request,
        response: web.StreamResponse,
        file: StoredFile,
        variant: Variant,
        byte_range: ByteRange,
    ) -> None:
        """Send the headers, then (not for HEAD) the range's bytes as the store yields them;
        stop quietly if the client goes away."""
        if request.method == "HEAD" or byte_range.length == 0:
            await response.prepare(request)
            await response.write_eof()
            return

        async def sendfile(opened: BinaryIO, offset: int, length: int) -> None:
            # The kernel copies the page cache to the socket: no byte passes through Python.
            await response.prepare(request)
            transport = request.transport
            if transport is None:
                return  # the client has gone
            try:
                await asyncio.get_running_loop().sendfile(transport, opened, offset, length)
                await response.write_eof()
            except ConnectionError:
                pass  # the client has gone; what it received is its

        try:
            if await self._backend.send_file(
                file,
                variant=variant,
                offset=byte_range.start,
                length=byte_range.length,
                send=sendfile,
            ):
                return
            chunks = await self._backend.read(
                file, variant=variant, offset=byte_range.start, length=byte_range.length
            )
        except FileNotReady as exc:  # deleted since it was looked up
            raise web.HTTPGone(text=f"file {file.id} was deleted") from exc
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client has gone; what it received is its
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def _ready_file(self, grant: DownloadGrant) -> StoredFile:
        file = await self._backend.get_file(grant.tenant_id, grant.file_id)
        if file.state is FileState.DELETED:
            raise web.HTTPGone(text=f"file {file.id} was deleted")
        if file.state is not FileState.READY:
            raise FileNotFound(file.id)
        if grant.variant == "thumbnail" and file.thumbnail is None:
            raise FileNotFound(file.id)
        return file

    def _range(self, request: web.Request, served: _Served) -> ByteRange | None:
        if_range = request.headers.get("If-Range")
        if if_range is not None and if_range != served.etag:
            return None  # the client's copy is another version: send it all
        return parse_range(request.headers.get("Range"), served.size)


def _served(file: StoredFile, grant: DownloadGrant) -> _Served:
    if grant.variant == "thumbnail" and file.thumbnail is not None:
        thumbnail = file.thumbnail
        return _Served(thumbnail.size, thumbnail.content_type, f'"{file.sha256}.thumbnail"')
    return _Served(file.size, file.content_type, f'"{file.sha256}"')


def _seconds_left(grant: DownloadGrant, now: datetime) -> int:
    return max(0, int((grant.expires_at - now).total_seconds()))
