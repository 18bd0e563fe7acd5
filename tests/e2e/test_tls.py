"""Keel's own TLS end to end, with certificates made at test time (trustme): ``keel serve
all`` over TLS reached by grpcurl ``-cacert``, a browser over ``wss://`` and ``https://``
and the image's health check; a cluster (tenant service, gateway, notification service,
file service and bridge as separate processes on PostgreSQL and Redis) with mutual TLS
between them; a bad configuration refused at start."""

from __future__ import annotations

import json
import shlex
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.files.v1 import files_pb2, files_pb2_grpc
from keel.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.ports import free_port
from tests.conftest import ADMIN_TOKEN, unique
from tests.e2e.conftest import (
    START_TIMEOUT,
    KeelProcess,
    bearer,
    client_metadata,
    cluster_env,
    embedded_env,
    fresh_addrs,
    grpcurl,
    keel_cli,
    launch_keel,
    start_keel,
    status_code,
)
from tests.tls_certs import TlsFiles, write_tls_files

pytestmark = pytest.mark.e2e

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"
PEER_TOKEN = "test-peer-token-0123456789abcdef"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """The certificate every Keel process of these tests serves (127.0.0.1, localhost)."""
    return write_tls_files(tmp_path_factory.mktemp("tls"), ca=ca)


