"""``keel serve all`` as a newcomer runs it: one process on SQLite, grpcurl, the ``keel`` CLI."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from keel.channels.v1 import channels_pb2, channels_pb2_grpc
from keel.events.v1 import events_pb2
from keel.files.v1 import files_pb2
from keel.notifications.v1 import notifications_pb2
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from tests.conftest import unique
from tests.e2e.conftest import (
    GRPCURL,
    KeelProcess,
    bearer,
    call_error,
    client_metadata,
    embedded_env,
    error_details,
    fetch_metrics,
    grpcurl,
    grpcurl_call,
    grpcurl_code,
    grpcurl_error,
    health_status,
    keel_cli,
    metric_samples,
    status_code,
)

pytestmark = pytest.mark.e2e

TENANTS = "keel.tenants.v1.TenantService"
CHANNELS = "keel.channels.v1.ChannelService"
ALL_SERVICES = {
    TENANTS,
    CHANNELS,
    "keel.events.v1.EventService",
    "keel.notifications.v1.NotificationService",
    "keel.files.v1.FileService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


class Stubs:
    """The generated stubs on one channel to a Keel process."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.tenants = tenants_pb2_grpc.TenantServiceStub(channel)
        self.channels = channels_pb2_grpc.ChannelServiceStub(channel)


@contextmanager
def stubs(addr: str) -> Iterator[Stubs]:
    with grpc.insecure_channel(addr) as channel:
        yield Stubs(channel)


def admin_token(keel: KeelProcess) -> str:
    return (keel.data_dir / "admin-token").read_text().strip()


def get_channel_request() -> channels_pb2.GetChannelRequest:
    return channels_pb2.GetChannelRequest(id=str(uuid.uuid4()))


def create_tenant(keel: KeelProcess, **fields: object) -> tenants_pb2.CreateTenantResponse:
    """CreateTenant through the admin API with the process's operator token."""
    with stubs(keel.addr) as api:
        return api.tenants.CreateTenant(  # type: ignore[no-any-return]
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("e2e"), **fields)  # type: ignore[arg-type]
            ),
            metadata=bearer(admin_token(keel)),
            timeout=30,
        )


def all_tenant_ids(keel: KeelProcess) -> set[str]:
    ids: set[str] = set()
    token = ""
    with stubs(keel.addr) as api:
        while True:
            page = api.tenants.ListTenants(
                tenants_pb2.ListTenantsRequest(page_size=1000, page_token=token),
                metadata=bearer(admin_token(keel)),
                timeout=10,
            )
            ids |= {t.id for t in page.tenants}
            token = page.next_page_token
            if not token:
                return ids


def test_grpcurl_lists_and_describes_every_service(serve_all: KeelProcess) -> None:
    listed = grpcurl("-plaintext", serve_all.addr, "list")
    assert listed.returncode == 0, listed.stderr
    assert ALL_SERVICES <= set(listed.stdout.split())

    described = grpcurl("-plaintext", serve_all.addr, "describe", CHANNELS)
    assert described.returncode == 0, described.stderr
    assert "service ChannelService" in described.stdout
    assert "rpc SendMessage" in described.stdout


def test_health_check_answers_serving(serve_all: KeelProcess) -> None:
    overall = grpcurl_call(serve_all.addr, "grpc.health.v1.Health/Check")
    assert overall.returncode == 0, overall.stdout + overall.stderr
    assert json.loads(overall.stdout) == {"status": "SERVING"}

    tenants = grpcurl_call(serve_all.addr, "grpc.health.v1.Health/Check", {"service": TENANTS})
    assert tenants.returncode == 0, tenants.stdout + tenants.stderr
    assert json.loads(tenants.stdout) == {"status": "SERVING"}


