"""The one server bootstrap every Keel process uses.

:func:`open_runtime` builds what a process shares (database engine with its
migrations applied, bus, rate limiter), waiting a bounded time for the database and
Redis and saying why in every ``waiting for …`` line; each service package turns it
into a :class:`ServiceSpec`; :class:`KeelServer` serves the specs on one grpc.aio port
with health, reflection (:mod:`service_kit.reflection`), Keel's checks around every
handler (:class:`~service_kit.interceptor.KeelHandlers`), ``/metrics``,
TLS when configured (:mod:`service_kit.tls`), and a graceful stop: health turns
NOT_SERVING, new RPCs are refused, in-flight ones get ``grace`` seconds to finish.

Health invariants: a service is SERVING only while it can answer its calls — never a
service whose methods all answer UNIMPLEMENTED (:func:`unimplemented_spec`: always
NOT_SERVING), never one that needs the unreachable database; the process's own status
(``""``) is SERVING when every implemented service is. ``Health/List`` reports them all.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    RedisError,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit import db, tracing
from service_kit.auth import Authenticator
from service_kit.bus import EventBus, InProcessEventBus, RedisEventBus
from service_kit.config import Settings
from service_kit.interceptor import KeelHandlers, MethodPolicy
from service_kit.metrics import DEPENDENCY_UP, SERVICE_SERVING, MetricsEndpoint, serve_metrics
from service_kit.ratelimit import InMemoryRateLimiter, RateLimiter, RedisRateLimiter
from service_kit.reflection import enable_reflection
from service_kit.tls import bind_grpc_port

log = logging.getLogger("keel.server")

T = TypeVar("T")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: How long a health check waits for one dependency before counting it down (seconds).
DEPENDENCY_TIMEOUT = 2.0


@dataclass
class Runtime:
    """What the services of one process share; built once by :func:`open_runtime`."""

    settings: Settings
    engine: AsyncEngine
    bus: EventBus
    rate_limiter: RateLimiter
    redis: Redis | None = None

    async def close(self) -> None:
        await self.bus.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


async def open_runtime(settings: Settings, *, wait_for_database: float = 30.0) -> Runtime:
    """Connect to the database (waiting up to ``wait_for_database`` s), migrate, build the bus.

    Raises ``RuntimeError`` with a one-line message saying what is wrong (the database
    does not exist, refused the connection or the credentials; the migration failed) when
    the database stays unusable.
    """
    engine = db.create_engine(settings.database_url)
    deadline = asyncio.get_running_loop().time() + wait_for_database
    try:
        await prepare_database(engine, deadline)
    except BaseException:
        await engine.dispose()
        raise
    try:
        bus, redis = await open_bus(
            settings, wait=max(0.0, deadline - asyncio.get_running_loop().time())
        )
    except RuntimeError:
        await engine.dispose()
        raise
    limiter: RateLimiter = RedisRateLimiter(redis) if redis is not None else InMemoryRateLimiter()
    return Runtime(settings, engine, bus, limiter, redis)


async def prepare_database(engine: AsyncEngine, deadline: float) -> list[str]:
    """Wait for the database (:func:`wait_for_database_at`), then migrate it; returns the
    migrations applied (:func:`service_kit.db.migrate`). Raises ``RuntimeError`` with one
    line saying what is wrong when the database stays unusable or a migration fails."""
    await wait_for_database_at(engine, deadline)
    try:
        return await db.migrate(engine)
    except SQLAlchemyError as exc:
        problem = db.describe_problem(exc, engine.url)
        raise RuntimeError(
            f"cannot migrate the database at {engine.url.render_as_string()}: {problem}"
        ) from exc


async def wait_for_database_at(engine: AsyncEngine, deadline: float) -> None:
    """Return once the database answers; until the loop's clock passes ``deadline``, log
    ``waiting for the database`` every second with the reason. Then raise ``RuntimeError``
    with that reason (and, for a database that does not exist, how to create it)."""
    url = engine.url.render_as_string()
    while (problem := await db.check(engine)) is not None:
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"cannot use the database at {url} (DATABASE_URL): {problem}")
        log.warning(
            f"waiting for the database: {problem}",
            extra={"database": url, "reason": problem.reason},
        )
        await asyncio.sleep(1.0)


async def open_bus(settings: Settings, *, wait: float = 30.0) -> tuple[EventBus, Redis | None]:
    """The bus: Redis pub/sub when ``REDIS_URL`` is set (waiting up to ``wait`` s for it),
    else in-process. Raises ``RuntimeError`` naming REDIS_URL when Redis stays unreachable."""
    if not settings.redis_url:
        return InProcessEventBus(), None
    redis = Redis.from_url(settings.redis_url)
    try:
        await _wait_for_redis(
            redis, _without_password(settings.redis_url), asyncio.get_running_loop().time() + wait
        )
    except RuntimeError:
        await redis.aclose()
        raise
    return RedisEventBus(redis), redis


async def _wait_for_redis(redis: Redis, where: str, deadline: float) -> None:
    while True:
        try:
            await redis.ping()
            return
        except (RedisError, OSError) as exc:
            reason = _redis_problem(exc)
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"cannot reach Redis at {where} (REDIS_URL): {reason}") from exc
        log.warning(f"waiting for Redis: {reason}", extra={"redis": where, "reason": reason})
        await asyncio.sleep(1.0)


def _redis_problem(exc: BaseException) -> str:
    """Why Redis did not answer, in words an operator can act on."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return f"authentication failed: {text} (check the password in REDIS_URL)"
    if "refused" in text.lower() or "connect call failed" in text.lower():
        return "connection refused (is Redis running and listening there?)"
    return text


