"""deploy/compose.yaml's topology, run as processes: containers cannot run here.

Every Keel service of the compose file is started as ``keel serve <process>`` (gateway and
bridge twice, as their ``replicas``) with the environment compose gives it, the image's
``ENV`` included, rewritten for one machine: each listening address on a free port of
127.0.0.1, each service name on the address of that process, PostgreSQL and Redis of this
machine, moto instead of MinIO, no SMTP server; each bridge streams from its own gateway,
as Docker's DNS would pick one. A variable the rewriting does not know fails the test, so
the compose file cannot drift from what is run here. Then: every process is healthy by the
image's own health check, a message sent through gateway 1 reaches a browser on the bridge
of gateway 2, and a file stored by the file service downloads from the attachment URL a
gateway signed.

Where HAProxy is installed, deploy/haproxy.cfg itself runs in front of them (its replicas
listed instead of found through Docker's DNS, its ports free local ones): a browser
connected through it gets messages, and it serves files and routes gRPC by service.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import grpc
import pytest
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.files.v1 import files_pb2, files_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from websockets.asyncio.client import connect

from bench.ports import free_port
from tests.conftest import ADMIN_TOKEN, REDIS_URL, unique
from tests.deploy.compose_file import (
    HAPROXY_CONFIG,
    ROOT,
    image_environment,
    keel_services,
    load_compose,
    service_environment,
)
from tests.e2e.conftest import (
    CLUSTER_TOKEN_SECRET,
    KeelProcess,
    bearer,
    client_metadata,
    keel_cli,
    launch_keel,
    start_keel,
)
from tests.file_service.conftest import moto_endpoint  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e

HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
#: deploy/.env for this run (and KEEL_S3_BUCKET, a fresh bucket).
DOTENV = {
    "POSTGRES_PASSWORD": "unused-here",
    "KEEL_ADMIN_TOKEN": ADMIN_TOKEN,
    "KEEL_PEER_TOKEN": "test-peer-token-0123456789abcdef",
    "KEEL_TOKEN_SECRET": CLUSTER_TOKEN_SECRET,
    "MINIO_ROOT_USER": "testing",
    "MINIO_ROOT_PASSWORD": "testing",
}
#: Variables of the compose file that have nothing to point at here, and why.
DROPPED = {"KEEL_SMTP_URL": "no SMTP server on this machine"}
#: The listening addresses the image sets (Dockerfile ENV), each given a free local port.
LISTENING = ("KEEL_GRPC_ADDR", "KEEL_WS_ADDR", "KEEL_FILES_HTTP_ADDR", "KEEL_METRICS_ADDR")
#: The order compose starts them in (depends_on), with how many of each run.
ORDER = ("tenant-service", "gateway", "notification-service", "file-service", "bridge")
#: Bounds of the waits below (none is asserted on).
START_WAIT = 30.0
REPLY_WAIT = 15.0


@dataclass
class Replica:
    """One process to run: its service, its index among the replicas, its addresses."""

    service: str
    index: int
    addresses: dict[str, str]

    def url(self, variable: str) -> str:
        return f"http://{self.addresses[variable]}"


@dataclass
class Topology:
    replicas: dict[str, list[Replica]]
    processes: dict[tuple[str, int], KeelProcess]
    pg_url: str
    moto: str
    dotenv: dict[str, str]

    def local(self, replica: Replica, compose_env: Mapping[str, str]) -> dict[str, str]:
        """``compose_env`` (interpolated) rewritten for processes on this machine."""
        services = set(self.replicas)
        files = self.replicas["file-service"][0]
        bridge = self.replicas["bridge"][0]
        lb = {  # what the load balancer would route there
            "KEEL_PUBLIC_URL": bridge.url("KEEL_WS_ADDR"),
            "KEEL_FILES_PUBLIC_URL": files.url("KEEL_FILES_HTTP_ADDR"),
        }
        local: dict[str, str] = {}
        for name, value in compose_env.items():
            host = urlsplit(value).hostname if "://" in value else None
            if name in DROPPED:
                continue
            if name == "DATABASE_URL":
                assert host == "postgres", value
                local[name] = self.pg_url
            elif name == "REDIS_URL":
                assert host == "redis", value
                local[name] = REDIS_URL
            elif name == "KEEL_S3_ENDPOINT_URL":
                assert host == "minio", value
                local[name] = self.moto
            elif name in lb:
                assert value == "http://localhost:8080", value  # the load balancer
                local[name] = lb[name]
            elif value.split(":")[0] in services:
                target, port = value.split(":")
                peers = self.replicas[target]  # bridge i streams from gateway i
                peer = peers[replica.index % len(peers)]
                assert port == image_environment()["KEEL_GRPC_ADDR"].rsplit(":", 1)[1], value
                local[name] = peer.addresses["KEEL_GRPC_ADDR"]
            else:
                assert host is None, f"{name}={value}: nothing here stands for {host}"
                local[name] = value
        return local

    def environment(self, replica: Replica, data_dir: Path) -> dict[str, str]:
        """What the container of ``replica`` would have: the image's ENV, compose's."""
        service = load_compose()["services"][replica.service]
        outside = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KEEL_", "AWS_")) and k not in ("DATABASE_URL", "REDIS_URL")
        }
        image = image_environment() | {"KEEL_DATA_DIR": str(data_dir)} | replica.addresses
        del image["PATH"]
        return outside | image | self.local(replica, service_environment(service, self.dotenv))

    def process(self, service: str, index: int = 0) -> KeelProcess:
        return self.processes[(service, index)]


def healthcheck(keel: KeelProcess) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK, run with the process's environment as Docker would."""
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env=keel.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_until_healthy(keel: KeelProcess) -> None:
    deadline = time.monotonic() + START_WAIT
    while healthcheck(keel).returncode != 0:
        if keel.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"not healthy within {START_WAIT}s: {keel.describe()}")


