"""Wiring of ``keel.files.v1.FileService``: the blob store, the store, the service, the
gRPC servicer, the HTTP endpoints (tus uploads, upload URLs, signed downloads) on
``KEEL_FILES_HTTP_ADDR``, and the sweep that expires abandoned uploads and purges blobs.

Reads (GetFile, ListFiles, DownloadFile, CreateDownloadUrl) need ``upload:read``, the
rest ``upload:write``; ``upload:*`` grants both. The service reports SERVING only while the
database and the blob store both answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from aiohttp import web

from file_service import urls, wire
from file_service.allocator import keep_freed_memory
from file_service.models import FileLimits, StoredFile
from file_service.service import FileService
from file_service.servicer import FileServicer
from file_service.storage import (
    BlobKey,
    BlobStore,
    S3BlobStore,
    StorageError,
    build_blob_store,
)
from file_service.store import SqlFileStore
from file_service.web.app import build_app
from file_service.web.backend import Variant
from file_service.web.http_download import content_disposition, is_inline
from service_kit.client_tokens import ClientTokens
from service_kit.clock import Clock, utcnow
from service_kit.config import Address, Settings
from service_kit.errors import Unavailable
from service_kit.file_links import files_base_url, signed_download_url
from service_kit.interceptor import tenant_scope
from service_kit.jobs import Job, JobHandler
from service_kit.purge import TENANT_BLOB_PURGE_JOB
from service_kit.server import Runtime, ServiceSpec
from service_kit.tls import server_ssl_context
from service_kit.validation import is_uuid

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "keel.files.v1.FileService"
_READS: Final = ("GetFile", "ListFiles", "DownloadFile", "CreateDownloadUrl")
#: How much of a request body aiohttp buffers per connection before it stops reading the
#: socket (it starts again below half). Its default, 64 KiB, stops and starts it at nearly
#: every read of an upload (a read brings up to 256 KiB) while the body's previous MiB is
#: being hashed and written; with 1 MiB the socket keeps flowing meanwhile. At most 2 MiB
#: per upload.
READ_BUFFER: Final = 1 << 20
#: The gRPC receive window of each upload stream: a fixed 4 MiB (four 1 MiB chunks) instead
#: of the one grpc sizes from its bandwidth-delay probes (at least 4 MiB, and twice the
#: estimated BDP above that), which lets the client run as far ahead of a busy event loop as
#: the estimate grows — what grpc buffers for an upload is bounded by this window.
GRPC_WINDOW: Final = 4 << 20
GRPC_OPTIONS: Final = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", GRPC_WINDOW))


def limits_of(settings: Settings) -> FileLimits:
    """The bounds ``KEEL_FILES_*`` set for every tenant."""
    files = settings.files
    return FileLimits(
        max_file_bytes=files.max_file_bytes,
        max_tenant_bytes=files.tenant_max_bytes,
        max_tenant_files=files.tenant_max_files,
        allowed_types=files.allowed_types,
    )


class SignedLinks:
    """Signed upload and download URLs under the public base URL of the HTTP endpoints; with
    ``presigner`` (``KEEL_S3_PRESIGNED_DOWNLOADS``), download URLs presigned by S3 instead,
    answered with the same ``Content-Type`` and ``Content-Disposition``."""

    def __init__(
        self,
        secrets: list[str],
        base_url: str,
        *,
        presigner: S3BlobStore | None = None,
        inline_types: Sequence[str] = FileLimits().inline_types,
        clock: Clock = utcnow,
    ) -> None:
        self._secrets = secrets
        self.base_url = base_url.rstrip("/")
        self._presigner = presigner
        self._inline_types = inline_types
        self._clock = clock

    def upload(self, file: StoredFile) -> tuple[str, Mapping[str, str]]:
        token = urls.upload_token(self._secrets[0], file)
        return urls.upload_url(self.base_url, file.id), {
            "Authorization": f"Bearer {token}",
            "Tus-Resumable": "1.0.0",
        }

    async def download(self, file: StoredFile, *, variant: Variant, expires_at: datetime) -> str:
        if self._presigner is None:
            return signed_download_url(
                self._secrets[0],
                self.base_url,
                file.tenant_id,
                file.id,
                file.filename,
                variant=variant,
                expires_at=expires_at,
            )
        key, content_type = file.blob_key, file.content_type
        if variant == "thumbnail" and file.thumbnail is not None:
            key, content_type = file.thumbnail.blob_key, file.thumbnail.content_type
        inline = is_inline(content_type, self._inline_types)
        seconds = max(1, int((expires_at - self._clock()).total_seconds()))
        try:
            return await self._presigner.presigned_get(
                BlobKey(key),
                expires_in=seconds,
                content_type=content_type,
                content_disposition=content_disposition(file.filename, inline=inline),
            )
        except StorageError as exc:
            raise Unavailable(f"the file storage failed: {exc}", retry_after=1.0) from exc


class FileProcess:
    """The file service's parts that live as long as the process serves."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._stack = AsyncExitStack()
        self._sweeper: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.blobs: BlobStore | None = None
        self.service: FileService | None = None
        self.links: SignedLinks | None = None
        #: The port the HTTP endpoints listen on, once started.
        self.http_port = 0

    async def start(self) -> None:
        keep_freed_memory()  # each chunk of a download in pages already the process's
        settings = self._runtime.settings
        files = settings.files
        secret = settings.token_secret
        if not secret:
            raise RuntimeError("the file service needs KEEL_TOKEN_SECRET to sign its URLs")
        previous = settings.token_secret_previous
        secrets = [secret, *([previous] if previous else [])]
        self.blobs = await self._stack.enter_async_context(build_blob_store(files))
        self.service = FileService(
            SqlFileStore(self._runtime.engine),
            self.blobs,
            limits_of(settings),
            clock=utcnow,
            default_upload_ttl=timedelta(seconds=files.upload_ttl_seconds),
            rate_limiter=self._runtime.rate_limiter,
            uploads_per_minute=files.uploads_per_minute,
        )
        app = build_app(
            self.service,
            client_tokens=ClientTokens(secret, previous=settings.token_secret_previous),
            url_secrets=secrets,
            limits=limits_of(settings),
            cors_origins=files.cors_origins,
            public_base=files.public_url,
        )
        self._runner = web.AppRunner(app, access_log=None, read_bufsize=READ_BUFFER)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            files.http_addr.host,
            files.http_addr.port,
            ssl_context=server_ssl_context(settings.tls),
        )
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise RuntimeError(
                f"cannot listen on {files.http_addr} (KEEL_FILES_HTTP_ADDR): {exc}"
            ) from exc
        self.http_port = _bound_port(site, files.http_addr)
        base = files_base_url(files, port=self.http_port, https=settings.tls.enabled)
        presigner = self.blobs if files.s3_presigned_downloads else None
        if presigner is not None and not isinstance(presigner, S3BlobStore):
            raise RuntimeError("KEEL_S3_PRESIGNED_DOWNLOADS needs the S3 backend")
        self.links = SignedLinks(secrets, base, presigner=presigner)
        self._sweeper = asyncio.create_task(self._sweep(files.sweep_seconds), name="file-sweep")
        log.info("file endpoints listening", extra={"url": base, "backend": files.backend})

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._runner is not None:
            await self._runner.cleanup()
        await self._stack.aclose()

    async def blobs_up(self) -> bool:
        if self.blobs is None:
            return False
        try:
            await self.blobs.check()
        except StorageError as exc:
            log.warning("the file storage does not answer", extra={"error": str(exc)})
            return False
        return True

    async def _sweep(self, every: float) -> None:
        assert self.service is not None
        while True:
            try:
                expired, purged = await self.service.sweep()
                if expired or purged:
                    log.info("file sweep", extra={"expired": expired, "purged": purged})
            except Exception:
                log.exception("the file sweep failed; it runs again later")
            await asyncio.sleep(every)


