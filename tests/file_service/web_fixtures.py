"""A real file-service HTTP server for tests: the aiohttp app over the real
:class:`~file_service.service.FileService`, :class:`~file_service.store.SqlFileStore` and
a blob store, listening on a free port; a clock the test moves; and a raw HTTP client
that can break a request off mid-body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.ports import free_port
from file_service.models import FileLimits, StoredFile
from file_service.service import FileService
from file_service.storage import BlobStore
from file_service.store import SqlFileStore
from file_service.web.app import build_app
from service_kit.client_tokens import ClientTokens

URL_SECRET = "test-file-url-secret-0123456789abcdef"
CLIENT_TOKEN_SECRET = "test-client-token-secret-0123456789abcdef"
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"


class MovableClock:
    """The time the service and the server read; a test moves it forward."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class ObservedService(FileService):
    """The real service, counting the appends that have returned, so a test can wait for
    a request no client is waiting for (one cut off mid-body)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._appends = 0
        self._changed = asyncio.Condition()

    async def appended(self, count: int) -> None:
        """Return once ``count`` appends have returned (or raised) since the start."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._appends >= count)

    async def append(self, *args: Any, **kwargs: Any) -> StoredFile:
        try:
            return await super().append(*args, **kwargs)
        finally:
            async with self._changed:
                self._appends += 1
                self._changed.notify_all()


@dataclass
class FileServer:
    """A running file-service HTTP server and what a test needs around it."""

    base_url: str
    service: ObservedService
    clock: MovableClock
    tokens: ClientTokens
    http: aiohttp.ClientSession

    def client_token(self, tenant_id: str, user_id: str) -> str:
        token, _ = self.tokens.issue(tenant_id, user_id, 3600)
        return token

    def bearer(self, tenant_id: str, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.client_token(tenant_id, user_id)}"}

    async def create(
        self,
        tenant_id: str,
        user_id: str,
        size: int,
        *,
        filename: str = "notes.bin",
        filetype: str = "application/octet-stream",
    ) -> tuple[str, str]:
        """A tus upload of ``size`` bytes created with the user's client token: its
        (absolute URL, file id)."""
        headers = {
            **TUS,
            **self.bearer(tenant_id, user_id),
            "Upload-Length": str(size),
            "Upload-Metadata": metadata(filename=filename, filetype=filetype),
        }
        async with self.http.post(f"{self.base_url}/files/tus", headers=headers) as response:
            assert response.status == 201, await response.text()
            location = response.headers["Location"]
        url = location if location.startswith("http") else self.base_url + location
        return url, url.rsplit("/", 1)[1]

    async def upload(
        self, tenant_id: str, user_id: str, body: bytes, *, filename: str = "notes.bin"
    ) -> StoredFile:
        """A file uploaded whole through tus (one PATCH); READY."""
        url, file_id = await self.create(tenant_id, user_id, len(body), filename=filename)
        headers = {
            **TUS,
            **self.bearer(tenant_id, user_id),
            "Content-Type": OFFSET_STREAM,
            "Upload-Offset": "0",
        }
        async with self.http.patch(url, headers=headers, data=body) as response:
            assert response.status == 204, await response.text()
        return await self.service.get_file(tenant_id, file_id)


def metadata(**pairs: str) -> str:
    """An Upload-Metadata header."""
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def sha256_header(body: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(body).digest()).decode()


def new_tenant() -> str:
    return str(uuid.uuid4())


@asynccontextmanager
async def file_server(
    engine: AsyncEngine,
    blobs: BlobStore,
    *,
    limits: FileLimits,
    clock: MovableClock,
    cors_origins: tuple[str, ...] = ("*",),
) -> AsyncIterator[FileServer]:
    """The app over the real service, listening on 127.0.0.1 on a free port."""
    service = ObservedService(SqlFileStore(engine), blobs, limits, clock=clock)
    # Client tokens keep real time: PyJWT checks them against the real clock.
    tokens = ClientTokens(CLIENT_TOKEN_SECRET)
    app = build_app(
        service,
        client_tokens=tokens,
        url_secrets=[URL_SECRET],
        limits=limits,
        cors_origins=cors_origins,
        clock=clock,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield FileServer(f"http://127.0.0.1:{port}", service, clock, tokens, http)
    finally:
        await runner.cleanup()


async def send_cut_request(
    base_url: str, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> None:
    """Send a request's headers and ``body`` and close the connection, without waiting
    for an answer: a client that went away before the rest of its body."""
    host, port = base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