@pytest.fixture(scope="module")
def client_certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A client certificate the same CA signed (a tenant's backend, an operator)."""
    return write_tls_files(
        tmp_path_factory.mktemp("client"), ca=ca, names=("backend.example",), stem="client"
    )


def credentials(certs: TlsFiles, client: TlsFiles | None = None) -> grpc.ChannelCredentials:
    """Trusting the test CA; presenting ``client``'s certificate when given."""
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


def browser_tls(certs: TlsFiles) -> ssl.SSLContext:
    """What a browser that trusts the test CA checks (no client certificate)."""
    return ssl.create_default_context(cafile=certs.ca)


def https_status(url: str, context: ssl.SSLContext) -> int | None:
    """The status of ``GET url`` (over TLS for an ``https://`` URL); None: no answer."""
    try:
        with urllib.request.urlopen(url, timeout=2.0, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_https_ok(keel: KeelProcess, url: str, context: ssl.SSLContext) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while https_status(url, context) != 200:
        if keel.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no 200 from {url} within {START_TIMEOUT}s: {keel.describe()}")
        time.sleep(0.1)


def healthcheck(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK with the container's environment ``env``."""
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def welcome_then_echo(
    url: str, token: str, channel_id: str, context: ssl.SSLContext
) -> dict[str, Any]:
    """As a browser over ``wss://``: the welcome frame, then subscribe and send to
    ``channel_id``; returns the welcome frame once the message came back as an event."""
    async with connect(
        f"{url}?token={token}", subprotocols=[Subprotocol("keel.v1")], ssl=context
    ) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        await ws.send(json.dumps({"type": "subscribe", "id": "s", "channel_id": channel_id}))
        assert (await next_frame(ws))["type"] == "ack"
        await ws.send(
            json.dumps({"type": "send", "id": "m", "channel_id": channel_id, "content": "hi"})
        )
        frames = [await next_frame(ws) for _ in range(2)]
        assert {frame["type"] for frame in frames} == {"ack", "event"}, frames
        return dict(welcome)


async def next_frame(ws: ClientConnection) -> dict[str, Any]:
    """The next frame but the user's own ``presence:*`` events, which may come at any time
    once it subscribed (docs/protocol.md, Presence and typing)."""
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if not str(frame.get("event", "")).startswith("presence:"):
            return frame


def chat_for(
    channel: grpc.Channel, creds: tuple[tuple[str, str], ...], user: str = "alice"
) -> tuple[str, str]:
    """A new channel of ``user`` and a client token for them: (channel id, token)."""
    stub = channels_pb2_grpc.ChannelServiceStub(channel)
    created = stub.CreateChannel(
        channels_pb2.CreateChannelRequest(name=unique("tls"), created_by=user),
        metadata=creds,
        timeout=30,
    )
    token = stub.IssueClientToken(
        channels_pb2.IssueClientTokenRequest(user_id=user), metadata=creds, timeout=30
    ).token
    return created.channel.id, token


# --- keel serve all over TLS ------------------------------------------------------------------


@pytest.fixture
def serve_all_tls(
    keel_env: dict[str, str], certs: TlsFiles, tmp_path: Path
) -> Iterator[KeelProcess]:
    """``keel serve all`` serving TLS with the test certificate, trusting the test CA for
    its own calls, asking clients for no certificate; started and past its banner."""
    env = embedded_env(keel_env, **certs.env(client_auth=False))
    keel = start_keel(
        "all",
        env,
        tmp_path / "logs",
        credentials=credentials(certs),
        wait_for_stdout="Keel is running",
    )
    yield keel
    keel.stop()


async def test_serve_all_speaks_tls_to_grpcurl_browsers_and_the_health_check(
    serve_all_tls: KeelProcess, certs: TlsFiles
) -> None:
    keel, env = serve_all_tls, serve_all_tls.env
    listed = grpcurl("-cacert", str(certs.ca), keel.addr, "list")
    assert listed.returncode == 0, listed.stderr
    assert "keel.channels.v1.ChannelService" in listed.stdout.split()
    checked = grpcurl("-cacert", str(certs.ca), keel.addr, "grpc.health.v1.Health/Check")
    assert json.loads(checked.stdout) == {"status": "SERVING"}, checked.stderr
    plaintext = grpcurl("-plaintext", keel.addr, "list")
    assert plaintext.returncode != 0
    untrusted = grpcurl(keel.addr, "list")  # the system's roots do not know the test CA
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr

    banner = keel.stdout()
    ws_addr, files_addr = env["KEEL_WS_ADDR"], env["KEEL_FILES_HTTP_ADDR"]
    assert f"wss://{ws_addr}/ws" in banner and f"https://{files_addr}/files/" in banner
    suggested = shlex.split(banner.split("Try:\n", 1)[1].splitlines()[0])
    assert suggested[:3] == ["grpcurl", "-cacert", str(certs.ca)]
    tried = grpcurl(*suggested[1:])
    assert tried.returncode == 0, tried.stderr

    demo = json.loads((keel.data_dir / "demo-tenant.json").read_text())
    creds = tuple(client_metadata(demo["client_id"], demo["client_secret"]))
    with grpc.secure_channel(keel.addr, credentials(certs)) as channel:
        channel_id, token = chat_for(channel, creds)
    browser = browser_tls(certs)
    welcome = await welcome_then_echo(f"wss://{ws_addr}/ws", token, channel_id, browser)
    assert welcome["files_url"] == f"https://{files_addr}"
    assert https_status(f"https://{files_addr}/files/health", browser) == 200
    assert https_status(f"https://{ws_addr}/healthz", browser) == 200
    assert https_status(f"http://{files_addr}/files/health", browser) is None  # plain HTTP

    probe = healthcheck(env)
    assert probe.returncode == 0, probe.stderr
    as_bridge = healthcheck(env | {"KEEL_GRPC_ADDR": f"127.0.0.1:{free_port()}"})
    assert as_bridge.returncode == 0, as_bridge.stderr  # its /healthz over https
    plain = {k: v for k, v in env.items() if not k.startswith("KEEL_TLS_")}
    assert healthcheck(plain).returncode == 1


def test_a_bad_tls_configuration_stops_the_start_naming_it(
    keel_env: dict[str, str], certs: TlsFiles, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    env = embedded_env(
        keel_env,
        KEEL_TLS_CERT=str(certs.cert),
        KEEL_TLS_CA=str(missing),
    )
    result = keel_cli("serve", "all", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "KEEL_TLS_CERT is set but KEEL_TLS_KEY is not" in result.stderr
    assert f"KEEL_TLS_CA={str(missing)!r}: cannot read it" in result.stderr


# --- a cluster with mutual TLS ----------------------------------------------------------------


@dataclass
class MutualCluster:
    tenant_service: KeelProcess
    gateway: KeelProcess
    notifications: KeelProcess
    files: KeelProcess
    bridge: KeelProcess
    ws_port: int


@pytest.fixture(scope="module")
def mutual_cluster(
    pg_url: str, certs: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MutualCluster]:
    """Tenant service, gateway, notification service, file service and bridge as separate
    processes, every call between them over mutual TLS (each presents the test
    certificate, trusts only the test CA)."""
    root = tmp_path_factory.mktemp("mutual")
    base = cluster_env(pg_url, root / "var", KEEL_PEER_TOKEN=PEER_TOKEN, **certs.env())
    migrated = keel_cli("migrate", env=base)
    assert migrated.returncode == 0, migrated.stderr
    started: list[KeelProcess] = []
    try:
        own = credentials(certs, certs)
        tenant_service = start_keel(
            "tenant-service", base | fresh_addrs(), root / "logs", credentials=own
        )
        started.append(tenant_service)
        peers = base | {"KEEL_TENANT_SERVICE_ADDR": tenant_service.addr}
        gateway = start_keel("gateway", peers | fresh_addrs(), root / "logs", credentials=own)
        started.append(gateway)
        peers |= {"KEEL_GATEWAY_ADDR": gateway.addr}
        notifications = start_keel(
            "notification-service", peers | fresh_addrs(), root / "logs", credentials=own
        )
        started.append(notifications)
        files = start_keel("file-service", peers | fresh_addrs(), root / "logs", credentials=own)
        started.append(files)
        ws_port = free_port()
        bridge = launch_keel(
            "bridge",
            peers
            | fresh_addrs()
            | {
                "KEEL_NOTIFICATION_SERVICE_ADDR": notifications.addr,
                "KEEL_WS_ADDR": f"127.0.0.1:{ws_port}",
                "KEEL_METRICS_ADDR": "off",
            },
            root / "logs",
        )
        started.append(bridge)
        # 200 once its link to the gateway (over mutual TLS) is up.
        wait_https_ok(bridge, f"https://127.0.0.1:{ws_port}/healthz", browser_tls(certs))
        yield MutualCluster(tenant_service, gateway, notifications, files, bridge, ws_port)
    finally:
        for keel in reversed(started):
            keel.stop()


def test_mutual_tls_refuses_grpc_clients_without_a_certificate_the_ca_signed(
    mutual_cluster: MutualCluster, certs: TlsFiles, client_certs: TlsFiles, tmp_path: Path
) -> None:
    gateway = mutual_cluster.gateway.addr
    no_cert = grpcurl("-cacert", str(certs.ca), gateway, "list")
    assert no_cert.returncode != 0
    with_cert = grpcurl(
        "-cacert", str(certs.ca), "-cert", str(client_certs.cert), "-key", str(client_certs.key),
        gateway, "list",
    )  # fmt: skip
    assert with_cert.returncode == 0, with_cert.stderr
    assert "keel.channels.v1.ChannelService" in with_cert.stdout.split()
    stranger = write_tls_files(tmp_path, stem="stranger")  # signed by another CA
    signed_elsewhere = grpcurl(
        "-cacert", str(certs.ca), "-cert", str(stranger.cert), "-key", str(stranger.key),
        gateway, "list",
    )  # fmt: skip
    assert signed_elsewhere.returncode != 0


async def test_a_cluster_with_mutual_tls_serves_backends_and_browsers(
    mutual_cluster: MutualCluster, certs: TlsFiles, client_certs: TlsFiles
) -> None:
    backend = credentials(certs, client_certs)
    with grpc.secure_channel(mutual_cluster.tenant_service.addr, backend) as admin:
        created = tenants_pb2_grpc.TenantServiceStub(admin).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(
                    name=unique("tls"), permissions=["chat:*", "send:*", "upload:*"]
                )
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
    creds = tuple(client_metadata(created.tenant.client_id, created.client_secret))
    # Each process checks these credentials with the tenant service, over mutual TLS.
    with grpc.secure_channel(mutual_cluster.gateway.addr, backend) as channel:
        channels_pb2_grpc.ChannelServiceStub(channel).UpsertUser(
            channels_pb2.UpsertUserRequest(user=channels_pb2.User(id="alice")),
            metadata=creds,
            timeout=30,
        )
        channel_id, token = chat_for(channel, creds)
    with grpc.secure_channel(mutual_cluster.notifications.addr, backend) as channel:
        notify = notifications_pb2_grpc.NotificationServiceStub(channel)
        # The notification service asks the gateway about recipients, over mutual TLS.
        sent = notify.SendNotification(
            notifications_pb2.SendNotificationRequest(
                user_ids=["alice"],
                title="over TLS",
                channels=[notifications_pb2.NOTIFICATION_CHANNEL_IN_APP],
            ),
            metadata=creds,
            timeout=30,
        )
        assert len(sent.notifications) == 1
        unknown = partial(
            notify.SendNotification,
            notifications_pb2.SendNotificationRequest(user_ids=["nobody"], title="?"),
            metadata=creds,
            timeout=30,
        )
        assert status_code(unknown) == grpc.StatusCode.NOT_FOUND  # the gateway answered
    with grpc.secure_channel(mutual_cluster.files.addr, backend) as channel:
        files_pb2_grpc.FileServiceStub(channel).ListFiles(
            files_pb2.ListFilesRequest(), metadata=creds, timeout=30
        )
    files_addr = mutual_cluster.files.env["KEEL_FILES_HTTP_ADDR"]
    browser = browser_tls(certs)
    assert https_status(f"https://{files_addr}/files/health", browser) == 200

    url = f"wss://localhost:{mutual_cluster.ws_port}/ws"
    welcome = await welcome_then_echo(url, token, channel_id, browser)
    assert welcome["user_id"] == "alice"
    # The bridge reads the inbox from the notification service, over mutual TLS.
    async with connect(
        f"{url}?token={token}", subprotocols=[Subprotocol("keel.v1")], ssl=browser
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "inbox", "id": "inbox-1"}))
        answer = json.loads(await ws.recv())
        assert answer["type"] == "ack", answer
        assert [n["title"] for n in answer["result"]["notifications"]] == ["over TLS"]

    for keel in (mutual_cluster.gateway, mutual_cluster.notifications, mutual_cluster.files):
        probe = healthcheck(keel.env)
        assert probe.returncode == 0, probe.stderr
    bridge_env = mutual_cluster.bridge.env | {"KEEL_GRPC_ADDR": f"127.0.0.1:{free_port()}"}
    probe = healthcheck(bridge_env)  # a bridge: its /healthz over https
    assert probe.returncode == 0, probe.stderr


def test_keel_doctor_reaches_the_other_processes_over_mutual_tls(
    mutual_cluster: MutualCluster,
) -> None:
    env = mutual_cluster.bridge.env
    checked = keel_cli("doctor", "bridge", env=env)
    lines = checked.stdout.splitlines()
    for name in ("tenant service", "gateway", "notification service"):
        (line,) = [line for line in lines if line.startswith(name)]
        assert line.split()[len(name.split())] == "OK", checked.stdout
    without_ca = {k: v for k, v in env.items() if k not in ("KEEL_TLS_CA", "KEEL_TLS_CLIENT_AUTH")}
    refused = keel_cli("doctor", "bridge", env=without_ca)  # trusts the system's roots only
    assert refused.returncode == 1
    assert any(
        line.startswith("gateway") and " FAIL " in line for line in refused.stdout.splitlines()
    )
