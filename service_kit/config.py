"""Configuration from the environment, validated once at start.

Every setting has a default that runs Keel on one laptop: SQLite under
``./var/``, the in-process bus, local addresses. :func:`load_settings` reads
the environment and raises :class:`ConfigError` naming *every* bad variable at
once, so an operator fixes them in one go.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from service_kit.logs import redact

T = TypeVar("T")


class ConfigError(Exception):
    """One or more environment variables hold values Keel cannot use."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Address:
    """A ``HOST:PORT`` to listen on or connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """Limits of the WebSocket bridge (``KEEL_WS_*``)."""

    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 100
    messages_per_second: float = 20.0
    burst: int = 40
    max_connections_per_tenant: int = 10_000
    max_connections_per_user: int = 20
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    send_buffer_bytes: int = 1024 * 1024
    compression: bool = False
    #: Serve ``/_conformance/echo`` (echoes every message; no token, no keel.v1) for
    #: the WebSocket conformance suite. Off by default; never turn it on in production.
    conformance_echo: bool = False


_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")

# -- the server -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where and how to reach the SMTP server (from :func:`parse_smtp_url`)."""

    host: str
    port: int
    #: TLS from the first byte (``smtps://``).
    implicit_tls: bool = False
    #: Upgrade with STARTTLS, and refuse to go on when the server cannot.
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_smtp_url(url: str) -> SmtpServer:
    """Read ``smtp://[user:pass@]host[:port][?starttls=1]`` or ``smtps://…``.

    Raises ValueError saying what is wrong (scheme, host, port, an unknown or
    contradictory query parameter).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("expected smtp://[user:password@]host[:port][?starttls=1] or smtps://…")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from exc
    starttls = False
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "starttls":
            raise ValueError(f"unknown parameter {name!r}; the only one is starttls=1")
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(f"starttls={value!r}: expected 1 or 0")
        starttls = value.lower() in _TRUE
    implicit_tls = parts.scheme == "smtps"
    if implicit_tls and starttls:
        raise ValueError("smtps:// is TLS from the start; starttls=1 goes with smtp://")
    default_port = 465 if implicit_tls else 587 if starttls else 25
    return SmtpServer(
        host=parts.hostname,
        port=port or default_port,
        implicit_tls=implicit_tls,
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


@dataclass(frozen=True, slots=True)
class NotificationSettings:
    """How the notification service sends (``KEEL_SMTP_*``, ``KEEL_NOTIFICATION_*``, …)."""

    #: ``smtp://[user:pass@]host[:port][?starttls=1]`` or ``smtps://…``; None: no email.
    smtp_url: str | None = None
    #: The sender of emails of tenants that set no ``email_from``.
    smtp_from: str = "Keel <keel@localhost>"
    #: The base URL at which browsers reach the bridge's HTTP port (unsubscribe links);
    #: None: ``http://`` + ``KEEL_WS_ADDR``.
    public_url: str | None = None
    #: The ``sub`` claim of VAPID JWTs: how a push service can reach the operator.
    vapid_subject: str = "mailto:keel@localhost"
    #: Attempts of one email, push or webhook delivery before it is given up.
    max_attempts: int = 10
    #: How long one email, push or webhook attempt may take.
    timeout_seconds: float = 15.0
    #: Deliveries one process runs at once.
    concurrency: int = 16
    #: HOST:PORT of a notification service, for a bridge of a cluster (the inbox frames).
    service_addr: str | None = None


@dataclass(frozen=True, slots=True)
class FileSettings:
    """Where the file service keeps blobs (``KEEL_FILES_DIR``, ``KEEL_S3_*``).

    With ``s3_bucket`` set, blobs go to that S3-compatible bucket (credentials from the
    usual ``AWS_*`` variables); otherwise to files under ``local_dir``.
    """

    local_dir: Path = Path("var/files")
    #: The S3 endpoint, e.g. ``http://minio:9000``; None: AWS's endpoint for the region.
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    #: Where the file service serves tus uploads, upload URLs and signed downloads.
    http_addr: Address = Address("127.0.0.1", 8090)
    #: The base URL at which clients reach ``http_addr``; None: ``http://`` + ``http_addr``.
    public_url: str | None = None
    max_file_bytes: int = 1 << 30
    tenant_max_bytes: int = 10 << 30
    tenant_max_files: int = 100_000
    #: Media types (``image/png``), families (``image/*``) or ``*/*``.
    allowed_types: tuple[str, ...] = ("*/*",)
    #: How long a tus upload or an upload URL stays open before it expires.
    upload_ttl_seconds: int = 86_400
    #: How often each file-service process expires abandoned uploads and purges blobs.
    sweep_seconds: float = 60.0
    #: Uploads a tenant may start per minute (streams, tus creations, upload URLs).
    uploads_per_minute: int = 600
    #: Origins allowed to call the HTTP endpoints from a browser (CORS); ``*`` for any.
    cors_origins: tuple[str, ...] = ("*",)
    #: Download URLs from ``CreateDownloadUrl`` presigned by S3 (bytes served by S3, not
    #: by Keel); needs an S3 endpoint that clients can reach.
    s3_presigned_downloads: bool = False
    #: How long the download URLs of a message's attachments stay valid once signed.
    attachment_url_ttl_seconds: int = 86_400

    @property
    def backend(self) -> str:
        """``"s3"`` or ``"local"``."""
        return "s3" if self.s3_bucket else "local"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Keel's own TLS (``KEEL_TLS_*``; docs/deploy.md#tls); all unset: plaintext.

    With ``cert`` and ``key`` every port a process listens on serves TLS with them (gRPC,
    the bridge's ``wss://``, the file service's ``https://``; not ``/metrics``) and the
    process calls other Keel processes over TLS, trusting the system's roots. With ``ca``
    as well, Keel's own clients trust only servers ``ca`` signed and present
    ``cert``/``key``, and gRPC servers accept only clients whose certificate ``ca`` signed
    (mutual TLS) unless ``client_auth`` is off. Browsers never need a certificate.
    """

    #: PEM certificate chain this process serves (and presents as a client under mTLS).
    cert: Path | None = None
    #: PEM private key of ``cert``.
    key: Path | None = None
    #: PEM CA bundle: the only issuer of peers' certificates Keel trusts (and, unless
    #: ``client_auth`` is off, requires of gRPC clients: mutual TLS).
    ca: Path | None = None
    #: With ``ca``: whether gRPC servers require a client certificate ``ca`` signed.
    client_auth: bool = True
    #: The name Keel's gRPC clients expect in servers' certificates instead of the host
    #: they dial (``grpc.ssl_target_name_override``); None: the dialled host.
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether this process serves and calls over TLS."""
        return self.cert is not None

    @property
    def mutual(self) -> bool:
        """Whether gRPC servers require client certificates ``ca`` signed."""
        return self.cert is not None and self.ca is not None and self.client_auth


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a Keel process is configured with (docs/configuration.md lists it)."""

    database_url: str
    redis_url: str | None
    data_dir: Path
    grpc_addr: Address
    metrics_addr: Address | None
    ws_addr: Address
    admin_token: str | None
    peer_token: str | None
    tenant_service_addr: str | None
    gateway_addr: str | None
    log_level: str
    shutdown_grace_seconds: float
    auth_cache_seconds: float
    secret_hash_cost: int
    validate_failures_per_minute: int
    demo_tenant: bool
    token_secret: str | None
    token_secret_previous: str | None
    max_message_bytes: int
    bridge: BridgeSettings
    webhook_retry_schedule: tuple[float, ...]
    webhook_timeout_seconds: float
    webhook_allow_private: bool
    webhook_disable_after_failures: int
    event_retention_days: float
    max_event_streams_per_tenant: int
    #: How much longer than one attempt may take a delivery job (webhook, email, push) is
    #: leased: how long the job of a process that died mid-attempt waits for another.
    job_lease_margin_seconds: float = 30.0
    notifications: NotificationSettings = NotificationSettings()
    files: FileSettings = FileSettings()
    tls: TlsSettings = TlsSettings()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def parse_address(text: str) -> Address:
    """``"127.0.0.1:50051"`` → ``Address``; raises ``ValueError`` with a readable reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, for example 127.0.0.1:50051")
    host = host.strip("[]")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return Address(host, int(port_text))


def normalize_database_url(url: str) -> str:
    """Accept the usual spellings and return a SQLAlchemy async URL.

    ``postgres://`` and ``postgresql://`` become ``postgresql+asyncpg://``;
    ``sqlite:///path`` becomes ``sqlite+aiosqlite:///path``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a URL such as postgresql://user@host:5432/db or sqlite:///path")
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        if not urlsplit(url).hostname and "host=" not in url:
            raise ValueError("a PostgreSQL URL needs a host")
        return "postgresql+asyncpg://" + rest
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return "sqlite+aiosqlite://" + rest
    raise ValueError("only postgresql:// and sqlite:// databases are supported")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _number(kind: Callable[[str], T], low: float, high: float) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"expected a number from {low} to {high}") from None
        if not low <= value <= high:  # type: ignore[operator]
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return parse


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a URL such as redis://127.0.0.1:6379/0")
    return text


