"""A two-process cluster on PostgreSQL + Redis: ``keel serve tenant-service`` and ``gateway``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from service_kit.db import MIGRATIONS_DIR
from tests.conftest import ADMIN_TOKEN, PG_ADMIN_URL, free_port, unique
from tests.e2e.conftest import (
    KEEL,
    START_TIMEOUT,
    KeelProcess,
    PgCluster,
    bearer,
    client_metadata,
    cluster_env,
    fetch_metrics,
    fresh_addrs,
    grpcurl,
    health_status,
    keel_cli,
    launch_keel,
    metric_samples,
    start_keel,
    status_code,
)

pytestmark = pytest.mark.e2e

TENANTS = "keel.tenants.v1.TenantService"
CHANNELS = "keel.channels.v1.ChannelService"
EVENTS = "keel.events.v1.EventService"
MIGRATIONS = MIGRATIONS_DIR / "versions"
SERVING = health_pb2.HealthCheckResponse.SERVING


def as_operator(statement: str) -> None:
    """Run one statement as the operator on the test session's PostgreSQL server."""

    async def run() -> None:
        connection = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@dataclass
class Cluster:
    tenant_service: KeelProcess
    gateway: KeelProcess
    base_env: dict[str, str]


@pytest.fixture(scope="module")
def cluster(pg_cluster: Callable[..., PgCluster]) -> Cluster:
    """A tenant service on port A and a gateway on port B that validates against A."""
    processes = pg_cluster("cluster")
    return Cluster(processes.tenant_service, processes.start("gateway"), processes.base_env)


def create_tenant(addr: str) -> tenants_pb2.CreateTenantResponse:
    with grpc.insecure_channel(addr) as channel:
        return tenants_pb2_grpc.TenantServiceStub(channel).CreateTenant(  # type: ignore[no-any-return]
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("cluster"), permissions=["chat:read"])
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )


def get_channel(addr: str, client_id: str, secret: str) -> grpc.StatusCode:
    with grpc.insecure_channel(addr) as channel:
        stub = channels_pb2_grpc.ChannelServiceStub(channel)
        return status_code(
            lambda: stub.GetChannel(
                channels_pb2.GetChannelRequest(id=str(uuid.uuid4())),
                metadata=client_metadata(client_id, secret),
                timeout=10,
            )
        )


def validations_answered(keel: KeelProcess) -> float:
    """How many ValidateCredentials calls the tenant service answered OK (from /metrics)."""
    samples = metric_samples(fetch_metrics(keel.metrics_url), "keel_grpc_server_handled_total")
    return sum(
        value
        for labels, value in samples
        if labels.get("grpc_method") == "ValidateCredentials" and labels.get("grpc_code") == "OK"
    )


def test_tenant_from_the_tenant_service_authenticates_on_the_gateway(cluster: Cluster) -> None:
    created = create_tenant(cluster.tenant_service.addr)
    client_id = created.tenant.client_id

    assert get_channel(cluster.gateway.addr, client_id, created.client_secret) == (
        grpc.StatusCode.NOT_FOUND  # authenticated; the channel does not exist
    )
    assert get_channel(cluster.gateway.addr, client_id, "wrong-secret-1234") == (
        grpc.StatusCode.UNAUTHENTICATED
    )

    listed = grpcurl("-plaintext", cluster.gateway.addr, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {CHANNELS, EVENTS} <= services
    assert TENANTS not in services


def test_blank_secret_on_the_gateway_is_unauthenticated(cluster: Cluster) -> None:
    created = create_tenant(cluster.tenant_service.addr)
    assert get_channel(cluster.gateway.addr, created.tenant.client_id, "   ") == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_rotating_on_the_tenant_service_invalidates_the_gateway_cache(cluster: Cluster) -> None:
    created = create_tenant(cluster.tenant_service.addr)
    client_id, old_secret = created.tenant.client_id, created.client_secret
    validated_before = validations_answered(cluster.tenant_service)
    for _ in range(3):
        assert get_channel(cluster.gateway.addr, client_id, old_secret) == (
            grpc.StatusCode.NOT_FOUND
        )
    # The gateway asked the tenant service once, then answered from its cache.
    assert validations_answered(cluster.tenant_service) == validated_before + 1

    with grpc.insecure_channel(cluster.tenant_service.addr) as channel:
        rotated = tenants_pb2_grpc.TenantServiceStub(channel).RotateSecret(
            tenants_pb2.RotateSecretRequest(id=created.tenant.id),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )

    # The change travels over Redis pub/sub, so allow it a moment (far below the 5-minute TTL).
    deadline = time.monotonic() + 3.0
    while get_channel(cluster.gateway.addr, client_id, old_secret) != (
        grpc.StatusCode.UNAUTHENTICATED
    ):
        if time.monotonic() > deadline:
            pytest.fail("the gateway still accepts the old secret 3 s after the rotation")
        time.sleep(0.05)
    assert get_channel(cluster.gateway.addr, client_id, rotated.client_secret) == (
        grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({}, ["KEEL_TENANT_SERVICE_ADDR"]),
        (
            {"KEEL_TENANT_SERVICE_ADDR": "127.0.0.1:1", "KEEL_GRPC_ADDR": "nonsense"},
            ["KEEL_GRPC_ADDR"],
        ),
        (
            {
                "KEEL_TENANT_SERVICE_ADDR": "127.0.0.1:1",
                "KEEL_GRPC_ADDR": "nonsense",
                "KEEL_LOG_LEVEL": "chatty",
            },
            ["KEEL_GRPC_ADDR", "KEEL_LOG_LEVEL"],
        ),
    ],
    ids=["no-tenant-service-addr", "bad-grpc-addr", "two-bad-variables"],
)
def test_gateway_with_bad_configuration_exits_2_naming_the_variables(
    cluster: Cluster, tmp_path: Path, changes: dict[str, str], named: list[str]
) -> None:
    env = cluster.base_env | {
        "KEEL_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "KEEL_METRICS_ADDR": "off",
        **changes,
    }
    try:
        result = subprocess.run(
            [*KEEL, "serve", "gateway"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`keel serve gateway` started instead of refusing its configuration")

    assert result.returncode == 2, result.stdout + result.stderr
    for variable in named:
        assert variable in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_gateway_health_reports_its_services_serving(cluster: Cluster) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health_status(cluster.gateway.addr, CHANNELS) == serving
    assert health_status(cluster.gateway.addr, EVENTS) == serving
    assert health_status(cluster.gateway.addr) == serving
    with pytest.raises(grpc.RpcError) as unknown:
        health_status(cluster.gateway.addr, TENANTS)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


# -- `keel migrate` and the database a process waits for --------------------------------------


@pytest.fixture
def fresh_database_url(pg_url: str) -> Iterator[str]:
    """The URL of a PostgreSQL database that does not exist yet (dropped afterwards)."""
    name = f"keel_fresh_{uuid.uuid4().hex[:8]}"
    yield f"{pg_url.rsplit('/', 1)[0]}/{name}"
    as_operator(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_keel_migrate_creates_the_database_and_says_what_it_applied(
    fresh_database_url: str, tmp_path: Path
) -> None:
    env = cluster_env(fresh_database_url, tmp_path / "var") | fresh_addrs()
    migrations = sorted(p.stem.split("_", 1)[0] for p in MIGRATIONS.glob("[0-9]*.py"))

    first = keel_cli("migrate", env=env)

    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    name = fresh_database_url.rsplit("/", 1)[1]
    assert lines[0] == f'created the database "{name}"'
    assert [line.split()[1] for line in lines[1:-1]] == migrations
    assert all(line.startswith("applied ") for line in lines[1:-1])
    assert lines[-1].startswith("database schema is up to date")

    again = keel_cli("migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [lines[-1]]

    tenant_service = start_keel("tenant-service", env, tmp_path / "logs")
    try:
        assert health_status(tenant_service.addr) == SERVING
    finally:
        tenant_service.stop()


def test_a_process_whose_database_does_not_exist_says_so_and_starts_once_it_is_migrated(
    fresh_database_url: str, tmp_path: Path
) -> None:
    env = cluster_env(fresh_database_url, tmp_path / "var") | fresh_addrs()
    name = fresh_database_url.rsplit("/", 1)[1]
    waiting = launch_keel("tenant-service", env, tmp_path / "logs")
    try:
        output = waiting.wait_for_output(
            "waiting for the database", stream="stderr", timeout=START_TIMEOUT
        )
        line = next(
            record["message"]
            for record in waiting.log_records()
            if record["message"].startswith("waiting for the database")
        )
        assert f'database "{name}" does not exist' in line, output
        assert "keel migrate" in line, output

        assert keel_cli("migrate", env=env).returncode == 0

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if health_status(waiting.addr, timeout=1.0) == SERVING:
                    break
            except grpc.RpcError:
                pass
            if waiting.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"not SERVING after `keel migrate`: {waiting.describe()}")
            time.sleep(0.1)
    finally:
        waiting.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_process_stopped_while_it_waits_for_its_database_exits_0_without_a_traceback(
    fresh_database_url: str, tmp_path: Path, sig: signal.Signals
) -> None:
    env = cluster_env(fresh_database_url, tmp_path / "var") | fresh_addrs()
    waiting = launch_keel("tenant-service", env, tmp_path / "logs")
    try:
        waiting.wait_for_output("waiting for the database", stream="stderr", timeout=START_TIMEOUT)
        waiting.signal(sig)
        assert waiting.wait() == 0, waiting.describe()
        assert "Traceback" not in waiting.stderr(), waiting.describe()
        assert any(r["message"] == "stopped while starting" for r in waiting.log_records())
    finally:
        waiting.stop()


def test_keel_migrate_without_a_database_server_exits_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    env = cluster_env(f"postgresql://postgres@127.0.0.1:{port}/keel", tmp_path / "var")

    result = keel_cli("migrate", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("keel: cannot use the database at"), result.stderr
    assert f"connection refused at 127.0.0.1:{port}" in last
    waiting = [line for line in result.stderr.splitlines() if "waiting for the database" in line]
    assert waiting and all("connection refused" in line for line in waiting), result.stderr


def test_keel_migrate_that_may_not_create_the_database_says_what_to_run(
    fresh_database_url: str, tmp_path: Path
) -> None:
    role = f"keel_nocreate_{uuid.uuid4().hex[:6]}"
    name = fresh_database_url.rsplit("/", 1)[1]
    url = fresh_database_url.replace("://postgres@", f"://{role}@")
    as_operator(f'CREATE ROLE "{role}" LOGIN')
    try:
        result = keel_cli("migrate", env=cluster_env(url, tmp_path / "var"))
    finally:
        as_operator(f'DROP ROLE "{role}"')

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f'CREATE DATABASE "{name}" OWNER "{role}"' in result.stderr
