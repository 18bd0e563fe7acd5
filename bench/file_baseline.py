"""The file scenario's helper process: the transfer client, and the baseline file server.

``python -m bench.file_baseline`` is driven through :mod:`bench.control`. One process is
the client of every transfer (Keel's and the baseline's alike); another, started the same
way, is the baseline server, so that client and server never share a CPU's worth of
Python.

The client sends bytes it generates (one random block of ``chunk`` bytes, repeated) and
discards what it receives after counting it: no file is read or written on its side and
nothing is hashed, so its cost per byte stays below any server's. Every transfer answers
``bytes`` and ``seconds`` (monotonic, from the first request of the transfer to the last
byte of its answer).

- ``grpc_upload {addr, metadata, size, chunk}``: ``UploadFile`` — the metadata (with the
  size declared), then chunks of ``chunk`` bytes (≤ 1 MiB); answers ``file_id``.
- ``grpc_download {addr, metadata, file_id}``: ``DownloadFile`` of the whole file.
- ``tus_upload {base, token, size, patch}``: tus 1.0 as tus-js-client does it — a
  ``POST /files/tus`` creation with the client token, then ``PATCH`` requests of ``patch``
  bytes (0: one PATCH of the whole body, tus-js-client's default ``chunkSize``);
  answers ``file_id`` and ``patches``.
- ``http_put {url, headers, size, chunk}``: one ``PUT`` of ``size`` bytes with
  ``Content-Length`` (the upload URL of ``CreateUploadUrl``, or the baseline's).
- ``http_get {url}``: one ``GET``, the body counted.
- ``baseline_listen {dir}`` (the server process): a minimal aiohttp server on a free port
  storing files in ``dir``: ``PUT /blob/{name}`` streams the body to the file (written as
  it arrives, fsynced at the end, as Keel's local store does), ``GET /blob/{name}`` answers
  with ``web.FileResponse`` (sendfile) and ``GET /chunked/{name}`` with reads of 1 MiB
  written one after the other (what a server that cannot hand the socket a file does);
  ``DELETE /blob/{name}`` removes the file. Beside it, a minimal grpc.aio server of the
  same ``FileService``: ``UploadFile`` writes each chunk's bytes to a file as they come
  (fsynced at the end; no hash, no check) and ``DownloadFile`` streams a file in 1 MiB
  reads — the least a Python gRPC server does to move a file, the ceiling of Keel's gRPC
  paths. Answers ``port`` and ``grpc_port``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import grpc
from aiohttp import web
from keel.files.v1 import files_pb2 as pb
from keel.files.v1 import files_pb2_grpc

from bench.control import serve_commands

#: The largest chunk an ``UploadFile`` message may carry (the proto's bound).
GRPC_CHUNK: Final = 1 << 20
#: What the baseline server reads and writes at a time.
BASELINE_CHUNK: Final = 1 << 20
_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
_TUS: Final = {"Tus-Resumable": "1.0.0"}
#: What tus-js-client sends for a file: its name and type, base64.
_METADATA: Final = ",".join(
    f"{key} {base64.b64encode(value.encode()).decode()}"
    for key, value in (("filename", "bench.bin"), ("filetype", "application/octet-stream"))
)


@functools.cache
def _block(size: int) -> bytes:
    """A fixed pseudo-random block: sniffed as application/octet-stream, never as an
    image (which would make a thumbnail). Made once per size: making a MiB takes the
    client about 3 ms, which at every PATCH of a chunked tus upload was time the server
    sat waiting for the client's next request."""
    return random.Random(12).randbytes(size)


def _pieces(size: int, chunk: int) -> Iterator[bytes]:
    """``size`` bytes as blocks of ``chunk`` bytes (the last one shorter)."""
    block = _block(chunk)
    sent = 0
    while sent < size:
        piece = block if size - sent >= chunk else block[: size - sent]
        sent += len(piece)
        yield piece