def _schedule(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError("expected seconds separated by commas, for example 5,300,1800") from None
    if not delays or len(delays) > 50 or any(not 0 <= d <= 7 * 86400 for d in delays):
        raise ValueError("expected 1 to 50 delays, each from 0 to 604800 seconds")
    return delays


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration; raise :class:`ConfigError` listing every problem."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    def get(name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            # A URL's password is not shown (the error goes to stderr and logs).
            problems.append(redact(f"{name}={raw!r}: {exc}"))
            return default

    data_dir = Path(env.get("KEEL_DATA_DIR") or "var")
    default_db = f"sqlite+aiosqlite:///{data_dir / 'keel.db'}"
    metrics_raw = env.get("KEEL_METRICS_ADDR", "")
    metrics_addr: Address | None = (
        None
        if metrics_raw.lower() in ("off", "none", "-")
        else get("KEEL_METRICS_ADDR", Address("127.0.0.1", 9100), parse_address)
    )
    settings = Settings(
        database_url=get("DATABASE_URL", default_db, normalize_database_url),
        redis_url=get("REDIS_URL", None, _redis_url),
        data_dir=data_dir,
        grpc_addr=get("KEEL_GRPC_ADDR", Address("127.0.0.1", 50051), parse_address),
        metrics_addr=metrics_addr,
        ws_addr=get("KEEL_WS_ADDR", Address("127.0.0.1", 8080), parse_address),
        admin_token=env.get("KEEL_ADMIN_TOKEN") or None,
        peer_token=env.get("KEEL_PEER_TOKEN") or None,
        tenant_service_addr=get("KEEL_TENANT_SERVICE_ADDR", None, _peer_address),
        gateway_addr=get("KEEL_GATEWAY_ADDR", None, _peer_address),
        log_level=get("KEEL_LOG_LEVEL", "INFO", _log_level),
        shutdown_grace_seconds=get("KEEL_SHUTDOWN_GRACE_SECONDS", 10.0, _number(float, 0, 3600)),
        auth_cache_seconds=get("KEEL_AUTH_CACHE_SECONDS", 300.0, _number(float, 0, 86400)),
        secret_hash_cost=get("KEEL_SECRET_HASH_COST", 15, _number(int, 10, 20)),
        validate_failures_per_minute=get(
            "KEEL_VALIDATE_FAILURES_PER_MINUTE", 10, _number(int, 1, 100000)
        ),
        demo_tenant=get("KEEL_DEMO_TENANT", True, _parse_bool),
        token_secret=env.get("KEEL_TOKEN_SECRET") or None,
        token_secret_previous=env.get("KEEL_TOKEN_SECRET_PREVIOUS") or None,
        max_message_bytes=get("KEEL_MAX_MESSAGE_BYTES", 65536, _number(int, 1, 4 * 1024 * 1024)),
        webhook_retry_schedule=get(
            "KEEL_WEBHOOK_RETRY_SCHEDULE",
            (5, 300, 1800, 7200, 18000, 36000, 36000, 36000, 36000, 36000, 36000),
            _schedule,
        ),
        webhook_timeout_seconds=get("KEEL_WEBHOOK_TIMEOUT_SECONDS", 15.0, _number(float, 0.1, 300)),
        webhook_allow_private=get("KEEL_WEBHOOK_ALLOW_PRIVATE", False, _parse_bool),
        webhook_disable_after_failures=get(
            "KEEL_WEBHOOK_DISABLE_AFTER_FAILURES", 100, _number(int, 1, 1_000_000)
        ),
        event_retention_days=get("KEEL_EVENT_RETENTION_DAYS", 7.0, _number(float, 0.0001, 3650)),
        max_event_streams_per_tenant=get(
            "KEEL_MAX_EVENT_STREAMS_PER_TENANT", 10, _number(int, 1, 100_000)
        ),
        job_lease_margin_seconds=get(
            "KEEL_JOB_LEASE_MARGIN_SECONDS", 30.0, _number(float, 1, 3600)
        ),
        notifications=NotificationSettings(
            smtp_url=get("KEEL_SMTP_URL", None, _smtp_url),
            smtp_from=get("KEEL_SMTP_FROM", "Keel <keel@localhost>", _mailbox),
            public_url=get("KEEL_PUBLIC_URL", None, _http_url),
            vapid_subject=get("KEEL_VAPID_SUBJECT", "mailto:keel@localhost", _vapid_subject),
            max_attempts=get("KEEL_NOTIFICATION_MAX_ATTEMPTS", 10, _number(int, 1, 100)),
            timeout_seconds=get(
                "KEEL_NOTIFICATION_TIMEOUT_SECONDS", 15.0, _number(float, 0.1, 300)
            ),
            concurrency=get("KEEL_NOTIFICATION_CONCURRENCY", 16, _number(int, 1, 1000)),
            service_addr=get("KEEL_NOTIFICATION_SERVICE_ADDR", None, _peer_address),
        ),
        files=FileSettings(
            local_dir=Path(env.get("KEEL_FILES_DIR") or data_dir / "files"),
            s3_endpoint_url=get("KEEL_S3_ENDPOINT_URL", None, _http_url),
            s3_bucket=get("KEEL_S3_BUCKET", None, _s3_bucket),
            s3_region=get("KEEL_S3_REGION", "us-east-1", _s3_region),
            http_addr=get("KEEL_FILES_HTTP_ADDR", Address("127.0.0.1", 8090), parse_address),
            public_url=get("KEEL_FILES_PUBLIC_URL", None, _http_url),
            max_file_bytes=get("KEEL_FILES_MAX_FILE_BYTES", 1 << 30, _number(int, 1, 5 << 40)),
            tenant_max_bytes=get("KEEL_FILES_TENANT_MAX_BYTES", 10 << 30, _number(int, 1, 1 << 50)),
            tenant_max_files=get(
                "KEEL_FILES_TENANT_MAX_FILES", 100_000, _number(int, 1, 1_000_000_000)
            ),
            allowed_types=get("KEEL_FILES_ALLOWED_TYPES", ("*/*",), _media_patterns),
            upload_ttl_seconds=get(
                "KEEL_FILES_UPLOAD_TTL_SECONDS", 86_400, _number(int, 60, 7 * 86_400)
            ),
            sweep_seconds=get("KEEL_FILES_SWEEP_SECONDS", 60.0, _number(float, 0.1, 86_400)),
            uploads_per_minute=get(
                "KEEL_FILES_UPLOADS_PER_MINUTE", 600, _number(int, 1, 1_000_000)
            ),
            cors_origins=get("KEEL_FILES_CORS_ORIGINS", ("*",), _origins),
            s3_presigned_downloads=get("KEEL_S3_PRESIGNED_DOWNLOADS", False, _parse_bool),
            attachment_url_ttl_seconds=get(
                "KEEL_ATTACHMENT_URL_TTL_SECONDS", 86_400, _number(int, 60, 7 * 86_400)
            ),
        ),
        bridge=BridgeSettings(
            max_frame_bytes=get("KEEL_WS_MAX_FRAME_BYTES", 65536, _number(int, 256, 16 << 20)),
            max_subscriptions=get("KEEL_WS_MAX_SUBSCRIPTIONS", 100, _number(int, 1, 100_000)),
            messages_per_second=get(
                "KEEL_WS_MESSAGES_PER_SECOND", 20.0, _number(float, 0.1, 100_000)
            ),
            burst=get("KEEL_WS_BURST", 40, _number(int, 1, 1_000_000)),
            max_connections_per_tenant=get(
                "KEEL_WS_MAX_CONNECTIONS_PER_TENANT", 10_000, _number(int, 1, 10_000_000)
            ),
            max_connections_per_user=get(
                "KEEL_WS_MAX_CONNECTIONS_PER_USER", 20, _number(int, 1, 100_000)
            ),
            ping_interval=get("KEEL_WS_PING_INTERVAL", 20.0, _number(float, 1, 3600)),
            ping_timeout=get("KEEL_WS_PING_TIMEOUT", 20.0, _number(float, 1, 3600)),
            handshake_timeout=get("KEEL_WS_HANDSHAKE_TIMEOUT", 10.0, _number(float, 0.1, 600)),
            send_buffer_bytes=get(
                "KEEL_WS_SEND_BUFFER_BYTES", 1 << 20, _number(int, 4096, 1 << 30)
            ),
            compression=get("KEEL_WS_COMPRESSION", False, _parse_bool),
            conformance_echo=get("KEEL_WS_CONFORMANCE_ECHO", False, _parse_bool),
        ),
        tls=TlsSettings(
            cert=get("KEEL_TLS_CERT", None, _readable_file),
            key=get("KEEL_TLS_KEY", None, _readable_file),
            ca=get("KEEL_TLS_CA", None, _readable_file),
            client_auth=get("KEEL_TLS_CLIENT_AUTH", True, _parse_bool),
            server_name=get("KEEL_TLS_SERVER_NAME", None, _host_name),
        ),
    )
    for name, token in (
        ("KEEL_ADMIN_TOKEN", settings.admin_token),
        ("KEEL_PEER_TOKEN", settings.peer_token),
    ):
        if token is not None and len(token) < 16:
            problems.append(f"{name}: must be at least 16 characters long")
    for name, secret in (
        ("KEEL_TOKEN_SECRET", settings.token_secret),
        ("KEEL_TOKEN_SECRET_PREVIOUS", settings.token_secret_previous),
    ):
        if secret is not None and len(secret) < 32:
            problems.append(f"{name}: must be at least 32 characters long")
    if settings.files.s3_presigned_downloads and not settings.files.s3_bucket:
        problems.append(
            "KEEL_S3_PRESIGNED_DOWNLOADS is set but KEEL_S3_BUCKET is not: only S3 presigns"
            " URLs (files on local disk are served by the file service's own signed URLs)"
        )
    if settings.files.s3_endpoint_url and not settings.files.s3_bucket:
        problems.append(
            "KEEL_S3_ENDPOINT_URL is set but KEEL_S3_BUCKET is not: set the bucket to store"
            " files in S3, or unset the endpoint to keep them in KEEL_FILES_DIR"
        )
    problems += _tls_problems(settings.tls, env)
    if problems:
        raise ConfigError(problems)
    return settings


def _tls_problems(tls: TlsSettings, env: Mapping[str, str]) -> list[str]:
    """What keeps ``tls`` from working: half a certificate pair, a CA or server name without
    a certificate, a key that is not the certificate's, files that are not PEM. (Files that
    cannot be read were named already.)"""
    cert_given, key_given = bool(env.get("KEEL_TLS_CERT")), bool(env.get("KEEL_TLS_KEY"))
    problems = []
    if cert_given != key_given:
        present, missing = ("CERT", "KEY") if cert_given else ("KEY", "CERT")
        problems.append(
            f"KEEL_TLS_{present} is set but KEEL_TLS_{missing} is not: set both to serve TLS"
        )
    if env.get("KEEL_TLS_CLIENT_AUTH", "").lower() in _TRUE and not env.get("KEEL_TLS_CA"):
        problems.append(
            "KEEL_TLS_CLIENT_AUTH is on but KEEL_TLS_CA is not set: client certificates are"
            " checked against KEEL_TLS_CA"
        )
    if not cert_given and not key_given:
        for name, need in (
            ("KEEL_TLS_CA", "Keel speaks TLS only with its own certificate and key"),
            ("KEEL_TLS_SERVER_NAME", "it names the certificate peers present over TLS"),
        ):
            if env.get(name):
                problems.append(f"{name} is set but KEEL_TLS_CERT and KEEL_TLS_KEY are not: {need}")
    if tls.cert is not None and tls.key is not None:
        try:
            # An encrypted key would make OpenSSL prompt for its passphrase: say no instead.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                tls.cert, tls.key, password=lambda: b""
            )
        except ssl.SSLError as exc:
            problems.append(
                f"KEEL_TLS_CERT={str(tls.cert)!r} and KEEL_TLS_KEY={str(tls.key)!r}: not a PEM"
                f" certificate chain and its unencrypted private key ({exc.reason or exc})"
            )
    if tls.ca is not None:
        try:
            ssl.create_default_context(cafile=tls.ca)
        except ssl.SSLError as exc:
            problems.append(
                f"KEEL_TLS_CA={str(tls.ca)!r}: holds no PEM CA certificate ({exc.reason or exc})"
            )
    return problems


