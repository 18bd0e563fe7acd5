"""``keel doctor``: check that this machine's configuration can run Keel, and say why not.

It reads the environment as ``keel serve`` would and checks, each with a verdict and a
reason: the configuration (and, with a process name, what that process requires), Keel's
own TLS certificate (its names, its validity, whether it can serve as a client certificate
under mutual TLS), the database and its migrations, the clock against the database's,
Redis, the file storage (the directory or the S3 bucket), the SMTP server, and the Keel
processes this one would call (the tenant service, the gateway, the notification service,
over TLS when it is on). It prints a table and exits 1 when a check failed (``FAIL``), 0
otherwise; ``WARN`` marks what works but deserves a look, ``SKIP`` what is not configured
(and not needed).

Every check is bounded in time, so an unreachable host costs seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Final, Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from sqlalchemy import URL, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from file_service.storage import StorageError, build_blob_store
from keel_app.processes import check_cluster_settings
from keel_app.workers import PROCESSES
from notification_service.senders.base import DeliveryFailed
from notification_service.senders.email import SmtpMailer
from service_kit import db
from service_kit.config import ConfigError, Settings, TlsSettings, load_settings
from service_kit.logs import redact
from service_kit.tls import open_channel, read_certificate

Verdict = Literal["ok", "warn", "fail", "skip"]

#: The longest one check may take.
TIMEOUT: Final = 5.0
#: Clock skew against the database beyond which a check warns, and fails.
SKEW_WARN, SKEW_FAIL = 1.0, 10.0
#: How close to its expiry Keel's TLS certificate makes the check warn.
CERTIFICATE_WARN: Final = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report."""

    name: str
    verdict: Verdict
    detail: str


async def diagnose(environ: dict[str, str], process: str | None = None) -> list[Check]:
    """Every check, in order, for the environment ``environ`` (and ``process``'s needs)."""
    try:
        settings = load_settings(environ)
        if process not in (None, "all"):
            check_cluster_settings(process, settings)
    except ConfigError as exc:
        return [Check("configuration", "fail", problem) for problem in exc.problems]
    checks = [
        Check("configuration", "ok", _configuration(settings, process)),
        _certificate(settings.tls, datetime.now(UTC)),
    ]
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not _sqlite_exists(url):
        checks += _not_created(url)  # without an engine, which would create its directory
    else:
        engine = db.create_engine(settings.database_url, pool_size=1)
        try:
            checks += await _database(engine)
        finally:
            await engine.dispose()
    checks.append(await _bounded("redis", lambda: _redis(settings)))
    checks.append(await _bounded("file storage", lambda: _storage(settings)))
    checks.append(await _bounded("smtp", lambda: _smtp(settings)))
    for name, addr, service in (
        ("tenant service", settings.tenant_service_addr, "keel.tenants.v1.TenantService"),
        ("gateway", settings.gateway_addr, "keel.channels.v1.ChannelService"),
        (
            "notification service",
            settings.notifications.service_addr,
            "keel.notifications.v1.NotificationService",
        ),
    ):
        checks.append(await _bounded(name, partial(_health, name, addr, service, settings.tls)))
    return checks


