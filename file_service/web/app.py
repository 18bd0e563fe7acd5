"""The file service's HTTP face: tus uploads, upload URLs and signed downloads.

These endpoints are served by the file service's own aiohttp server
(``KEEL_FILES_HTTP_ADDR``), not by the bridge's port: the bridge's HTTP (websockets'
server) reads whole request bodies into memory, and file bytes should reach the process
that stores them without a second hop. Browsers reach it from the app's origin, so every
route answers CORS (:mod:`file_service.web.cors`).

=======  ===================================  =========================================
method   path                                 what
=======  ===================================  =========================================
OPTIONS  /files/tus                           tus discovery; CORS preflight
POST     /files/tus                           tus creation (+ with upload); client token
HEAD     /files/tus/{id}                      tus offset
PATCH    /files/tus/{id}                      tus bytes (+ checksum)
DELETE   /files/tus/{id}                      tus termination
POST     /files/tus/{id}                      PATCH/DELETE via X-HTTP-Method-Override
PUT      /files/tus/{id}                      the whole file at once (upload URLs)
GET      /files/download/{token}/{filename}   a signed download (Range)
HEAD     /files/download/{token}/{filename}   its headers
GET      /files/health                        200 "ok", for probes
=======  ===================================  =========================================

Who may call what is in :mod:`file_service.web.auth`; which error is which status, in
:mod:`file_service.web.errors`. Handlers only move bytes and headers; the rules are the
service's (:class:`~file_service.web.backend.FileBackend`), injected, never built here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from file_service.models import FileLimits
from file_service.web import tus
from file_service.web.auth import ClientTokenVerifier, UploadAuth
from file_service.web.backend import FileBackend
from file_service.web.cors import CorsPolicy
from file_service.web.errors import CHECKSUM_MISMATCH_STATUS, UnsupportedTusVersion, status_for
from file_service.web.handler_download import DownloadHandlers
from file_service.web.handler_tus import TUS_PATH, TusHandlers, add_tus_headers
from service_kit.clock import Clock, utcnow
from service_kit.errors import KeelError

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REASONS = {CHECKSUM_MISMATCH_STATUS: "Checksum Mismatch"}


def build_app(
    backend: FileBackend,
    *,
    client_tokens: ClientTokenVerifier,
    url_secrets: Sequence[str],
    limits: FileLimits,
    cors_origins: Sequence[str] = ("*",),
    clock: Clock = utcnow,
    public_base: str | None = None,
) -> web.Application:
    """The aiohttp application serving the file endpoints over ``backend``.

    ``url_secrets`` verify upload and download tokens (the first is the current one);
    ``cors_origins`` are the browser origins allowed (``*``: any); ``public_base`` is the
    URL this server is reached at (``https://files.example.com``), used in ``Location``
    headers — without it they are absolute paths (``/files/tus/<id>``).
    """
    if not any(url_secrets):
        raise ValueError("at least one URL secret is required")
    auth = UploadAuth(client_tokens=client_tokens, url_secrets=tuple(url_secrets), clock=clock)
    uploads = TusHandlers(backend, auth, limits, clock=clock, public_base=public_base)
    downloads = DownloadHandlers(
        backend, url_secrets=tuple(url_secrets), limits=limits, clock=clock
    )
    app = web.Application(middlewares=[_errors_as_statuses])
    app.on_response_prepare.append(CorsPolicy(tuple(cors_origins)).add_headers)
    app.on_response_prepare.append(add_tus_headers)

    router = app.router
    router.add_route("OPTIONS", TUS_PATH, uploads.options)
    router.add_post(TUS_PATH, uploads.create)
    upload = router.add_resource(TUS_PATH + "/{id}")
    upload.add_route("OPTIONS", uploads.options)
    upload.add_route("HEAD", uploads.head)
    upload.add_route("PATCH", uploads.patch)
    upload.add_route("DELETE", uploads.terminate)
    upload.add_route("POST", uploads.overridden)
    upload.add_route("PUT", uploads.put)
    download = router.add_resource("/files/download/{token}/{filename}")
    download.add_route("OPTIONS", _preflight)
    download.add_route("GET", downloads.download)
    download.add_route("HEAD", downloads.download)
    router.add_get("/files/health", _health, allow_head=True)
    return app


async def _preflight(request: web.Request) -> web.Response:
    """A CORS preflight (the headers come from the CORS hook)."""
    return web.Response(status=204)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@web.middleware
async def _errors_as_statuses(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every ``KeelError`` a handler raises becomes its status with the message as text."""
    try:
        return await handler(request)
    except KeelError as exc:
        status = status_for(exc)
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, UnsupportedTusVersion):
            headers["Tus-Version"] = tus.VERSION
        return web.Response(
            status=status, reason=_REASONS.get(status), text=exc.message, headers=headers
        )