def _readable_file(text: str) -> Path:
    path = Path(text)
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    return path


def _host_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.*-]{0,251}[A-Za-z0-9])?", text):
        raise ValueError("expected a host name such as keel.internal")
    return text


_MEDIA_PATTERN = re.compile(r"(\*/\*|[a-z0-9][a-z0-9.+-]*/(\*|[a-z0-9][a-z0-9.+-]*))")


def _media_patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not patterns:
        raise ValueError("expected a comma-separated list such as image/*,application/pdf")
    for pattern in patterns:
        if not _MEDIA_PATTERN.fullmatch(pattern):
            raise ValueError(
                f"{pattern!r} is not a media type (image/png), a family (image/*) or */*"
            )
    return patterns


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(part.strip() for part in text.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"{origin!r} is not * or an origin such as https://app.example.com")
    if not origins:
        raise ValueError("expected * or a comma-separated list of origins")
    return origins


def _peer_address(text: str) -> str:
    parse_address(text)
    return text


def _smtp_url(text: str) -> str:
    parse_smtp_url(text)
    return text


def _mailbox(text: str) -> str:
    _, address = parseaddr(text)
    if "@" not in address:
        raise ValueError("expected an address such as `Keel <keel@example.com>`")
    return text


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL, such as https://chat.example.com")
    return text.rstrip("/")


def _vapid_subject(text: str) -> str:
    if not (text.startswith("mailto:") or text.startswith("https://")):
        raise ValueError("expected a mailto: or https: URI, such as mailto:ops@example.com")
    return text


_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def _s3_bucket(text: str) -> str:
    if not _S3_BUCKET.fullmatch(text) or ".." in text:
        raise ValueError(
            "expected an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-',"
            " starting and ending with a letter or digit, such as keel-files"
        )
    return text


def _s3_region(text: str) -> str:
    if not _S3_REGION.fullmatch(text):
        raise ValueError("expected a region name such as us-east-1 or eu-west-3")
    return text