def report(checks: list[Check]) -> str:
    """The table ``keel doctor`` prints, and its last line: the overall verdict."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  verdict  detail"]
    lines += [f"{c.name:<{width}}  {c.verdict.upper():<7}  {c.detail}" for c in checks]
    failed = [c.name for c in checks if c.verdict == "fail"]
    lines.append("")
    lines.append(
        f"{len(failed)} check(s) failed: {', '.join(dict.fromkeys(failed))}"
        if failed
        else "Keel can run with this configuration."
    )
    return "\n".join(lines)


def run(environ: dict[str, str], process: str | None) -> int:
    """``keel doctor [PROCESS]``: print the report; 1 if a check failed."""
    if process is not None and process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}; one of {', '.join(PROCESSES)}")
    checks = asyncio.run(diagnose(environ, process))
    print(report(checks))
    return 1 if any(c.verdict == "fail" for c in checks) else 0


def _configuration(settings: Settings, process: str | None) -> str:
    what = f"what `keel serve {process}` needs is set" if process else "every variable is valid"
    return f"{what}; data in {settings.data_dir}"


def _certificate(tls: TlsSettings, now: datetime) -> Check:
    name = "tls certificate"
    if tls.cert is None:
        return Check(name, "skip", "KEEL_TLS_CERT unset: every port is plaintext")
    try:
        cert = read_certificate(tls.cert)
    except ValueError as exc:
        return Check(name, "fail", f"{tls.cert}: {exc}")
    names = ", ".join(cert.names) or "no subject alternative name"
    if not cert.not_before <= now < cert.not_after:
        return Check(
            name, "fail", f"{tls.cert} is valid from {cert.not_before} to {cert.not_after} only"
        )
    if tls.mutual and not cert.client_auth:
        return Check(
            name,
            "fail",
            f"{tls.cert} is not for clients (no clientAuth among its extended key usages),"
            " yet with KEEL_TLS_CA this process presents it to the others",
        )
    detail = f"{names}; valid until {cert.not_after:%Y-%m-%d %H:%M} UTC"
    if cert.not_after - now < CERTIFICATE_WARN:
        return Check(name, "warn", f"{detail}: renew it and restart the processes")
    return Check(name, "ok", detail)


async def _bounded(name: str, check: Callable[[], Awaitable[Check]]) -> Check:
    try:
        async with asyncio.timeout(TIMEOUT):
            return await check()
    except TimeoutError:
        return Check(name, "fail", f"no answer within {TIMEOUT:g} s")


async def _database(engine: AsyncEngine) -> list[Check]:
    where = engine.url.render_as_string(hide_password=True)
    problem = await db.check(engine, within=TIMEOUT)
    if problem is not None:
        return [Check("database", "fail", f"{where}: {problem}")]
    checks = [Check("database", "ok", f"{where} answers")]
    current, pending = await db.migration_state(engine)
    if pending:
        checks.append(
            Check(
                "migrations",
                "warn",
                f"at {current or 'none'}; {len(pending)} to apply (`keel migrate`, or the"
                f" first process that starts): {pending[0]}" + (" …" if len(pending) > 1 else ""),
            )
        )
    else:
        checks.append(Check("migrations", "ok", f"at {current}, the newest"))
    checks.append(await _clock(engine))
    return checks


def _sqlite_exists(url: URL) -> bool:
    return not url.database or url.database == ":memory:" or Path(url.database).exists()


def _not_created(url: URL) -> list[Check]:
    """A SQLite file that does not exist yet: ``keel serve all`` (or ``keel migrate``)
    creates it, so that is fine, if its directory can be written."""
    path = Path(url.database or "")
    if not _writable(path.parent):
        return [
            Check("database", "fail", f"{path} cannot be created: its directory is not writable")
        ]
    return [
        Check("database", "ok", f"{path} does not exist yet; the first start creates it"),
        Check("migrations", "skip", "nothing to check before the database exists"),
        Check("clock", "skip", "SQLite runs on this machine's clock"),
    ]


def _writable(path: Path) -> bool:
    """Whether ``path`` — or, if missing, its nearest existing parent — can be written."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)


async def _clock(engine: AsyncEngine) -> Check:
    if engine.dialect.name != "postgresql":
        return Check("clock", "skip", "SQLite runs on this machine's clock")
    async with engine.connect() as conn:
        before = time.time()
        theirs = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
        after = time.time()
    ours = datetime.fromtimestamp((before + after) / 2, UTC)
    skew = (ours - theirs).total_seconds()
    detail = f"{abs(skew):.3f} s {'ahead of' if skew > 0 else 'behind'} the database"
    if abs(skew) >= SKEW_FAIL:
        return Check("clock", "fail", f"{detail}: sync this machine's clock (NTP)")
    if abs(skew) >= SKEW_WARN:
        return Check("clock", "warn", f"{detail}: leases and expiries assume synced clocks")
    return Check("clock", "ok", detail)


async def _redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check("redis", "skip", "REDIS_URL unset: one process, in-process bus")
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=TIMEOUT)
    try:
        await redis.ping()
    except Exception as exc:  # redis-py raises many kinds; each means "not usable"
        return Check("redis", "fail", f"{redact(settings.redis_url)}: {exc}")
    finally:
        await redis.aclose()
    return Check("redis", "ok", f"{redact(settings.redis_url)} answers PING")


async def _storage(settings: Settings) -> Check:
    files = settings.files
    if not files.s3_bucket:  # checked without creating it
        where = f"directory {files.local_dir}"
        if not _writable(files.local_dir):
            return Check("file storage", "fail", f"{where} cannot be written")
        exists = "is usable" if files.local_dir.is_dir() else "will be created at the first start"
        return Check("file storage", "ok", f"{where} {exists}")
    where = f"S3 bucket {files.s3_bucket}"
    try:
        async with build_blob_store(files) as blobs:
            await blobs.check()
    except StorageError as exc:
        return Check("file storage", "fail", f"{where}: {exc}")
    return Check("file storage", "ok", f"{where} is usable")


async def _smtp(settings: Settings) -> Check:
    url = settings.notifications.smtp_url
    if not url:
        return Check("smtp", "skip", "KEEL_SMTP_URL unset: notifications send no email")
    mailer = SmtpMailer(url, timeout_seconds=TIMEOUT)
    where = f"{mailer.server.host}:{mailer.server.port}"
    try:
        await mailer.check()
    except DeliveryFailed as exc:
        return Check("smtp", "fail", str(exc))
    return Check("smtp", "ok", f"{where} greets, and takes the login when one is set")


async def _health(name: str, addr: str | None, service: str, tls: TlsSettings) -> Check:
    if not addr:
        return Check(name, "skip", "no address set")
    async with open_channel(addr, tls) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            return Check(name, "fail", f"{addr}: {exc.code().name} {exc.details() or ''}".strip())
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    verdict: Verdict = "ok" if status == "SERVING" else "fail"
    return Check(name, verdict, f"{addr}: {service} {status}")
