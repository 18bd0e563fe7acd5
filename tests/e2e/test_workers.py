"""``keel serve gateway|bridge --workers 2``: two processes on one port, drained together.

Each test runs the real command on PostgreSQL and Redis beside a tenant service (and, for
the bridge, a gateway). Which worker served a call or holds a connection is read from
each worker's own ``/metrics`` (worker ``i`` on the port of ``KEEL_METRICS_ADDR`` + ``i``);
the workers' pids from the supervisor's ``worker started`` log lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from keel.channels.v1 import channels_pb2 as pb
from keel.channels.v1 import channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from websockets.asyncio.client import ClientConnection, connect

from bench.ports import free_port
from tests.conftest import ADMIN_TOKEN, unique
from tests.e2e.conftest import (
    KEEL,
    START_TIMEOUT,
    KeelProcess,
    PgCluster,
    bearer,
    client_metadata,
    fetch_metrics,
    keel_cli,
    metric_samples,
)

pytestmark = pytest.mark.e2e

PEER_TOKEN = "test-peer-token-0123456789abcdef"
#: New connections opened to the shared port; with two workers the chance that the
#: kernel gives them all to one is 2 ** -(CONNECTIONS - 1).
CONNECTIONS = 24
REPLY_WAIT = 10.0
CHANNEL_SERVICE = "keel.channels.v1.ChannelService"


# --- helpers ---------------------------------------------------------------------------------


def free_port_pair() -> int:
    """A free port whose successor is free too (the second worker's metrics port)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free ports in a row")


def launch_workers(cluster: PgCluster, process: str, workers: int, **changes: str) -> KeelProcess:
    """Run ``keel serve process --workers workers`` in ``cluster`` (stopped with it)."""
    env = cluster.env_for(**changes)
    stamp = f"{process}-workers-{time.monotonic_ns()}"
    stdout_path, stderr_path = cluster.logs / f"{stamp}.stdout", cluster.logs / f"{stamp}.stderr"
    out, err = stdout_path.open("wb"), stderr_path.open("wb")
    popen = subprocess.Popen(
        [*KEEL, "serve", process, "--workers", str(workers)], env=env, stdout=out, stderr=err
    )
    keel = KeelProcess(
        process, env["KEEL_GRPC_ADDR"], env, popen, stdout_path, stderr_path, [out, err]
    )
    cluster.started.append(keel)
    return keel


def metrics_urls(keel: KeelProcess, workers: int) -> list[str]:
    host, port = keel.env["KEEL_METRICS_ADDR"].rsplit(":", 1)
    return [f"http://{host}:{int(port) + i}/metrics" for i in range(workers)]


def scrape(url: str) -> str | None:
    try:
        return fetch_metrics(url)
    except OSError:
        return None


def wait_for(check: Callable[[], bool], keel: KeelProcess, what: str) -> None:
    """Poll ``check`` until it holds; fail (bounded) or when the supervisor exits."""
    deadline = time.monotonic() + START_TIMEOUT
    while not check():
        if keel.process.poll() is not None:
            pytest.fail(f"the supervisor exited before {what}: {keel.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not within {START_TIMEOUT}s: {what}\n{keel.describe()}")
        time.sleep(0.1)


def logged_workers(keel: KeelProcess, message: str) -> dict[int, int]:
    """Worker index → pid of the supervisor's lines ``message`` (the last one for each)."""
    return {
        record["worker"]: record["pid"]
        for record in keel.log_records()
        if record.get("message") == message and "pid" in record
    }


def lines_of_workers(keel: KeelProcess, message: str) -> set[int]:
    """The worker indexes that wrote a log line ``message`` themselves."""
    return {
        record["worker"]
        for record in keel.log_records()
        if record.get("message") == message and "worker" in record and "pid" not in record
    }


def metric_total(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in metric_samples(text, name)
        if all(found.get(k) == v for k, v in labels.items())
    )


def create_tenant(cluster: PgCluster) -> tuple[tuple[str, str], ...]:
    """A tenant with chat:*; returns its client metadata."""
    with grpc.insecure_channel(cluster.tenant_service.addr) as admin:
        created = tenants_pb2_grpc.TenantServiceStub(admin).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("workers"), permissions=["chat:*"])
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
    return tuple(client_metadata(created.tenant.client_id, created.client_secret))


def issue_token(addr: str, md: tuple[tuple[str, str], ...], user: str) -> str:
    # A channel of its own: a new TCP connection, which the kernel gives to either worker.
    with grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        response = channels_pb2_grpc.ChannelServiceStub(channel).IssueClientToken(
            pb.IssueClientTokenRequest(user_id=user, ttl_seconds=600), metadata=md, timeout=30
        )
    return str(response.token)


@pytest.fixture(scope="module")
def cluster(pg_cluster: Callable[..., PgCluster]) -> PgCluster:
    return pg_cluster("workers", KEEL_PEER_TOKEN=PEER_TOKEN)


# --- gateway -------------------------------------------------------------------------------