@pytest.fixture(scope="module")
def topology(
    pg_url: str,
    moto_endpoint: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Topology]:
    compose = load_compose()
    services = keel_services(compose)
    bucket = f"keel-{uuid.uuid4().hex}"
    s3 = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=bucket)  # what the minio-bucket one-shot does
    replicas = {
        name: [
            Replica(name, i, {v: f"127.0.0.1:{free_port()}" for v in LISTENING})
            for i in range(services[name].get("deploy", {}).get("replicas", 1))
        ]
        for name in ORDER
    }
    topology = Topology(replicas, {}, pg_url, moto_endpoint, DOTENV | {"KEEL_S3_BUCKET": bucket})
    root = tmp_path_factory.mktemp("compose")
    migrate = Replica("migrate", 0, {v: f"127.0.0.1:{free_port()}" for v in LISTENING})
    migrated = keel_cli("migrate", env=topology.environment(migrate, root / "migrate"))
    assert migrated.returncode == 0, migrated.stderr
    try:
        for name in ORDER:
            for replica in replicas[name]:
                env = topology.environment(replica, root / f"{name}-{replica.index}")
                if name == "bridge":  # no gRPC server: its /healthz says when it is up
                    keel = launch_keel(name, env, root / "logs")
                else:
                    keel = start_keel(name, env, root / "logs")
                topology.processes[(name, replica.index)] = keel
        for keel in topology.processes.values():
            wait_until_healthy(keel)
        yield topology
    finally:
        for keel in reversed(topology.processes.values()):
            keel.stop()


def test_every_compose_service_runs_with_its_replicas(topology: Topology) -> None:
    started = sorted({service for service, _ in topology.processes})
    assert started == sorted(set(keel_services(load_compose())) - {"migrate"})
    assert len(topology.replicas["gateway"]) == len(topology.replicas["bridge"]) == 2


def test_every_process_is_healthy_by_the_image_health_check(topology: Topology) -> None:
    for (service, index), keel in topology.processes.items():
        result = healthcheck(keel)
        assert result.returncode == 0, f"{service} #{index}: {result.stderr}"


@dataclass
class Tenant:
    id: str
    md: tuple[tuple[str, str], ...]
    channel_id: str
    token: str


@pytest.fixture(scope="module")
def tenant(topology: Topology) -> Tenant:
    """A tenant allowed to chat and upload, and a channel of one user, made through G1."""
    with grpc.insecure_channel(topology.process("tenant-service").addr) as channel:
        created = tenants_pb2_grpc.TenantServiceStub(channel).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(
                    name=unique("compose"), permissions=["chat:*", "upload:*"]
                )
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
    md = tuple(client_metadata(created.tenant.client_id, created.client_secret))
    with grpc.insecure_channel(topology.process("gateway", 0).addr) as channel:
        stub = channels_pb2_grpc.ChannelServiceStub(channel)
        room = stub.CreateChannel(
            channels_pb2.CreateChannelRequest(name=unique("room"), created_by="ada"),
            metadata=md,
            timeout=30,
        ).channel
        token = stub.IssueClientToken(
            channels_pb2.IssueClientTokenRequest(user_id="ada", ttl_seconds=600),
            metadata=md,
            timeout=30,
        ).token
    return Tenant(created.tenant.id, md, room.id, token)


def send_through(
    topology: Topology, gateway: int, tenant: Tenant, content: str, *attachment_ids: str
) -> channels_pb2.Message:
    with grpc.insecure_channel(topology.process("gateway", gateway).addr) as channel:
        sent: channels_pb2.Message = (
            channels_pb2_grpc.ChannelServiceStub(channel)
            .SendMessage(
                channels_pb2.SendMessageRequest(
                    channel_id=tenant.channel_id,
                    user_id="ada",
                    content=content,
                    attachment_ids=list(attachment_ids),
                ),
                metadata=tenant.md,
                timeout=30,
            )
            .message
        )
    return sent


def get_through(
    topology: Topology, gateway: int, tenant: Tenant, message_id: str
) -> channels_pb2.Message:
    with grpc.insecure_channel(topology.process("gateway", gateway).addr) as channel:
        found: channels_pb2.Message = (
            channels_pb2_grpc.ChannelServiceStub(channel)
            .GetMessage(
                channels_pb2.GetMessageRequest(channel_id=tenant.channel_id, message_id=message_id),
                metadata=tenant.md,
                timeout=30,
            )
            .message
        )
    return found


async def seen_on(
    ws_url: str, topology: Topology, tenant: Tenant, content: str
) -> tuple[dict[str, Any], channels_pb2.Message]:
    """Subscribe a WebSocket client at ``ws_url`` to the room, send ``content`` through
    gateway 1; the ``message:created`` frame the client got, and the message sent."""
    url = f"{ws_url}?token={tenant.token}"
    async with connect(url, subprotocols=["keel.v1"], open_timeout=REPLY_WAIT) as ws:  # type: ignore[list-item]
        async with asyncio.timeout(REPLY_WAIT):
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(
                json.dumps({"type": "subscribe", "id": "s1", "channel_id": tenant.channel_id})
            )
            while json.loads(await ws.recv()).get("id") != "s1":
                pass
        sent = await asyncio.to_thread(send_through, topology, 0, tenant, content)
        async with asyncio.timeout(REPLY_WAIT):
            while True:
                frame: dict[str, Any] = json.loads(await ws.recv())
                if frame["type"] == "event" and frame["event"] == "message:created":
                    return frame, sent


async def test_a_message_sent_through_gateway_1_reaches_a_browser_on_the_bridge_of_gateway_2(
    topology: Topology, tenant: Tenant
) -> None:
    ws_url = f"ws://{topology.process('bridge', 1).env['KEEL_WS_ADDR']}/ws"
    frame, sent = await seen_on(ws_url, topology, tenant, "hello from G1")
    assert frame["data"]["message"]["id"] == sent.id
    assert frame["data"]["message"]["content"] == "hello from G1"
    assert get_through(topology, 1, tenant, sent.id).content == "hello from G1"


def store_file(topology: Topology, tenant: Tenant, data: bytes) -> files_pb2.File:
    requests = [
        files_pb2.UploadFileRequest(
            metadata=files_pb2.UploadFileMetadata(filename="blob.bin", user_id="ada")
        ),
        files_pb2.UploadFileRequest(chunk=data),
    ]
    with grpc.insecure_channel(topology.process("file-service").addr) as channel:
        stored: files_pb2.File = (
            files_pb2_grpc.FileServiceStub(channel)
            .UploadFile(iter(requests), metadata=tenant.md, timeout=30)
            .file
        )
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    return stored


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
    return body


def test_a_stored_file_downloads_from_the_attachment_url_a_gateway_signed(
    topology: Topology, tenant: Tenant
) -> None:
    data = os.urandom(300_000)
    stored = store_file(topology, tenant, data)
    sent = send_through(topology, 0, tenant, "a file", stored.id)
    (attachment,) = get_through(topology, 1, tenant, sent.id).attachments
    files_url = topology.replicas["file-service"][0].url("KEEL_FILES_HTTP_ADDR")
    assert attachment.url.startswith(files_url + "/files/")  # KEEL_FILES_PUBLIC_URL
    assert download(attachment.url) == data


# --- the load balancer, where HAProxy is installed -----------------------------------------

#: Where deploy/haproxy.cfg's backends listen, by port: the image's listening variables.
BACKEND_PORTS = {"8080": "KEEL_WS_ADDR", "8090": "KEEL_FILES_HTTP_ADDR", "50051": "KEEL_GRPC_ADDR"}


@dataclass
class LoadBalancer:
    http: str
    grpc: str


def local_haproxy_config(topology: Topology, binds: Mapping[str, str]) -> str:
    """deploy/haproxy.cfg for this machine: Docker's DNS gone, each ``server-template`` one
    ``server`` per running replica, each ``bind`` on a free port, and a global ``maxconn``
    that fits this sandbox's file descriptor limit; the rest as it is."""
    lines: list[str] = []
    in_resolvers = False
    for line in HAPROXY_CONFIG.read_text().splitlines():
        words = line.split()
        if line.startswith("resolvers "):
            in_resolvers = True
            continue
        if in_resolvers and line and not line[0].isspace():
            in_resolvers = False
        if in_resolvers:
            continue
        if words[:1] == ["maxconn"]:
            line = "    maxconn 1000"
        elif words[:1] == ["default-server"]:
            line = line.replace(" init-addr none", "").replace(" resolvers docker", "")
        elif words[:1] == ["bind"]:
            line = line.replace(words[1], binds[words[1]])
        elif words[:1] == ["server-template"]:
            service, port = words[3].split(":")
            for replica in topology.replicas[service]:
                address = replica.addresses[BACKEND_PORTS[port]]
                lines.append(
                    f"    server {words[1]}{replica.index} {address} {' '.join(words[4:])}"
                )
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def load_balancer(
    topology: Topology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoadBalancer]:
    """HAProxy with deploy/haproxy.cfg in front of the topology, once it routes to a bridge."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("HAProxy is not installed here")
    binds = {":8080": f"127.0.0.1:{free_port()}", ":50051": f"127.0.0.1:{free_port()}"}
    binds[":8404"] = f"127.0.0.1:{free_port()}"
    root = tmp_path_factory.mktemp("haproxy")
    config = root / "haproxy.cfg"
    config.write_text(local_haproxy_config(topology, binds))
    with (root / "haproxy.log").open("wb") as log:
        process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=log)
    try:
        lb = LoadBalancer(binds[":8080"], binds[":50051"])
        deadline = time.monotonic() + START_WAIT
        while not lb_routes_to_a_bridge(lb):  # until a /healthz check has passed
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"HAProxy never routed /healthz: {(root / 'haproxy.log').read_text()}")
            time.sleep(0.1)
        yield lb
    finally:
        process.terminate()
        process.wait(timeout=10)


def lb_routes_to_a_bridge(lb: LoadBalancer) -> bool:
    try:
        download(f"http://{lb.http}/healthz")
    except OSError:  # 503 while no bridge has passed its check yet
        return False
    return True


async def test_a_browser_behind_the_load_balancer_gets_messages(
    topology: Topology, tenant: Tenant, load_balancer: LoadBalancer
) -> None:
    frame, sent = await seen_on(f"ws://{load_balancer.http}/ws", topology, tenant, "via the LB")
    assert frame["data"]["message"]["id"] == sent.id


def test_the_load_balancer_serves_files_and_routes_grpc_by_service(
    topology: Topology, tenant: Tenant, load_balancer: LoadBalancer
) -> None:
    data = os.urandom(100_000)
    stored = store_file(topology, tenant, data)
    sent = send_through(topology, 0, tenant, "a file via the LB", stored.id)
    with grpc.insecure_channel(load_balancer.grpc) as channel:
        (attachment,) = (
            channels_pb2_grpc.ChannelServiceStub(channel)
            .GetMessage(
                channels_pb2.GetMessageRequest(channel_id=tenant.channel_id, message_id=sent.id),
                metadata=tenant.md,
                timeout=30,
            )
            .message.attachments
        )
        found = files_pb2_grpc.FileServiceStub(channel).GetFile(
            files_pb2.GetFileRequest(id=stored.id), metadata=tenant.md, timeout=30
        )
        tenant_found = tenants_pb2_grpc.TenantServiceStub(channel).GetTenant(
            tenants_pb2.GetTenantRequest(id=tenant.id), metadata=bearer(ADMIN_TOKEN), timeout=30
        )
    assert found.file.sha256 == stored.sha256 and tenant_found.tenant.id == tenant.id
    url = urlsplit(attachment.url)
    assert download(f"http://{load_balancer.http}{url.path}?{url.query}") == data