def _without_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service as the bootstrap serves it.

    ``policies`` gives the :class:`MethodPolicy` of methods by short name; the
    others get ``default_policy``. ``uses_database`` services report
    NOT_SERVING while the database is unreachable; services not ``implemented``
    (registered so the API is visible, every method UNIMPLEMENTED) always.
    """

    name: str
    register: Callable[[grpc.aio.Server], None]
    default_policy: MethodPolicy
    policies: Mapping[str, MethodPolicy] = field(default_factory=dict)
    uses_database: bool = True
    implemented: bool = True
    #: Run before the service is registered and the server accepts calls (open what it
    #: needs, start background work), and after the server stopped.
    on_start: Callable[[], Awaitable[None]] | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None
    #: A dependency besides the database that must answer for the service to be SERVING
    #: (the file service's blob store): True when it does.
    dependency_up: Callable[[], Awaitable[bool]] | None = None
    #: The ``dependency`` label of ``keel_dependency_up`` for ``dependency_up``'s answer
    #: (the file service's blob store is the only such dependency today).
    dependency_name: str = "blob_store"
    #: gRPC server options the service needs (the file service bounds its flow-control
    #: window); in a server of several services they apply to all of them.
    grpc_options: Sequence[tuple[str, int]] = ()

    def method_policies(self) -> dict[str, MethodPolicy]:
        """Policies keyed by full method path (``/pkg.Service/Method``)."""
        service = descriptor_pool.Default().FindServiceByName(self.name)
        unknown = set(self.policies) - {m.name for m in service.methods}
        if unknown:
            raise ValueError(f"{self.name} has no methods {sorted(unknown)}")
        return {
            f"/{self.name}/{m.name}": self.policies.get(m.name, self.default_policy)
            for m in service.methods
        }


class KeelServer:
    """Serves ``specs`` on the process's gRPC port; see the module docstring.

    With ``reuse_port`` the port is bound with ``SO_REUSEPORT``, so that several worker
    processes share it and the kernel spreads new connections between them."""

    def __init__(
        self,
        runtime: Runtime,
        specs: Sequence[ServiceSpec],
        *,
        authenticator: Authenticator | None,
        health_interval: float = 2.0,
        reuse_port: bool = False,
    ) -> None:
        self._runtime = runtime
        self._specs = list(specs)
        self._health = KeelHealth()
        self._health_interval = health_interval
        self._monitor: asyncio.Task[None] | None = None
        self._metrics: MetricsEndpoint | None = None
        policies: dict[str, MethodPolicy] = {}
        for spec in self._specs:
            policies.update(spec.method_policies())
        self._handlers = KeelHandlers(
            policies=policies,
            authenticator=authenticator,
            rate_limiter=runtime.rate_limiter,
            admin_token=runtime.settings.admin_token,
            peer_token=runtime.settings.peer_token,
        )
        # Keel's checks wrap each handler at registration (start); the only grpc.aio
        # interceptor is the tracing instrumentation, when tracing is on.
        instrumentation = tracing.server_instrumentation()
        self._server = grpc.aio.server(
            interceptors=[instrumentation] if instrumentation is not None else None,
            options=[
                # Off unless asked (``keel serve gateway --workers N``): a second process on
                # the same port then fails to start rather than silently sharing its calls.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                # Room for the largest message content allowed, plus the request around it.
                (
                    "grpc.max_receive_message_length",
                    max(4 << 20, runtime.settings.max_message_bytes + (256 << 10)),
                ),
                *(option for spec in self._specs for option in spec.grpc_options),
            ],
        )
        self.port = 0

    @property
    def metrics_port(self) -> int | None:
        return self._metrics.port if self._metrics else None

    async def start(self) -> None:
        """Bind the gRPC port (``port`` holds the bound one) and ``/metrics``; start serving."""
        settings = self._runtime.settings
        for spec in self._specs:
            if spec.on_start is not None:
                await spec.on_start()
        registrar = self._handlers.registering(self._server)
        for spec in self._specs:
            spec.register(registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [spec.name for spec in self._specs]
        enable_reflection([*names, health.SERVICE_NAME], self._server)
        try:
            self.port = bind_grpc_port(self._server, str(settings.grpc_addr), settings.tls)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen on {settings.grpc_addr} (KEEL_GRPC_ADDR)") from exc
        if settings.metrics_addr is not None:
            try:
                self._metrics = serve_metrics(
                    settings.metrics_addr.host, settings.metrics_addr.port
                )
            except OSError as exc:
                raise RuntimeError(
                    f"cannot serve metrics on {settings.metrics_addr} (KEEL_METRICS_ADDR): {exc}"
                ) from exc
        await self._server.start()
        await self._check_health()
        self._monitor = asyncio.create_task(self._watch_database(), name="health-monitor")
        log.info(
            "serving",
            extra={
                "grpc_addr": f"{settings.grpc_addr.host}:{self.port}",
                "metrics_port": self.metrics_port,
                "services": names,
            },
        )

    async def _check_health(self) -> None:
        """Check the database, Redis (when configured) and each service's own dependency,
        every check bounded by :data:`DEPENDENCY_TIMEOUT`; set health and the
        ``keel_service_serving`` and ``keel_dependency_up`` gauges."""
        database_up = await db.ping(self._runtime.engine, within=DEPENDENCY_TIMEOUT)
        DEPENDENCY_UP.labels("database").set(1 if database_up else 0)
        if self._runtime.redis is not None:
            redis_up = await _answers(self._runtime.redis.ping)
            DEPENDENCY_UP.labels("redis").set(1 if redis_up else 0)
        everything_up = True
        for spec in self._specs:
            up = spec.implemented and (database_up or not spec.uses_database)
            if spec.implemented and spec.dependency_up is not None:
                dependency_up = await _answers(spec.dependency_up)
                DEPENDENCY_UP.labels(spec.dependency_name).set(1 if dependency_up else 0)
                up = up and dependency_up
            everything_up &= up or not spec.implemented
            await self._health.set(spec.name, SERVING if up else NOT_SERVING)
            SERVICE_SERVING.labels(spec.name).set(1 if up else 0)
        await self._health.set("", SERVING if everything_up else NOT_SERVING)

    async def _watch_database(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            try:
                await self._check_health()
            except Exception:
                log.exception("health check failed")

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new RPCs, let in-flight ones finish within ``grace`` s."""
        if self._monitor is not None:
            self._monitor.cancel()
        await self._health.enter_graceful_shutdown()
        for spec in self._specs:
            SERVICE_SERVING.labels(spec.name).set(0)
        log.info("shutting down", extra={"grace_seconds": grace})
        await self._server.stop(grace)
        for spec in reversed(self._specs):
            if spec.on_stop is not None:
                await spec.on_stop()
        if self._metrics is not None:
            self._metrics.close()