def test_two_gateway_workers_answer_on_one_port_and_both_drain_on_sigterm(
    cluster: PgCluster,
) -> None:
    metrics_port = free_port_pair()
    keel = launch_workers(cluster, "gateway", 2, KEEL_METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    urls = metrics_urls(keel, 2)

    def both_serving() -> bool:
        pages = [scrape(url) for url in urls]
        return all(
            page is not None
            and metric_total(page, "keel_service_serving", service=CHANNEL_SERVICE) == 1
            for page in pages
        )

    wait_for(both_serving, keel, "both workers report SERVING on their /metrics")
    md = create_tenant(cluster)
    for number in range(CONNECTIONS):
        assert issue_token(keel.addr, md, f"user-{number}")

    served = [
        metric_total(
            fetch_metrics(url), "keel_grpc_server_handled_total", grpc_method="IssueClientToken"
        )
        for url in urls
    ]
    assert sum(served) == CONNECTIONS
    assert all(count > 0 for count in served), served
    pids = logged_workers(keel, "worker started")
    assert sorted(pids) == [0, 1] and len(set(pids.values())) == 2
    assert lines_of_workers(keel, "serving") == {0, 1}

    keel.signal()
    assert keel.wait() == 0, keel.describe()
    assert sorted(logged_workers(keel, "worker stopped")) == [0, 1]
    assert lines_of_workers(keel, "shutting down") == {0, 1}
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_gateway_worker_that_dies_is_restarted(cluster: PgCluster) -> None:
    keel = launch_workers(cluster, "gateway", 2, KEEL_METRICS_ADDR="off")
    wait_for(lambda: lines_of_workers(keel, "serving") == {0, 1}, keel, "both workers serve")
    first = logged_workers(keel, "worker started")
    os.kill(first[1], 9)

    def restarted() -> bool:
        again = logged_workers(keel, "worker started")
        serving = [
            r for r in keel.log_records() if r.get("message") == "serving" and r.get("worker") == 1
        ]
        return again.get(1) not in (None, first[1]) and len(serving) == 2

    wait_for(restarted, keel, "worker 1 is started again and serves")
    died = [
        r
        for r in keel.log_records()
        if r.get("message") == "a worker exited unexpectedly; restarting it"
    ]
    assert [(r["worker"], r["pid"], r["exit_code"]) for r in died] == [(1, first[1], -9)]
    keel.signal()
    assert keel.wait() == 0, keel.describe()


# --- bridge --------------------------------------------------------------------------------


async def open_clients(url: str, tokens: list[str]) -> list[ClientConnection]:
    async def open_one(token: str) -> ClientConnection:
        ws = await connect(
            f"{url}?token={token}",
            subprotocols=["keel.v1"],  # type: ignore[list-item]
            open_timeout=REPLY_WAIT,
        )
        async with asyncio.timeout(REPLY_WAIT):
            welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        return ws

    return list(await asyncio.gather(*(open_one(token) for token in tokens)))


async def close_codes(clients: list[ClientConnection]) -> list[int | None]:
    async with asyncio.timeout(REPLY_WAIT):
        await asyncio.gather(*(ws.wait_closed() for ws in clients))
    return [ws.close_code for ws in clients]


def test_two_bridge_workers_share_connections_and_close_them_with_1012_on_sigterm(
    cluster: PgCluster,
) -> None:
    gateway = cluster.start("gateway")
    ws_port, metrics_port = free_port(), free_port_pair()
    keel = launch_workers(
        cluster,
        "bridge",
        2,
        KEEL_GATEWAY_ADDR=gateway.addr,
        KEEL_WS_ADDR=f"127.0.0.1:{ws_port}",
        KEEL_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
    )
    wait_for(
        lambda: lines_of_workers(keel, "bridge listening") == {0, 1},
        keel,
        "both bridge workers listen",
    )
    md = create_tenant(cluster)
    tokens = [issue_token(gateway.addr, md, f"user-{n}") for n in range(CONNECTIONS)]

    async def scenario() -> list[int | None]:
        clients = await open_clients(f"ws://127.0.0.1:{ws_port}/ws", tokens)
        held = [
            metric_total(fetch_metrics(url), "keel_bridge_connections")
            for url in metrics_urls(keel, 2)
        ]
        assert sum(held) == CONNECTIONS
        assert all(count > 0 for count in held), held
        keel.signal()
        return await close_codes(clients)

    assert asyncio.run(scenario()) == [1012] * CONNECTIONS
    assert keel.wait() == 0, keel.describe()
    assert sorted(logged_workers(keel, "worker stopped")) == [0, 1]


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("gateway", "--workers", "0"), "--workers: must be at least 1 (got 0)"),
        (("bridge", "--workers", "-1"), "--workers: must be at least 1 (got -1)"),
        (("all", "--workers", "2"), "only `keel serve gateway` and `keel serve bridge`"),
        (("tenant-service", "--workers", "2"), "only `keel serve gateway`"),
        (("gateway", "--workers", "2"), "`keel serve gateway --workers` needs PostgreSQL"),
    ],
)
def test_workers_that_cannot_run_are_refused_with_exit_2(
    keel_env: dict[str, str], tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    done = keel_cli("serve", *args, env=keel_env, timeout=30)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr
