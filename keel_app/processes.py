"""Which services run in which process, and the life of a serving process.

``keel serve all`` puts every service in one process, where authentication
calls the tenant directory directly; any other process validates credentials
over gRPC against ``KEEL_TENANT_SERVICE_ADDR``. This module is the composition
root: with :mod:`keel_app.cli`, the only place that imports several services.
Each service offers it one entry: ``build(runtime)`` (its gRPC services) or, for
the bridge, ``start_bridge`` and ``serve``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shlex
import signal
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from file_service import server as file_server
from gateway_bridge.bridge import server as bridge_server
from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.gateway import server as gateway_server
from notification_service import server as notification_server
from service_kit.auth import Authenticator, CredentialValidator, TenantId
from service_kit.config import ConfigError, Settings
from service_kit.job_worker import JobWorker
from service_kit.jobs import JobHandler
from service_kit.logs import flush_logging, redact_values
from service_kit.server import (
    KeelServer,
    Runtime,
    ServiceSpec,
    open_runtime,
)
from service_kit.tenant_client import remote_authenticator
from service_kit.tls import http_scheme, open_channel, ws_scheme
from tenant_service import server as tenant_server
from tenant_service.tenants import ALL_SCOPES, Tenant, TenantDirectory

log = logging.getLogger("keel.process")


def embedded_secrets(settings: Settings) -> Settings:
    """For ``serve all``: the operator token and client-token secret the environment does
    not set, generated once and kept (mode 0600) in the data directory."""
    changes: dict[str, object] = {}
    for attribute, filename in (("admin_token", "admin-token"), ("token_secret", "token-secret")):
        if getattr(settings, attribute):
            continue
        path = settings.data_dir / filename
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
        changes[attribute] = path.read_text().strip()
    return replace(settings, **changes)  # type: ignore[arg-type]


async def serve(
    process: str,
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Run ``process`` until SIGTERM/SIGINT, then stop gracefully.

    It owns the event loop (``keel serve``): tasks started while it runs that are
    still running when it stops are cancelled. A signal while the process is still
    starting (waiting for its database, say) stops it at once, quietly, with exit 0.
    ``reuse_port``: this process is one worker of ``keel serve gateway|bridge --workers
    N`` (:mod:`keel_app.workers`) and shares its gRPC or WebSocket port with the others."""
    earlier = asyncio.all_tasks()
    started = ready or asyncio.Event()
    stop = asyncio.Event()
    this = asyncio.current_task()
    assert this is not None
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        if not started.is_set():
            this.cancel()  # nothing serves yet: abandon the start-up

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await _serve(process, settings, started, stop, reuse_port=reuse_port)
    except asyncio.CancelledError:
        if started.is_set() or not stop.is_set():
            raise
        this.uncancel()
        log.info("stopped while starting", extra={"keel_process": process})
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if await _finish_leftover_tasks(asyncio.all_tasks() - earlier):
            # asyncio.run would wait for them without limit: exit now, and say it was unclean.
            flush_logging()
            os._exit(1)


async def _finish_leftover_tasks(tasks: set[asyncio.Task[Any]], grace: float = 3.0) -> int:
    """Cancel the tasks the orderly stop left running; name (and count) any that do not
    end within ``grace`` seconds."""
    leftover = [task for task in tasks if task is not asyncio.current_task()]
    for task in leftover:
        task.cancel()
    if not leftover:
        return 0
    _, pending = await asyncio.wait(leftover, timeout=grace)
    for task in pending:
        frames = " <- ".join(
            f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})"
            for frame in task.get_stack()
        )
        log.error(
            "a task did not stop within the grace period; exiting without it",
            extra={"task": task.get_name(), "stack": frames},
        )
    return len(pending)


async def _serve(
    process: str,
    settings: Settings,
    ready: asyncio.Event,
    stop: asyncio.Event,
    *,
    reuse_port: bool = False,
) -> None:
    if process == "all":
        settings = embedded_secrets(settings)
    else:
        check_cluster_settings(process, settings)
    redact_values(
        (
            settings.admin_token,
            settings.peer_token,
            settings.token_secret,
            settings.token_secret_previous,
        )
    )
    if process == "bridge":
        await bridge_server.serve(settings, ready, stop=stop, reuse_port=reuse_port)
        return
    runtime = await open_runtime(settings)
    specs: list[ServiceSpec] = []
    validator: CredentialValidator | None = None
    directory: TenantDirectory | None = None
    # The durable jobs this process runs (service_kit/jobs.py), by kind.
    job_handlers: dict[str, JobHandler] = {}
    if process in ("all", "tenant-service"):
        built = tenant_server.build(runtime)
        specs.append(built.spec)
        validator = directory = built.directory
        job_handlers |= built.job_handlers
    channel = None
    if validator is None:
        assert settings.tenant_service_addr is not None
        channel = open_channel(settings.tenant_service_addr, settings.tls)
        authenticator = remote_authenticator(settings, channel)
    else:
        authenticator = Authenticator(validator, lookup=directory, ttl=settings.auth_cache_seconds)
    files: file_server.FileServer | None = None

    def files_url() -> str:
        """In ``serve all``: the file endpoints' base URL, once they listen (port 0 too)."""
        assert files is not None and files.process.links is not None
        return files.process.links.base_url

    if process in ("all", "gateway"):
        specs += gateway_server.build(
            runtime,
            authenticator=authenticator,
            files_base_url=files_url if process == "all" else None,
        )
    # In `keel serve all` the notification service checks recipients with this process's
    # own gateway, on the port it learns once the server listens.
    own_port: list[int] = []
    notification_handlers: dict[str, JobHandler] = {}
    # A send that enqueued deliveries wakes their worker (made below, once the handlers
    # exist), so they start at once rather than at its next poll.
    delivery_workers: list[JobWorker] = []

    def wake_delivery_workers() -> None:
        for worker in delivery_workers:
            worker.wake()

    if process in ("all", "notification-service"):
        notifications = notification_server.build(
            runtime,
            gateway_addr=(lambda: _local_addr(settings, own_port[0])) if process == "all" else None,
            on_jobs_enqueued=wake_delivery_workers,
        )
        specs.append(notifications.spec)
        notification_handlers = dict(notifications.job_handlers)
    if process in ("all", "file-service"):
        files = file_server.build(runtime)
        specs.append(files.spec)
        job_handlers |= files.job_handlers
    await authenticator.follow_changes(runtime.bus)
    server = KeelServer(runtime, specs, authenticator=authenticator, reuse_port=reuse_port)
    bridge: Bridge | None = None
    workers = [JobWorker(runtime.engine, job_handlers)] if job_handlers else []
    if notification_handlers:
        delivery_workers.append(notification_worker(runtime, notification_handlers))
        workers += delivery_workers
    try:
        await server.start()
        own_port.append(server.port)
        for worker in workers:
            worker.start()
        if process == "all":
            host = settings.grpc_addr.host
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            own = f"{local}:{server.port}"  # the gateway and the notification service
            bridge = await bridge_server.start_bridge(
                settings,
                runtime.bus,
                runtime.redis,
                authenticator,
                own,
                notification_addr=own,
                files_url=files_url,
            )
            assert files is not None
            await _welcome(runtime, server, directory, bridge, files.process.http_port)
        ready.set()
        await stop.wait()
        if bridge is not None:
            await bridge.stop()
        for worker in workers:
            await worker.stop(settings.shutdown_grace_seconds)
        await server.stop(settings.shutdown_grace_seconds)
    finally:
        for worker in workers:
            await worker.stop(0)  # a no-op after the orderly stop above
        await authenticator.close()
        if channel is not None:
            await channel.close()
        await runtime.close()


def _local_addr(settings: Settings, port: int) -> str:
    """``HOST:PORT`` at which this process reaches its own gRPC port."""
    host = settings.grpc_addr.host
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"[{local}]:{port}" if ":" in local else f"{local}:{port}"


def notification_worker(runtime: Runtime, handlers: dict[str, JobHandler]) -> JobWorker:
    """The job worker of the notification deliveries: ``KEEL_NOTIFICATION_CONCURRENCY`` at
    a time, each leased a while longer than one attempt may take."""
    notifications = runtime.settings.notifications
    return JobWorker(
        runtime.engine,
        handlers,
        concurrency=notifications.concurrency,
        lease=timedelta(
            seconds=notifications.timeout_seconds + runtime.settings.job_lease_margin_seconds
        ),
    )