@dataclass(frozen=True)
class FileServer:
    """The built service: its spec for the server, its process-long parts (the HTTP
    endpoints' port, once started), and the handlers of the jobs its process runs (the
    removal of a deleted tenant's blobs)."""

    spec: ServiceSpec
    process: FileProcess
    job_handlers: Mapping[str, JobHandler]


def build(runtime: Runtime) -> FileServer:
    """The file service for the bootstrap to serve (its HTTP endpoints start with it)."""
    process = FileProcess(runtime)

    def register(server: object) -> None:
        assert process.service is not None and process.links is not None
        wire.add_to_server(FileServicer(process.service, process.links), server)

    spec = ServiceSpec(
        name=SERVICE_NAME,
        register=register,
        default_policy=tenant_scope("upload:write"),
        policies=dict.fromkeys(_READS, tenant_scope("upload:read")),
        on_start=process.start,
        on_stop=process.stop,
        dependency_up=process.blobs_up,
        grpc_options=GRPC_OPTIONS,
    )

    async def purge_blobs(job: Job) -> None:
        tenant_id = job.payload.get("tenant_id")
        if not isinstance(tenant_id, str) or not is_uuid(tenant_id):
            raise ValueError(f"a {TENANT_BLOB_PURGE_JOB} job needs a tenant_id in its payload")
        assert process.service is not None  # jobs run once the process has started
        await process.service.purge_tenant(tenant_id)

    return FileServer(spec, process, {TENANT_BLOB_PURGE_JOB: purge_blobs})


def _bound_port(site: web.TCPSite, address: Address) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; the port may be 0
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else address.port
