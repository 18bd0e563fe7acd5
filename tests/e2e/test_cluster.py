"""A two-process cluster on PostgreSQL + Redis: ``keel serve tenant-service`` and ``gateway``."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from tests.conftest import ADMIN_TOKEN, free_port, unique
from tests.e2e.conftest import (
    KEEL,
    KeelProcess,
    PgCluster,
    bearer,
    client_metadata,
    fetch_metrics,
    grpcurl,
    health_status,
    metric_samples,
    status_code,
)

pytestmark = pytest.mark.e2e

TENANTS = "keel.tenants.v1.TenantService"
CHANNELS = "keel.channels.v1.ChannelService"
EVENTS = "keel.events.v1.EventService"


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