async def _answers(check: Callable[[], Awaitable[Any]]) -> bool:
    """True when ``check`` returns something truthy (Redis's PING answers True) within
    :data:`DEPENDENCY_TIMEOUT`; False when it says no, raises or takes longer."""
    try:
        async with asyncio.timeout(DEPENDENCY_TIMEOUT):
            return bool(await check())
    except (TimeoutError, RedisError, OSError):
        return False


def unimplemented_spec(
    name: str,
    add_to_server: Callable[[T, grpc.aio.Server], None],
    servicer_class: Callable[[], T],
    default_policy: MethodPolicy,
    policies: Mapping[str, MethodPolicy] | None = None,
) -> ServiceSpec:
    """A spec serving a generated servicer base class: every method answers UNIMPLEMENTED.

    Registers an API whose implementation has not landed yet, so reflection
    shows it and its authentication policies already apply; its health is
    NOT_SERVING (a probe for it must not pass), and the process's own status
    does not count it.
    """
    return ServiceSpec(
        name=name,
        register=lambda server: add_to_server(servicer_class(), server),
        default_policy=default_policy,
        policies=policies or {},
        implemented=False,
    )


class KeelHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """grpcio's health servicer plus ``Health/List`` (which it leaves UNIMPLEMENTED):
    every service's status, the process's own (``""``) included."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, health_pb2.HealthCheckResponse.ServingStatus] = {"": SERVING}
        self._shut_down = False

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        if not self._shut_down:
            self._statuses[service] = status
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        self._shut_down = True
        await super().enter_graceful_shutdown()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """A snapshot of every status (all NOT_SERVING once shutting down)."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(
                    status=NOT_SERVING if self._shut_down else status
                )
                for name, status in self._statuses.items()
            }
        )


async def wait_for_stop_signal() -> None:
    """Return when the process gets SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
