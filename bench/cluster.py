"""Starting the real Keel processes for a benchmark, and setting up tenants, users, channels.

:class:`KeelCluster` is the cluster of the README: ``keel serve tenant-service``,
``keel serve gateway`` and any number of ``keel serve bridge`` processes, on a
fresh PostgreSQL database (created and dropped with asyncpg) and Redis. With
``bridge_workers``/``gateway_workers`` > 1 (by default ``KEEL_BENCH_BRIDGE_WORKERS`` and
``KEEL_BENCH_GATEWAY_WORKERS``, else 1) each bridge or the gateway is ``keel serve …
--workers N``: a supervisor and N workers on one port. Its :class:`Process` is the
supervisor, so ``pid`` meters the supervisor's CPU only (the workers are its children);
``metrics_port`` is worker 0's (worker ``i`` serves ``metrics_port + i``).
:func:`start_embedded` runs ``keel serve all`` on a fresh SQLite file. Every
process is the ``keel`` command the users run, with its output in files under
the run's log directory; every wait is bounded.

The set-up calls (tenants, tokens, channels) use the generated gRPC stubs from
a thread, with many calls in flight, so that tens of thousands of users take
seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.events.v1 import events_pb2, events_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from bench.ports import free_port

BIN = Path(sys.executable).parent
KEEL = [str(BIN / "keel")] if (BIN / "keel").exists() else [sys.executable, "-m", "keel_app.cli"]
PG_ADMIN_URL = os.environ.get(
    "KEEL_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("KEEL_BENCH_REDIS", "redis://127.0.0.1:6379/0")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

#: Limits raised for benchmarks (a load generator opens many connections per tenant, and
#: its CPU-starved clients on a small machine must not be cut as slow consumers).
BENCH_WS_ENV = {
    "KEEL_WS_MAX_CONNECTIONS_PER_TENANT": "1000000",
    "KEEL_WS_MAX_CONNECTIONS_PER_USER": "1000",
    "KEEL_WS_MESSAGES_PER_SECOND": "1000",
    "KEEL_WS_BURST": "1000",
    "KEEL_WS_SEND_BUFFER_BYTES": str(16 << 20),
}

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Process:
    """A running ``keel serve`` (or helper server) process and its output files."""

    name: str
    popen: subprocess.Popen[bytes]
    env: dict[str, str]
    stdout_path: Path
    stderr_path: Path
    addr: str = ""  # gRPC HOST:PORT
    ws_port: int = 0
    metrics_port: int = 0
    _files: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def listening_workers(self) -> int:
        """How many workers of ``keel serve bridge --workers N`` logged ``bridge
        listening`` (1 for a bridge without workers once it listens)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count('"message": "bridge listening"')

    def alive(self) -> bool:
        return self.popen.poll() is None

    def describe(self) -> str:
        def tail(path: Path) -> str:
            try:
                return path.read_text(errors="replace")[-2000:]
            except OSError:
                return ""

        return (
            f"{self.name} (pid {self.pid}, exit code {self.popen.poll()})\n--- stdout ---\n"
            f"{tail(self.stdout_path)}\n--- stderr ---\n{tail(self.stderr_path)}"
        )

    def stop(self) -> int:
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
            return self.popen.returncode
        finally:
            for handle in self._files:
                handle.close()
            self._files.clear()