async def _body(size: int, chunk: int) -> AsyncIterator[bytes]:
    for piece in _pieces(size, chunk):
        yield piece


class Client:
    """The transfers (see the module docstring)."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=_TIMEOUT)
        return self._http

    async def grpc_upload(self, cmd: dict[str, Any]) -> dict[str, Any]:
        size, chunk = int(cmd["size"]), min(int(cmd.get("chunk", GRPC_CHUNK)), GRPC_CHUNK)

        def requests() -> Iterator[pb.UploadFileRequest]:
            yield pb.UploadFileRequest(
                metadata=pb.UploadFileMetadata(
                    filename="bench.bin", content_type="application/octet-stream", size_bytes=size
                )
            )
            for piece in _pieces(size, chunk):
                yield pb.UploadFileRequest(chunk=piece)

        async with grpc.aio.insecure_channel(cmd["addr"]) as channel:
            stub = files_pb2_grpc.FileServiceStub(channel)
            t0 = time.monotonic()
            answer = await stub.UploadFile(requests(), metadata=_md(cmd), timeout=600)
            seconds = time.monotonic() - t0
        if answer.file.size_bytes != size:
            raise RuntimeError(f"stored {answer.file.size_bytes} bytes, sent {size}")
        return {"file_id": answer.file.id, "bytes": size, "seconds": seconds}

    async def grpc_download(self, cmd: dict[str, Any]) -> dict[str, Any]:
        received = 0
        options = [("grpc.max_receive_message_length", -1)]
        async with grpc.aio.insecure_channel(cmd["addr"], options=options) as channel:
            stub = files_pb2_grpc.FileServiceStub(channel)
            t0 = time.monotonic()
            stream = stub.DownloadFile(
                pb.DownloadFileRequest(id=cmd["file_id"]), metadata=_md(cmd), timeout=600
            )
            async for message in stream:
                received += len(message.chunk)
            seconds = time.monotonic() - t0
        return {"bytes": received, "seconds": seconds}

    async def tus_upload(self, cmd: dict[str, Any]) -> dict[str, Any]:
        size, patch = int(cmd["size"]), int(cmd.get("patch") or 0)
        chunk = min(GRPC_CHUNK, patch) if patch else GRPC_CHUNK
        auth = {"Authorization": f"Bearer {cmd['token']}"}
        http = self.http()
        t0 = time.monotonic()
        async with http.post(
            cmd["base"] + "/files/tus",
            headers={**_TUS, **auth, "Upload-Length": str(size), "Upload-Metadata": _METADATA},
        ) as created:
            if created.status != 201:
                raise RuntimeError(f"tus creation: {created.status} {await created.text()}")
            location = created.headers["Location"]
        url = location if location.startswith("http") else cmd["base"] + location
        offset, patches = 0, 0
        while offset < size:
            length = min(patch, size - offset) if patch else size
            headers = {
                **_TUS,
                **auth,
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(length),
                "Upload-Offset": str(offset),
            }
            async with http.patch(url, headers=headers, data=_body(length, chunk)) as answer:
                if answer.status != 204:
                    raise RuntimeError(f"tus PATCH: {answer.status} {await answer.text()}")
                offset = int(answer.headers["Upload-Offset"])
            patches += 1
        seconds = time.monotonic() - t0
        return {
            "file_id": url.rsplit("/", 1)[1],
            "bytes": size,
            "seconds": seconds,
            "patches": patches,
        }

    async def http_put(self, cmd: dict[str, Any]) -> dict[str, Any]:
        size, chunk = int(cmd["size"]), int(cmd.get("chunk", GRPC_CHUNK))
        headers = {**cmd.get("headers", {}), "Content-Length": str(size)}
        t0 = time.monotonic()
        async with self.http().put(cmd["url"], headers=headers, data=_body(size, chunk)) as answer:
            text = await answer.text()
            if answer.status not in (200, 201, 204):
                raise RuntimeError(f"PUT: {answer.status} {text}")
        return {"bytes": size, "seconds": time.monotonic() - t0}

    async def http_get(self, cmd: dict[str, Any]) -> dict[str, Any]:
        received = 0
        t0 = time.monotonic()
        async with self.http().get(cmd["url"]) as answer:
            if answer.status != 200:
                raise RuntimeError(f"GET: {answer.status} {await answer.text()}")
            async for piece in answer.content.iter_any():
                received += len(piece)
        return {"bytes": received, "seconds": time.monotonic() - t0}

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def _md(cmd: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in cmd["metadata"])


# -- the baseline server --------------------------------------------------------------------


def baseline_app(directory: Path) -> web.Application:
    """The least a server can do to store and serve a file (see the module docstring)."""

    def path_of(request: web.Request) -> Path:
        name = request.match_info["name"]
        if not name.isalnum():
            raise web.HTTPBadRequest(text="names are letters and digits")
        return directory / name

    async def put(request: web.Request) -> web.Response:
        path = path_of(request)
        with path.open("wb") as file:
            async for piece in request.content.iter_any():
                file.write(piece)
            file.flush()
            os.fsync(file.fileno())
        return web.Response(status=201)

    async def get(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path_of(request), chunk_size=BASELINE_CHUNK)

    async def get_chunked(request: web.Request) -> web.StreamResponse:
        path = path_of(request)
        response = web.StreamResponse()
        response.content_length = path.stat().st_size
        await response.prepare(request)
        with path.open("rb") as file:
            while piece := file.read(BASELINE_CHUNK):
                await response.write(piece)
        await response.write_eof()
        return response

    async def delete(request: web.Request) -> web.Response:
        path_of(request).unlink(missing_ok=True)
        return web.Response(status=204)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_put("/blob/{name}", put)
    app.router.add_get("/blob/{name}", get)
    app.router.add_get("/chunked/{name}", get_chunked)
    app.router.add_delete("/blob/{name}", delete)
    return app


class GrpcBaseline(files_pb2_grpc.FileServiceServicer):
    """The least a grpc.aio server can do to store and serve a file (one name: ``grpc``)."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / "grpc"

    async def UploadFile(
        self, request_iterator: AsyncIterator[pb.UploadFileRequest], context: Any
    ) -> pb.UploadFileResponse:
        size = 0
        with self._path.open("wb") as file:
            async for message in request_iterator:
                if message.WhichOneof("payload") == "chunk":
                    chunk = message.chunk
                    file.write(chunk)
                    size += len(chunk)
            file.flush()
            os.fsync(file.fileno())
        return pb.UploadFileResponse(file=pb.File(id="grpc", size_bytes=size))

    async def DownloadFile(
        self, request: pb.DownloadFileRequest, context: Any
    ) -> AsyncIterator[pb.DownloadFileResponse]:
        with self._path.open("rb") as file:
            while piece := file.read(BASELINE_CHUNK):
                yield pb.DownloadFileResponse(chunk=piece)


class BaselineServer:
    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None

    async def listen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        directory = Path(cmd["dir"])
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        self._runner = web.AppRunner(baseline_app(directory), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio server here
        sockets = getattr(server, "sockets", None) or []
        self._grpc = grpc.aio.server()
        files_pb2_grpc.add_FileServiceServicer_to_server(GrpcBaseline(directory), self._grpc)
        grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        await self._grpc.start()
        return {
            "port": int(sockets[0].getsockname()[1]),
            "grpc_port": grpc_port,
            "pid": os.getpid(),
        }

    async def close(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(None)
        if self._runner is not None:
            await self._runner.cleanup()


async def main() -> None:
    client, server = Client(), BaselineServer()
    try:
        await serve_commands(
            {
                "grpc_upload": client.grpc_upload,
                "grpc_download": client.grpc_download,
                "tus_upload": client.tus_upload,
                "http_put": client.http_put,
                "http_get": client.http_get,
                "baseline_listen": server.listen,
            }
        )
    finally:
        await client.close()
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
