"""End-to-end fixtures: the real ``keel`` command as a subprocess, and clients for it.

:func:`start_keel` runs ``keel serve <process>`` with its output in files,
waits (bounded) until ``grpc.health.v1.Health/Check`` answers SERVING, and
:meth:`KeelProcess.stop` sends SIGTERM and waits (killing it after 15 s).
:class:`PgCluster` (made by the module-scoped ``pg_cluster`` factory) runs
several such processes on one PostgreSQL database and one Redis, a tenant
service first. The helpers call the processes the way users do: ``grpcurl``,
the ``keel`` command, and the generated Python stubs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from bench.ports import free_port
from tests.conftest import ADMIN_TOKEN, REDIS_URL

BIN = Path(sys.executable).parent
GRPCURL = str(BIN / "grpcurl")
KEEL = [str(BIN / "keel")] if (BIN / "keel").exists() else [sys.executable, "-m", "keel_app.cli"]

#: The longest a process may take to answer SERVING, and to exit after SIGTERM.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

Metadata = Sequence[tuple[str, str]]


@dataclass
class KeelProcess:
    """A running ``keel serve`` subprocess and where its output goes."""

    name: str
    addr: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    _files: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def data_dir(self) -> Path:
        return Path(self.env["KEEL_DATA_DIR"])

    @property
    def metrics_url(self) -> str:
        return f"http://{self.env['KEEL_METRICS_ADDR']}/metrics"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines the process wrote to stderr so far."""
        records = []
        for line in self.stderr().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def wait_for_output(self, text: str, *, stream: str = "stdout", timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the process's stdout (or stderr); return all of it."""
        read = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while True:
            output = read()
            if text in output:
                return output
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{text!r} never appeared on {stream} of {self.describe()}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the exit; kill the process (and fail) if it hangs longer than ``timeout``."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(
                f"{self.name} did not exit within {timeout}s after SIGTERM\n{self.describe()}"
            )

    def stop(self) -> int:
        """SIGTERM, wait (kill after 15 s), close the output files; returns the exit code."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            return self.process.returncode
        finally:
            self.close_files()

    def close_files(self) -> None:
        for handle in self._files:
            handle.close()
        self._files.clear()

    def describe(self) -> str:
        return (
            f"`keel serve {self.name}` (exit code {self.process.poll()})\n"
            f"--- stdout ---\n{self.stdout()[-3000:]}\n--- stderr ---\n{self.stderr()[-3000:]}"
        )


def health_status(
    addr: str,
    service: str = "",
    *,
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> int:
    """One Health/Check on a fresh channel (TLS with ``credentials``); raises
    ``grpc.RpcError`` when it fails."""
    channel = grpc.secure_channel(addr, credentials) if credentials else grpc.insecure_channel(addr)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return int(response.status)


def launch_keel(process_name: str, env: Mapping[str, str], log_dir: Path) -> KeelProcess:
    """Run ``keel serve process_name`` with its output in files under ``log_dir``; no waiting."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{process_name}-{time.monotonic_ns()}"
    stdout_path, stderr_path = log_dir / f"{stamp}.stdout", log_dir / f"{stamp}.stderr"
    out, err = stdout_path.open("wb"), stderr_path.open("wb")
    try:
        popen = subprocess.Popen(
            [*KEEL, "serve", process_name], env=dict(env), stdout=out, stderr=err
        )
    except BaseException:
        out.close()
        err.close()
        raise
    return KeelProcess(
        process_name, env["KEEL_GRPC_ADDR"], dict(env), popen, stdout_path, stderr_path, [out, err]
    )


def start_keel(
    process_name: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    wait_for_stdout: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> KeelProcess:
    """Run ``keel serve process_name`` and wait until it answers SERVING (bounded); over
    TLS with ``credentials`` (a process with ``KEEL_TLS_CERT``)."""
    keel = launch_keel(process_name, env, log_dir)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if keel.process.poll() is not None:
                pytest.fail(f"the process exited while starting: {keel.describe()}")
            try:
                status = health_status(keel.addr, timeout=1.0, credentials=credentials)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no SERVING within {START_TIMEOUT}s: {keel.describe()}")
            time.sleep(0.1)
        if wait_for_stdout is not None:
            keel.wait_for_output(wait_for_stdout)
    except BaseException:
        keel.stop()
        raise
    return keel


@pytest.fixture
def keel_server(tmp_path: Path) -> Iterator[Callable[..., KeelProcess]]:
    """A factory: ``keel_server("all", env)`` starts a process, stopped at teardown."""
    started: list[KeelProcess] = []

    def start(
        process_name: str, env: Mapping[str, str], *, wait_for_stdout: str | None = None
    ) -> KeelProcess:
        keel = start_keel(process_name, env, tmp_path / "logs", wait_for_stdout=wait_for_stdout)
        started.append(keel)
        return keel

    yield start
    for keel in started:
        keel.stop()


def embedded_env(keel_env: Mapping[str, str], **changes: str) -> dict[str, str]:
    """``keel_env`` for ``keel serve all``: no operator token, no Redis, plus ``changes``."""
    env = {k: v for k, v in keel_env.items() if k not in ("KEEL_ADMIN_TOKEN", "REDIS_URL")}
    env.update(changes)
    return env


@pytest.fixture
def serve_all(keel_env: dict[str, str], keel_server: Callable[..., KeelProcess]) -> KeelProcess:
    """``keel serve all`` on a fresh SQLite data dir, started and past its banner."""
    return keel_server("all", embedded_env(keel_env), wait_for_stdout="Keel is running")


# --- a cluster on PostgreSQL and Redis ----------------------------------------------------

#: The secret every process of a cluster signs and checks client tokens with.
CLUSTER_TOKEN_SECRET = "test-client-token-secret-0123456789abcdef"


def cluster_env(database_url: str, data_dir: Path, **changes: str) -> dict[str, str]:
    """The environment every process of a cluster shares.

    The test run's environment minus Keel's variables, plus the database, Redis, the
    operator token, the token secret and the data dir, then ``changes``; no addresses
    (each process gets its own).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("KEEL_") or k in ("DATABASE_URL", "REDIS_URL"))
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=REDIS_URL,
        KEEL_ADMIN_TOKEN=ADMIN_TOKEN,
        KEEL_TOKEN_SECRET=CLUSTER_TOKEN_SECRET,
        KEEL_DATA_DIR=str(data_dir),
        KEEL_SECRET_HASH_COST="10",
        PYTHONUNBUFFERED="1",
    )
    env.update(changes)
    return env


def fresh_addrs() -> dict[str, str]:
    """``KEEL_GRPC_ADDR``, ``KEEL_METRICS_ADDR`` and ``KEEL_FILES_HTTP_ADDR`` on free ports
    of 127.0.0.1."""
    return {
        "KEEL_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "KEEL_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "KEEL_FILES_HTTP_ADDR": f"127.0.0.1:{free_port()}",
    }


@dataclass
class PgCluster:
    """A tenant service, and the processes started after it, on one database and one Redis.

    Every process gets ``base_env`` (shared settings, no addresses); all but the tenant
    service are also pointed at it. Output goes to files under ``logs``.
    """

    base_env: dict[str, str]
    logs: Path
    tenant_service: KeelProcess
    started: list[KeelProcess] = field(default_factory=list)

    def env_for(self, **changes: str) -> dict[str, str]:
        """``base_env``, fresh gRPC and metrics ports, the tenant service's address, ``changes``."""
        return (
            self.base_env
            | fresh_addrs()
            | {"KEEL_TENANT_SERVICE_ADDR": self.tenant_service.addr}
            | changes
        )

    def start(self, process_name: str, **changes: str) -> KeelProcess:
        """``keel serve process_name`` with ``env_for(**changes)``, once it answers SERVING."""
        keel = start_keel(process_name, self.env_for(**changes), self.logs)
        self.started.append(keel)
        return keel

    def launch(self, process_name: str, **changes: str) -> KeelProcess:
        """Like :meth:`start`, without waiting (for a process with no gRPC health)."""
        keel = launch_keel(process_name, self.env_for(**changes), self.logs)
        self.started.append(keel)
        return keel

    def stop_all(self) -> None:
        """Stop every process, the last started first and the tenant service last."""
        for keel in [*reversed(self.started), self.tenant_service]:
            keel.stop()
        self.started.clear()


@pytest.fixture(scope="module")
def pg_cluster(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., PgCluster]]:
    """A factory of clusters, each stopped (with all it started) at the end of the module.

    ``pg_cluster("name", **changes)`` migrates the session's PostgreSQL database, starts a
    tenant service with ``changes`` added to the shared environment, and returns the
    :class:`PgCluster`.
    """
    clusters: list[PgCluster] = []

    def start_cluster(name: str, **changes: str) -> PgCluster:
        root = tmp_path_factory.mktemp(name)
        base = cluster_env(pg_url, root / "var", **changes)
        migrated = keel_cli("migrate", env=base)
        assert migrated.returncode == 0, migrated.stderr
        tenant_service = start_keel("tenant-service", base | fresh_addrs(), root / "logs")
        clusters.append(PgCluster(base, root / "logs", tenant_service))
        return clusters[-1]

    yield start_cluster
    for cluster in reversed(clusters):
        cluster.stop_all()


# --- calling it ---------------------------------------------------------------------------


def grpcurl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run grpcurl with ``args``; exit code 0 is OK, 64 + n is gRPC status n."""
    return subprocess.run(
        [GRPCURL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def grpcurl_call(
    addr: str, method: str, body: object = None, *, headers: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext [-H ...] -d BODY ADDR METHOD`` with errors printed as JSON."""
    args = ["-plaintext", "-format-error"]
    for key, value in (headers or {}).items():
        args += ["-H", f"{key}: {value}"]
    args += ["-d", json.dumps(body if body is not None else {}), addr, method]
    return grpcurl(*args)


def grpcurl_code(result: subprocess.CompletedProcess[str]) -> grpc.StatusCode:
    """The gRPC status grpcurl got (from its exit code)."""
    if result.returncode == 0:
        return grpc.StatusCode.OK
    assert result.returncode >= 64, f"grpcurl failed: {result.stdout}{result.stderr}"
    number = result.returncode - 64
    return next(c for c in grpc.StatusCode if c.value[0] == number)


def grpcurl_error(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The status grpcurl printed for a failed RPC (``-format-error`` prints it as JSON)."""
    assert result.returncode >= 64, f"expected an RPC error: {result.stdout}{result.stderr}"
    status: dict[str, Any] = json.loads(result.stderr)
    return status


def keel_cli(
    *args: str, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the ``keel`` command (not ``serve``) and capture its output."""
    return subprocess.run(
        [*KEEL, *args], env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def client_metadata(client_id: str, client_secret: str) -> Metadata:
    return (("x-client-id", client_id), ("x-client-secret", client_secret))


def call_error(call: Callable[[], object]) -> grpc.RpcError:
    """Run an RPC that must fail; return its error."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def status_code(call: Callable[[], object]) -> grpc.StatusCode:
    """The status of an RPC: OK, or the error's code."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def error_details(error: grpc.RpcError) -> list[Message]:
    """The ``google.rpc`` details (BadRequest, RetryInfo) a failed RPC carried."""
    status = rpc_status.from_call(error)
    found: list[Message] = []
    for detail in status.details if status else ():
        for kind in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            message = kind()
            if detail.Unpack(message):
                found.append(message)
    return found


def fetch_metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)"
)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in a Prometheus text page, as (labels, value)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples.append((labels, float(match["value"])))
    return samples