def launch(name: str, args: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{name}-{time.monotonic_ns()}"
    out = (log_dir / f"{stamp}.stdout").open("wb")
    err = (log_dir / f"{stamp}.stderr").open("wb")
    try:
        popen = subprocess.Popen(list(args), env=dict(env), stdout=out, stderr=err)
    except BaseException:
        out.close()
        err.close()
        raise
    return Process(
        name,
        popen,
        dict(env),
        log_dir / f"{stamp}.stdout",
        log_dir / f"{stamp}.stderr",
        _files=[out, err],
    )


def bench_workers(variable: str) -> int:
    """The ``--workers`` count the environment asks for (``KEEL_BENCH_*_WORKERS``; 1)."""
    value = int(os.environ.get(variable, "1"))
    if value < 1:
        raise ValueError(f"{variable} must be at least 1 (got {value})")
    return value


def workers_args(count: int) -> list[str]:
    return ["--workers", str(count)] if count > 1 else []


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive free ports (the metrics ports of N workers)."""
    for _ in range(100):
        first = free_port()
        if all(_port_free(first + k) for k in range(1, count)):
            return first
    raise RuntimeError(f"no {count} free ports in a row")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _all_listening(bridge: Process, workers: int) -> bool:
    return bridge.listening_workers() >= workers


def clean_env(**changes: str) -> dict[str, str]:
    """The environment without any KEEL_*/DATABASE_URL/REDIS_URL of the caller, plus changes."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("KEEL_") or k in ("DATABASE_URL", "REDIS_URL"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(changes)
    return env


def health_serving(addr: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(addr) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_until(check: Callable[[], bool], process: Process, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not process.alive():
            raise RuntimeError(f"{what}: the process exited\n{process.describe()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {timeout}s\n{process.describe()}")
        time.sleep(0.1)


def metric_value(port: int, name: str) -> float | None:
    """One sample of a Prometheus metric from ``127.0.0.1:port/metrics`` (None if absent)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


# -- set-up calls --------------------------------------------------------------------------


def bounded(calls: Iterable[Callable[[], Future[Any]]], window: int = 200) -> list[Any]:
    """Run gRPC future-calls with at most ``window`` in flight; results in order."""
    results: list[Any] = []
    pending: list[Future[Any]] = []
    for make in calls:
        pending.append(make())
        if len(pending) >= window:
            results.extend(f.result() for f in pending)
            pending = []
    results.extend(f.result() for f in pending)
    return results


def issue_tokens(addr: str, md: Metadata, user_ids: Sequence[str], ttl: int = 7200) -> list[str]:
    """A client token for each user (IssueClientToken creates users that are new)."""
    with grpc.insecure_channel(addr) as channel:
        stub = channels_pb2_grpc.ChannelServiceStub(channel)
        responses = bounded(
            (
                lambda u=u: stub.IssueClientToken.future(
                    channels_pb2.IssueClientTokenRequest(user_id=u, ttl_seconds=ttl),
                    metadata=md,
                    timeout=60,
                )
                for u in user_ids
            ),
        )
    return [r.token for r in responses]


def create_channels(
    addr: str, md: Metadata, specs: Sequence[tuple[str, int, str, Sequence[str]]]
) -> list[str]:
    """Create channels from (name, type, created_by, member_ids); their ids in order."""
    with grpc.insecure_channel(addr) as channel:
        stub = channels_pb2_grpc.ChannelServiceStub(channel)
        responses = bounded(
            (
                lambda s=s: stub.CreateChannel.future(
                    channels_pb2.CreateChannelRequest(
                        name=s[0], type=s[1], created_by=s[2], member_ids=list(s[3])
                    ),
                    metadata=md,
                    timeout=60,
                )
                for s in specs
            ),
            window=50,
        )
    return [r.channel.id for r in responses]


def create_webhook(addr: str, md: Metadata, url: str, channel_id: str) -> str:
    """Register ``url`` for the channel's ``message:created`` events; returns its secret."""
    with grpc.insecure_channel(addr) as channel:
        response = events_pb2_grpc.EventServiceStub(channel).CreateWebhook(
            events_pb2.CreateWebhookRequest(
                url=url,
                events=["message:created"],
                channel_ids=[channel_id],
                description="keel bench receiver",
            ),
            metadata=md,
            timeout=30,
        )
    return str(response.secret)


async def pg_sessions(database: str) -> int | None:
    """How many sessions PostgreSQL has opened to ``database`` so far (pg_stat_database)."""
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        value = await admin.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1", database
        )
    except asyncpg.PostgresError:
        return None
    finally:
        await admin.close()
    return int(value) if value is not None else None


PUBLIC = channels_pb2.CHANNEL_TYPE_PUBLIC
GROUP = channels_pb2.CHANNEL_TYPE_GROUP


# -- the cluster ---------------------------------------------------------------------------


@dataclass
class Tenant:
    tenant_id: str
    metadata: Metadata


class KeelCluster:
    """tenant-service + gateway on a fresh PostgreSQL database and Redis; bridges on demand."""

    def __init__(
        self,
        log_dir: Path,
        *,
        log_level: str = "INFO",
        bridge_workers: int | None = None,
        gateway_workers: int | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.log_level = log_level
        self.bridge_workers = bridge_workers or bench_workers("KEEL_BENCH_BRIDGE_WORKERS")
        self.gateway_workers = gateway_workers or bench_workers("KEEL_BENCH_GATEWAY_WORKERS")
        self.db_name = f"keel_bench_{uuid.uuid4().hex[:8]}"
        self.admin_token = secrets.token_urlsafe(24)
        self.peer_token = secrets.token_urlsafe(24)
        self.token_secret = secrets.token_urlsafe(40)
        self.database_url = ""
        self.base_env: dict[str, str] = {}
        self.tenant_service: Process | None = None
        self.gateway: Process | None = None
        self.bridges: list[Process] = []
        self.tenant: Tenant | None = None

    async def start(self) -> None:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'CREATE DATABASE "{self.db_name}"')
        finally:
            await admin.close()
        self.database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + self.db_name
        self.base_env = clean_env(
            DATABASE_URL=self.database_url,
            REDIS_URL=REDIS_URL,
            KEEL_ADMIN_TOKEN=self.admin_token,
            KEEL_PEER_TOKEN=self.peer_token,
            KEEL_TOKEN_SECRET=self.token_secret,
            KEEL_DATA_DIR=str(self.log_dir / "var"),
            KEEL_SECRET_HASH_COST="10",
            KEEL_LOG_LEVEL=self.log_level,
            KEEL_METRICS_ADDR="off",
            KEEL_WEBHOOK_ALLOW_PRIVATE="1",
        )
        await asyncio.to_thread(self._start_core)

    def _start_core(self) -> None:
        migrated = subprocess.run(
            [*KEEL, "migrate"],
            env=self.base_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"keel migrate failed: {migrated.stderr[-2000:]}")
        tenant_addr = f"127.0.0.1:{free_port()}"
        self.tenant_service = launch(
            "tenant-service",
            [*KEEL, "serve", "tenant-service"],
            self.base_env | {"KEEL_GRPC_ADDR": tenant_addr},
            self.log_dir,
        )
        self.tenant_service.addr = tenant_addr
        gateway_addr = f"127.0.0.1:{free_port()}"
        self.gateway = launch(
            "gateway",
            [*KEEL, "serve", "gateway", *workers_args(self.gateway_workers)],
            self.base_env
            | {"KEEL_GRPC_ADDR": gateway_addr, "KEEL_TENANT_SERVICE_ADDR": tenant_addr},
            self.log_dir,
        )
        self.gateway.addr = gateway_addr
        wait_until(
            lambda: health_serving(tenant_addr),
            self.tenant_service,
            "tenant-service",
            START_TIMEOUT,
        )
        wait_until(lambda: health_serving(gateway_addr), self.gateway, "gateway", START_TIMEOUT)
        with grpc.insecure_channel(tenant_addr) as channel:
            created = tenants_pb2_grpc.TenantServiceStub(channel).CreateTenant(
                tenants_pb2.CreateTenantRequest(
                    tenant=tenants_pb2.Tenant(
                        name=f"bench-{uuid.uuid4().hex[:6]}",
                        # upload:* for the file scenario (keel serve file-service)
                        permissions=["chat:*", "upload:*"],
                    )
                ),
                metadata=(("authorization", f"Bearer {self.admin_token}"),),
                timeout=30,
            )
        self.tenant = Tenant(
            created.tenant.id,
            (
                ("x-client-id", created.tenant.client_id),
                ("x-client-secret", created.client_secret),
            ),
        )

    @property
    def gateway_addr(self) -> str:
        assert self.gateway is not None
        return self.gateway.addr

    async def start_bridges(self, count: int) -> list[Process]:
        return await asyncio.to_thread(self._start_bridges, count)

    def _start_bridges(self, count: int) -> list[Process]:
        assert self.tenant_service is not None and self.gateway is not None
        started = []
        for _ in range(count):
            ws_port, metrics_port = free_port(), free_ports_in_a_row(self.bridge_workers)
            bridge = launch(
                "bridge",
                [*KEEL, "serve", "bridge", *workers_args(self.bridge_workers)],
                self.base_env
                | BENCH_WS_ENV
                | {
                    "KEEL_GATEWAY_ADDR": self.gateway.addr,
                    "KEEL_TENANT_SERVICE_ADDR": self.tenant_service.addr,
                    "KEEL_WS_ADDR": f"127.0.0.1:{ws_port}",
                    "KEEL_GRPC_ADDR": f"127.0.0.1:{free_port()}",
                    "KEEL_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
                },
                self.log_dir,
            )
            bridge.ws_port, bridge.metrics_port = ws_port, metrics_port
            started.append(bridge)
            self.bridges.append(bridge)
        for bridge in started:
            wait_until(
                lambda b=bridge: http_status(f"http://127.0.0.1:{b.ws_port}/healthz") == 200,
                bridge,
                "bridge",
                START_TIMEOUT,
            )
            # The kernel gives new connections only to workers already listening.
            wait_until(
                partial(_all_listening, bridge, self.bridge_workers),
                bridge,
                "every bridge worker",
                START_TIMEOUT,
            )
        return started

    async def stop_bridges(self, bridges: Sequence[Process]) -> None:
        await asyncio.gather(*(asyncio.to_thread(b.stop) for b in bridges))
        for bridge in bridges:
            if bridge in self.bridges:
                self.bridges.remove(bridge)

    async def close(self) -> None:
        await self.stop_bridges(list(self.bridges))
        for process in (self.gateway, self.tenant_service):
            if process is not None:
                await asyncio.to_thread(process.stop)
        if self.database_url:
            admin = await asyncpg.connect(PG_ADMIN_URL)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            finally:
                await admin.close()


@dataclass
class Embedded:
    """``keel serve all`` on SQLite, with the demo tenant it created."""

    process: Process
    addr: str
    tenant: Tenant


async def start_embedded(log_dir: Path, *, log_level: str = "INFO") -> Embedded:
    return await asyncio.to_thread(_start_embedded, log_dir, log_level)


def _start_embedded(log_dir: Path, log_level: str) -> Embedded:
    data_dir = log_dir / f"sqlite-{uuid.uuid4().hex[:6]}"
    addr = f"127.0.0.1:{free_port()}"
    env = clean_env(
        KEEL_DATA_DIR=str(data_dir),
        KEEL_GRPC_ADDR=addr,
        KEEL_WS_ADDR=f"127.0.0.1:{free_port()}",
        KEEL_FILES_HTTP_ADDR=f"127.0.0.1:{free_port()}",
        KEEL_METRICS_ADDR="off",
        KEEL_SECRET_HASH_COST="10",
        KEEL_LOG_LEVEL=log_level,
    )
    process = launch("serve-all-sqlite", [*KEEL, "serve", "all"], env, log_dir)
    process.addr = addr
    demo = data_dir / "demo-tenant.json"
    wait_until(
        lambda: (
            demo.exists()
            and health_serving(addr)
            and "Keel is running" in process.stdout_path.read_text(errors="replace")
        ),
        process,
        "keel serve all",
        START_TIMEOUT,
    )
    creds = json.loads(demo.read_text())
    tenant = Tenant(
        creds["tenant_id"],
        (("x-client-id", creds["client_id"]), ("x-client-secret", creds["client_secret"])),
    )
    return Embedded(process, addr, tenant)


def start_baseline(mode: str, log_dir: Path, *, loop: str = "asyncio") -> Process:
    """The baseline server of :mod:`bench.baseline_server`, listening (port in ``ws_port``
    for ``ws``, ``addr`` for ``grpc``)."""
    root = Path(__file__).resolve().parent.parent
    env = clean_env(PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    process = launch(
        f"baseline-{mode}",
        [
            sys.executable,
            "-m",
            "bench.baseline_server",
            "--mode",
            mode,
            "--loop",
            loop,
            "--write-limit",
            BENCH_WS_ENV["KEEL_WS_SEND_BUFFER_BYTES"],
        ],
        env,
        log_dir,
    )
    port = 0

    def ready() -> bool:
        nonlocal port
        text = process.stdout_path.read_text(errors="replace")
        match = re.search(r"READY (\d+)", text)
        if match:
            port = int(match[1])
        return bool(match)

    wait_until(ready, process, f"baseline {mode} server", START_TIMEOUT)
    if mode == "ws":
        process.ws_port = port
    else:
        process.addr = f"127.0.0.1:{port}"
    return process