def check_cluster_settings(process: str, settings: Settings) -> None:
    """Raise ConfigError naming every setting `keel serve process` requires and lacks."""
    problems = []
    if process != "tenant-service" and not settings.tenant_service_addr:
        problems.append(
            f"KEEL_TENANT_SERVICE_ADDR: required by `keel serve {process}` (HOST:PORT of a"
            " tenant-service process), so it can validate tenant credentials"
        )
    if not settings.redis_url:
        problems.append(
            f"REDIS_URL: required by `keel serve {process}`: the processes of a cluster share"
            " chat events, tenant changes, presence and rate limits through Redis"
            " (use `keel serve all` for a single process without Redis)"
        )
    if process in ("gateway", "bridge") and not settings.token_secret:
        problems.append(
            f"KEEL_TOKEN_SECRET: required by `keel serve {process}` (at least 32 characters,"
            " the same in every gateway and bridge) to sign and check browser client tokens"
        )
    if process == "bridge" and not settings.gateway_addr:
        problems.append(
            "KEEL_GATEWAY_ADDR: required by `keel serve bridge` (HOST:PORT of a gateway)"
        )
    if process == "bridge" and not (settings.peer_token or settings.admin_token):
        problems.append(
            "KEEL_PEER_TOKEN: required by `keel serve bridge` (the same value as the gateways'"
            " and the tenant service's) for its stream to the gateway; KEEL_ADMIN_TOKEN also"
            " works but gives the bridge tenant administration, which it does not need"
        )
    if process == "notification-service":
        problems += _notification_service_problems(settings)
    if process == "file-service" and not settings.token_secret:
        problems.append(
            "KEEL_TOKEN_SECRET: required by `keel serve file-service` (the same in every"
            " process) to check browsers' client tokens and sign upload and download URLs"
        )
    if problems:
        raise ConfigError(problems)


def _notification_service_problems(settings: Settings) -> list[str]:
    problems = []
    if not settings.gateway_addr:
        problems.append(
            "KEEL_GATEWAY_ADDR: required by `keel serve notification-service` (HOST:PORT of a"
            " gateway), which checks recipients and lists channel members there"
        )
    if not settings.peer_token:
        problems.append(
            "KEEL_PEER_TOKEN: required by `keel serve notification-service` (the same value as"
            " the gateways'), to ask the gateway about a tenant's users"
        )
    if not settings.token_secret:
        problems.append(
            "KEEL_TOKEN_SECRET: required by `keel serve notification-service` (the same in"
            " every process) to sign the one-click unsubscribe links of emails"
        )
    return problems


async def _welcome(
    runtime: Runtime,
    server: KeelServer,
    directory: TenantDirectory | None,
    bridge: Bridge,
    files_port: int,
) -> None:
    """Print how to reach this embedded Keel; on a first start, create the demo tenant."""
    settings = runtime.settings
    addr = f"{settings.grpc_addr.host}:{server.port}"
    lines = ["", "Keel is running (every service in this process).", f"  gRPC      {addr}"]
    if settings.metrics_addr is not None and server.metrics_port is not None:
        metrics_host = settings.metrics_addr.host
        lines.append(f"  metrics   http://{metrics_host}:{server.metrics_port}/metrics")
    ws = f"{settings.ws_addr.host}:{bridge.port}"
    http, wss = http_scheme(settings.tls), ws_scheme(settings.tls)
    lines += [
        f"  browsers  {wss}://{ws}/ws   (demo: {http}://{ws}/demo, client: {http}://{ws}/keel.js)",
        f"  files     {http}://{settings.files.http_addr.host}:{files_port}/files/"
        "   (tus uploads, signed downloads)",
        f"  operator  token in {settings.data_dir / 'admin-token'} (if KEEL_ADMIN_TOKEN is unset)",
    ]
    demo_file = settings.data_dir / "demo-tenant.json"
    assert directory is not None
    if settings.demo_tenant and await directory.count() == 0:
        tenant, secret = await directory.create(
            Tenant(id=TenantId(""), name="demo", client_id="", permissions=ALL_SCOPES)
        )
        _write_private(
            demo_file,
            json.dumps(
                {"tenant_id": tenant.id, "client_id": tenant.client_id, "client_secret": secret},
                indent=2,
            ),
        )
        lines += [
            "",
            f"Created the demo tenant (saved to {demo_file}; the secret is not shown again):",
            f"  client_id      {tenant.client_id}",
            f"  client_secret  {secret}",
            "",
            "Try:",
            f"  {' '.join(['grpcurl', *_grpcurl_tls(settings)])}"
            f' -d \'{{"client_id": "{tenant.client_id}",'
            f' "client_secret": "{secret}"}}\' {addr}'
            " keel.tenants.v1.TenantService/ValidateCredentials",
        ]
    elif demo_file.exists():
        lines.append(f"  demo      tenant credentials in {demo_file}")
    lines.append("")
    print("\n".join(lines), flush=True)


def _grpcurl_tls(settings: Settings) -> list[str]:
    """grpcurl's flags for reaching this process: ``-plaintext``, or its TLS files."""
    tls = settings.tls
    if not tls.enabled:
        return ["-plaintext"]
    flags = ["-cacert", str(tls.ca)] if tls.ca else []
    if tls.mutual:
        flags += ["-cert", str(tls.cert), "-key", str(tls.key)]
    return [shlex.quote(flag) for flag in flags]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