def test_banner_grpcurl_command_works_when_pasted(serve_all: KeelProcess) -> None:
    demo = json.loads((serve_all.data_dir / "demo-tenant.json").read_text())
    assert (serve_all.data_dir / "admin-token").stat().st_mode & 0o077 == 0
    assert (serve_all.data_dir / "demo-tenant.json").stat().st_mode & 0o077 == 0
    banner = serve_all.stdout()
    commands = [line.strip() for line in banner.splitlines() if line.strip().startswith("grpcurl")]
    assert len(commands) == 1, banner
    pasted = shlex.quote(GRPCURL) + commands[0].removeprefix("grpcurl")

    result = subprocess.run(
        pasted, shell=True, capture_output=True, text=True, timeout=20, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["tenant_id"] == demo["tenant_id"]
    assert answer["name"] == "demo"
    assert {"chat:*", "presence:*", "send:*", "upload:*"} <= set(answer["permissions"])


def test_tenant_created_with_the_cli_validates_over_grpc(serve_all: KeelProcess) -> None:
    name = unique("cli")
    created = keel_cli("tenants", "create", name, "--permission", "chat:read", env=serve_all.env)
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)
    assert tenant["name"] == name

    result = grpcurl_call(
        serve_all.addr,
        f"{TENANTS}/ValidateCredentials",
        {"client_id": tenant["client_id"], "client_secret": tenant["client_secret"]},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["tenant_id"] == tenant["id"]
    assert answer["name"] == name
    assert answer["permissions"] == ["chat:read"]


def test_seeded_tenants_get_the_scopes_of_the_seed(serve_all: KeelProcess, tmp_path: Path) -> None:
    reddit, twitter = unique("reddit-clone"), unique("twitter-clone")
    seed = tmp_path / "tenants.yaml"
    seed.write_text(
        f"""
- clientId: {reddit}
  clientSecret: secret123
  permissions:
    websocket: ['chat:*', 'presence:*']
    notification: ['send:*']
    files: ['upload:*']
- clientId: {twitter}
  clientSecret: secret456
  permissions:
    websocket: ['chat:read', 'presence:read']
    notification: ['send:basic']
"""
    )
    seeded = keel_cli("tenants", "seed", str(seed), env=serve_all.env)
    assert seeded.returncode == 0, seeded.stderr
    assert [t["client_id"] for t in json.loads(seeded.stdout)] == [reddit, twitter]

    def call(method: str, headers: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return grpcurl_call(serve_all.addr, f"{CHANNELS}/{method}", {}, headers=headers)

    def creds(client_id: str, secret: str) -> dict[str, str]:
        return {"x-client-id": client_id, "x-client-secret": secret}

    denied = call("SendMessage", creds(twitter, "secret456"))
    assert grpcurl_code(denied) == grpc.StatusCode.PERMISSION_DENIED
    assert "chat:write" in grpcurl_error(denied)["message"]

    assert grpcurl_code(call("SendMessage", creds(reddit, "secret123"))) == (
        grpc.StatusCode.INVALID_ARGUMENT  # authorized; {} is no channel
    )
    assert grpcurl_code(call("GetChannel", creds(twitter, "secret456"))) == (
        grpc.StatusCode.INVALID_ARGUMENT  # authorized; {} is no channel
    )
    assert grpcurl_code(call("GetChannel", creds(twitter, "secret123"))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )

    missing = call("GetChannel", {})
    assert grpcurl_code(missing) == grpc.StatusCode.UNAUTHENTICATED
    message = grpcurl_error(missing)["message"]
    assert "x-client-id" in message and "x-client-secret" in message

    def bearer_header(client_id: str, secret: str) -> dict[str, str]:
        return {"authorization": f"Bearer {client_id}:{secret}"}

    assert grpcurl_code(call("SendMessage", bearer_header(reddit, "secret123"))) == (
        grpc.StatusCode.INVALID_ARGUMENT  # authorized; {} is no channel
    )
    assert grpcurl_code(call("SendMessage", bearer_header(twitter, "secret456"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert grpcurl_code(call("GetChannel", bearer_header(twitter, "secret456"))) == (
        grpc.StatusCode.INVALID_ARGUMENT  # authorized; {} is no channel
    )
    assert grpcurl_code(call("GetChannel", bearer_header(twitter, "wrong-secret"))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_tenant_rate_limit_answers_resource_exhausted_with_retry_info(
    serve_all: KeelProcess,
) -> None:
    created = grpcurl_call(
        serve_all.addr,
        f"{TENANTS}/CreateTenant",
        {
            "tenant": {
                "name": unique("limited"),
                "permissions": ["chat:read"],
                "rate_limits": {"requests_per_second": 1, "burst": 2},
            }
        },
        headers={"authorization": f"Bearer {admin_token(serve_all)}"},
    )
    assert created.returncode == 0, created.stdout + created.stderr
    answer = json.loads(created.stdout)
    creds = client_metadata(answer["tenant"]["client_id"], answer["client_secret"])

    errors = []
    with stubs(serve_all.addr) as api:
        for _ in range(5):
            try:
                api.channels.GetChannel(get_channel_request(), metadata=creds, timeout=10)
            except grpc.RpcError as error:
                errors.append(error)

    codes = [e.code() for e in errors]
    assert codes.count(grpc.StatusCode.NOT_FOUND) >= 1  # the burst passed auth
    exhausted = [e for e in errors if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert exhausted, codes
    retry = [d for d in error_details(exhausted[0]) if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry and retry[0].retry_delay.ToNanoseconds() > 0
    assert "rate limit" in exhausted[0].details()


def test_repeated_wrong_secrets_lock_only_that_client_id(serve_all: KeelProcess) -> None:
    target = create_tenant(serve_all, permissions=["chat:read"])
    other = create_tenant(serve_all, permissions=["chat:read"])
    validate = tenants_pb2.ValidateCredentialsRequest

    with stubs(serve_all.addr) as api:

        def check(client_id: str, secret: str) -> Callable[[], object]:
            return lambda: api.tenants.ValidateCredentials(
                validate(client_id=client_id, client_secret=secret), timeout=10
            )

        target_id = target.tenant.client_id
        for _ in range(10):  # KEEL_VALIDATE_FAILURES_PER_MINUTE defaults to 10
            assert status_code(check(target_id, "wrong-secret-123")) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        locked = call_error(check(target_id, "wrong-secret-123"))
        assert locked.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert any(isinstance(d, error_details_pb2.RetryInfo) for d in error_details(locked))

        right = call_error(check(target_id, target.client_secret))
        assert right.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        answer = check(other.tenant.client_id, other.client_secret)()
        assert answer.tenant_id == other.tenant.id  # type: ignore[attr-defined]
        assert status_code(check(other.tenant.client_id, "wrong-secret-123")) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


def test_bad_requests_get_readable_statuses_and_store_nothing(serve_all: KeelProcess) -> None:
    admin = bearer(admin_token(serve_all))
    before = all_tenant_ids(serve_all)

    with stubs(serve_all.addr) as api:
        error = call_error(
            lambda: api.tenants.GetTenant(
                tenants_pb2.GetTenantRequest(id="not-a-uuid"), metadata=admin, timeout=10
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not-a-uuid" in error.details()
        assert fields_named(error) == ["id"]

        missing = str(uuid.uuid4())
        error = call_error(
            lambda: api.tenants.GetTenant(
                tenants_pb2.GetTenantRequest(id=missing), metadata=admin, timeout=10
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert missing in error.details()

        def create(tenant: tenants_pb2.Tenant, metadata: object = admin) -> Callable[[], object]:
            return lambda: api.tenants.CreateTenant(
                tenants_pb2.CreateTenantRequest(tenant=tenant), metadata=metadata, timeout=10
            )

        error = call_error(create(tenants_pb2.Tenant(name="n" * 500)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tenant.name" in error.details()
        assert fields_named(error) == ["tenant.name"]
        assert all_tenant_ids(serve_all) == before

        error = call_error(create(tenants_pb2.Tenant(name=unique("x"), permissions=["bad scope"])))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bad scope" in error.details()
        assert fields_named(error) == ["tenant.permissions[0]"]
        assert all_tenant_ids(serve_all) == before

        for metadata in ((), bearer("wrong-operator-token-0123456789")):
            error = call_error(create(tenants_pb2.Tenant(name=unique("x")), metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "operator token" in error.details()
            assert all_tenant_ids(serve_all) == before


def fields_named(error: grpc.RpcError) -> list[str]:
    return [
        violation.field
        for detail in error_details(error)
        if isinstance(detail, error_details_pb2.BadRequest)
        for violation in detail.field_violations
    ]


def test_sigterm_lets_in_flight_calls_finish_and_exits_cleanly(
    keel_env: dict[str, str], keel_server: Callable[..., KeelProcess]
) -> None:
    env = embedded_env(
        keel_env,
        KEEL_SECRET_HASH_COST="17",
        KEEL_SHUTDOWN_GRACE_SECONDS="20",
        KEEL_LOG_LEVEL="DEBUG",  # successful calls' access log lines are DEBUG
    )
    keel = keel_server("all", env, wait_for_stdout="Keel is running")
    admin = bearer(admin_token(keel))
    names = [unique("drain") for _ in range(6)]

    with stubs(keel.addr) as api:
        # A chosen secret is hashed slowly (scrypt at cost 17): the calls are still in
        # flight when SIGTERM comes.
        calls = [
            api.tenants.CreateTenant.future(
                tenants_pb2.CreateTenantRequest(
                    tenant=tenants_pb2.Tenant(name=name), client_secret=f"chosen-{name}"
                ),
                metadata=admin,
                timeout=60,
            )
            for name in names
        ]
        wait_until_arrived(keel, len(calls))
        keel.signal(signal.SIGTERM)
        keel.wait_for_output('"shutting down"', stream="stderr")
        assert new_connection_fails(keel.addr)

        results = [call.result(timeout=60) for call in calls]

    assert sorted(r.tenant.name for r in results) == sorted(names)
    assert keel.wait() == 0, keel.describe()
    # At least one CreateTenant was still running when the shutdown began.
    log = [r["message"] if r["message"] != "rpc" else r["method"] for r in keel.log_records()]
    assert f"{TENANTS}/CreateTenant" in log[log.index("shutting down") :], log

    listed = keel_cli("tenants", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert set(names) <= {t["name"] for t in json.loads(listed.stdout)}


def wait_until_arrived(keel: KeelProcess, count: int, timeout: float = 10.0) -> None:
    """Wait until ``count`` CreateTenant calls are in flight or done, per ``/metrics``."""
    deadline = time.monotonic() + timeout
    while True:
        page = fetch_metrics(keel.metrics_url)
        in_flight = sum(
            value
            for labels, value in metric_samples(page, "keel_grpc_server_in_flight")
            if labels.get("grpc_service") == TENANTS
        )
        handled = sum(
            value
            for labels, value in metric_samples(page, "keel_grpc_server_handled_total")
            if labels.get("grpc_method") == "CreateTenant"
        )
        if in_flight + handled >= count:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"only {in_flight + handled} of {count} calls arrived:\n{page}")
        time.sleep(0.02)


def new_connection_fails(addr: str, timeout: float = 5.0) -> bool:
    """Whether a fresh client is turned away (connection refused or UNAVAILABLE), not left hanging.

    Polls briefly: the shutdown log line is written just before the listener closes.
    """
    host, _, port = addr.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                pass
        except ConnectionRefusedError:
            return True
        try:
            health_status(addr, timeout=5)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                return True
        time.sleep(0.05)
    return False


def test_metrics_count_the_methods_called(serve_all: KeelProcess) -> None:
    demo = json.loads((serve_all.data_dir / "demo-tenant.json").read_text())
    with stubs(serve_all.addr) as api:
        api.tenants.ValidateCredentials(
            tenants_pb2.ValidateCredentialsRequest(
                client_id=demo["client_id"], client_secret=demo["client_secret"]
            ),
            timeout=10,
        )
        creds = client_metadata(demo["client_id"], demo["client_secret"])
        assert (
            status_code(
                lambda: api.channels.GetChannel(get_channel_request(), metadata=creds, timeout=10)
            )
            == grpc.StatusCode.NOT_FOUND
        )

    samples = metric_samples(fetch_metrics(serve_all.metrics_url), "keel_grpc_server_handled_total")
    counted = {
        (labels["grpc_service"], labels["grpc_method"], labels["grpc_code"]): value
        for labels, value in samples
    }
    assert counted.get((TENANTS, "ValidateCredentials", "OK"), 0) >= 1, samples
    assert counted.get((CHANNELS, "GetChannel", "NOT_FOUND"), 0) >= 1, samples


def test_rotated_secret_stops_working_at_once(serve_all: KeelProcess) -> None:
    created = create_tenant(serve_all, permissions=["chat:read"])
    client_id, old_secret = created.tenant.client_id, created.client_secret

    with stubs(serve_all.addr) as api:

        def get_channel(secret: str) -> grpc.StatusCode:
            return status_code(
                lambda: api.channels.GetChannel(
                    get_channel_request(), metadata=client_metadata(client_id, secret), timeout=10
                )
            )

        assert get_channel(old_secret) == grpc.StatusCode.NOT_FOUND  # now cached
        assert get_channel(old_secret) == grpc.StatusCode.NOT_FOUND
        rotated = api.tenants.RotateSecret(
            tenants_pb2.RotateSecretRequest(id=created.tenant.id),
            metadata=bearer(admin_token(serve_all)),
            timeout=30,
        )

        assert get_channel(old_secret) == grpc.StatusCode.UNAUTHENTICATED
        assert get_channel(rotated.client_secret) == grpc.StatusCode.NOT_FOUND


# -- reflection and health as grpcurl sees them ------------------------------------------------

#: Every Keel API, by the file that defines it.
KEEL_SERVICES = {
    TENANTS: tenants_pb2.DESCRIPTOR,
    CHANNELS: channels_pb2.DESCRIPTOR,
    "keel.events.v1.EventService": events_pb2.DESCRIPTOR,
    "keel.notifications.v1.NotificationService": notifications_pb2.DESCRIPTOR,
    "keel.files.v1.FileService": files_pb2.DESCRIPTOR,
}


def test_grpcurl_describes_every_method_over_reflection(serve_all: KeelProcess) -> None:
    listed = grpcurl("-plaintext", serve_all.addr, "list")
    assert listed.returncode == 0, listed.stderr
    assert {
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(listed.stdout.split())
    for symbol, shown in [
        (f"{CHANNELS}.SendMessage", "rpc SendMessage ( .keel.channels.v1.SendMessageRequest )"),
        ("grpc.health.v1.Health.Check", "rpc Check ( .grpc.health.v1.HealthCheckRequest )"),
        ("grpc.health.v1.Health.List", "rpc List ( .grpc.health.v1.HealthListRequest )"),
    ]:
        described = grpcurl("-plaintext", serve_all.addr, "describe", symbol)
        assert described.returncode == 0, described.stderr
        assert f"{symbol} is a method" in described.stdout
        assert shown in described.stdout


def first_unary_method(service: str) -> str:
    methods = KEEL_SERVICES[service].services_by_name[service.rsplit(".", 1)[1]].methods
    return next(m.name for m in methods if not m.client_streaming and not m.server_streaming)


def test_health_serves_a_service_only_when_it_does_not_answer_unimplemented(
    serve_all: KeelProcess,
) -> None:
    demo = json.loads((serve_all.data_dir / "demo-tenant.json").read_text())
    creds = client_metadata(demo["client_id"], demo["client_secret"])
    listed = grpcurl_call(serve_all.addr, "grpc.health.v1.Health/List")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    statuses = {name: s["status"] for name, s in json.loads(listed.stdout)["statuses"].items()}
    assert set(statuses) == {"", *KEEL_SERVICES}
    assert statuses[""] == "SERVING"
    with grpc.insecure_channel(serve_all.addr) as channel:
        for service in KEEL_SERVICES:
            call = channel.unary_unary(
                f"/{service}/{first_unary_method(service)}",
                request_serializer=lambda request: b"",
                response_deserializer=lambda response: response,
            )
            code = status_code(partial(call, b"", metadata=creds, timeout=10))
            expected = "NOT_SERVING" if code == grpc.StatusCode.UNIMPLEMENTED else "SERVING"
            assert statuses[service] == expected, (service, code)
            check = {"service": service}
            checked = grpcurl_call(serve_all.addr, "grpc.health.v1.Health/Check", check)
            assert json.loads(checked.stdout) == {"status": expected}
    assert "Traceback" not in serve_all.stderr()


# -- nothing secret in the logs, at any level -------------------------------------------------


async def test_no_secret_or_token_reaches_the_logs_even_at_debug(
    keel_env: dict[str, str], keel_server: Callable[..., KeelProcess]
) -> None:
    keel = keel_server(
        "all", embedded_env(keel_env, KEEL_LOG_LEVEL="DEBUG"), wait_for_stdout="Keel is running"
    )
    demo = json.loads((keel.data_dir / "demo-tenant.json").read_text())
    created = create_tenant(keel, permissions=["chat:*"])
    creds = client_metadata(created.tenant.client_id, created.client_secret)
    canary = f"frame-content-{uuid.uuid4().hex}"
    with stubs(keel.addr) as api:
        channel = api.channels.CreateChannel(
            channels_pb2.CreateChannelRequest(name=unique("logs"), created_by="alice"),
            metadata=creds,
            timeout=30,
        ).channel
        tokens = [
            api.channels.IssueClientToken(
                channels_pb2.IssueClientTokenRequest(user_id="alice"), metadata=creds, timeout=30
            ).token
            for _ in range(2)
        ]
        # The other way to send credentials, and a refused secret.
        bearer_creds = bearer(f"{created.tenant.client_id}:{created.client_secret}")
        api.channels.GetChannel(
            channels_pb2.GetChannelRequest(id=channel.id), metadata=bearer_creds, timeout=10
        )
        wrong = client_metadata(created.tenant.client_id, "ks_" + "w" * 43)
        refused = partial(
            api.channels.GetChannel, get_channel_request(), metadata=wrong, timeout=10
        )
        assert status_code(refused) == grpc.StatusCode.UNAUTHENTICATED

    ws = f"ws://{keel.env['KEEL_WS_ADDR']}/ws"
    async with connect(f"{ws}?token={tokens[0]}", subprotocols=[Subprotocol("keel.v1")]) as alice:
        assert json.loads(await alice.recv())["type"] == "welcome"
        await alice.send(json.dumps({"type": "subscribe", "id": "s", "channel_id": channel.id}))
        assert json.loads(await alice.recv())["type"] == "ack"
        await alice.send(
            json.dumps({"type": "send", "id": "m", "channel_id": channel.id, "content": canary})
        )
        assert {json.loads(await alice.recv())["type"] for _ in range(2)} == {"ack", "event"}
    async with connect(ws, subprotocols=[Subprotocol("keel.v1")]) as by_frame:
        await by_frame.send(json.dumps({"type": "auth", "token": tokens[1]}))
        assert json.loads(await by_frame.recv())["type"] == "welcome"

    with stubs(keel.addr) as api:
        rotated = api.tenants.RotateSecret(
            tenants_pb2.RotateSecretRequest(id=created.tenant.id),
            metadata=bearer(admin_token(keel)),
            timeout=30,
        )
    assert keel.stop() == 0

    secrets = {
        "client secret": created.client_secret,
        "rotated secret": rotated.client_secret,
        "demo secret": demo["client_secret"],
        "operator token": admin_token(keel),
        "token secret": (keel.data_dir / "token-secret").read_text().strip(),
        "frame content": canary,
        "frame content's end": canary[-16:],  # websockets shortens long frames in the middle
    }
    for number, token in enumerate(tokens):
        secrets[f"client token {number}"] = token
        secrets[f"client token {number}'s signature"] = token.rsplit(".", 1)[1]
    lines = keel.stderr().splitlines()
    records = keel.log_records()
    assert len(records) == len(lines)  # every line is JSON
    assert any(r["level"] == "debug" and r["logger"] == "keel.rpc" for r in records)
    leaks = [(what, line) for line in lines for what, value in secrets.items() if value in line]
    assert not leaks, leaks
    bridge = [r for r in records if r["logger"].startswith("websockets")]
    opened = [r for r in bridge if r["message"] == "connection open"]
    assert len(opened) == 2, bridge
    assert all(r["path"] == "/ws" and r["peer"].startswith("127.0.0.1:") for r in opened)
    assert not [line for line in lines if "object at 0x" in line]
