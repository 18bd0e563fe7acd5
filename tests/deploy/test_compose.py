"""deploy/compose.yaml and deploy/haproxy.cfg, checked without running a container.

Containers cannot run on Keel's development machines (the sandbox refuses the container
runtime's setrlimit), so the compose file is validated against the compose-spec schema
(check-jsonschema's bundled copy: no download), each Keel process's environment is loaded
with Keel's own ``load_settings`` and cluster checks, and the load balancer's routing is
read from its configuration. tests/e2e/test_compose_topology.py runs the same topology as
processes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keel_app.processes import check_cluster_settings
from service_kit.config import load_settings
from tests.deploy.compose_file import (
    COMPOSE_FILE,
    HAPROXY_CONFIG,
    image_environment,
    keel_services,
    keel_variables,
    load_compose,
    service_environment,
)

CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")

#: A deploy/.env as an operator writes it from deploy/.env.example.
DOTENV = {
    "POSTGRES_PASSWORD": "pg-password",
    "KEEL_ADMIN_TOKEN": "operator-token-0123456789",
    "KEEL_PEER_TOKEN": "peer-token-0123456789",
    "KEEL_TOKEN_SECRET": "client-token-secret-0123456789abcdef",
    "MINIO_ROOT_USER": "keel",
    "MINIO_ROOT_PASSWORD": "minio-password",
}

#: The services `docker compose up --scale` is meant for.
SCALED = ("gateway", "bridge")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_compose_file_is_valid_under_the_compose_spec() -> None:
    result = validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_refuses_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("depends_on:", "depends_onn:", 1))
    assert validate(broken).returncode != 0


def test_every_keel_process_is_a_keel_command(compose: dict[str, Any]) -> None:
    commands = {name: s["command"] for name, s in keel_services(compose).items()}
    assert commands == {
        "migrate": ["migrate"],
        "tenant-service": ["serve", "tenant-service"],
        "gateway": ["serve", "gateway"],
        "bridge": ["serve", "bridge"],
        "notification-service": ["serve", "notification-service"],
        "file-service": ["serve", "file-service"],
    }


def unknown_variables(environment: dict[str, str]) -> set[str]:
    return set(environment) - keel_variables()


def test_keel_services_set_only_variables_keel_reads(compose: dict[str, Any]) -> None:
    for name, service in keel_services(compose).items():
        environment = service_environment(service, DOTENV)
        assert not unknown_variables(environment), name


def test_a_misspelt_variable_would_be_caught() -> None:
    assert unknown_variables({"KEEL_GRPC_ADRR": "0.0.0.0:50051"}) == {"KEEL_GRPC_ADRR"}


@pytest.mark.parametrize(
    "name", ["tenant-service", "gateway", "bridge", "notification-service", "file-service"]
)
def test_each_process_starts_with_its_environment(compose: dict[str, Any], name: str) -> None:
    """Keel's own checks accept what compose gives each process (with the image's ENV)."""
    service = keel_services(compose)[name]
    settings = load_settings(image_environment() | service_environment(service, DOTENV))
    check_cluster_settings(name, settings)  # raises ConfigError naming what is missing
    assert settings.database_url.startswith("postgresql") or name == "bridge"


def test_the_bridge_holds_neither_the_operator_token_nor_the_database(
    compose: dict[str, Any],
) -> None:
    environment = keel_services(compose)["bridge"]["environment"]
    assert "KEEL_ADMIN_TOKEN" not in environment and "DATABASE_URL" not in environment


def test_the_file_service_stores_in_the_minio_bucket_the_one_shot_creates(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    files = service_environment(services["file-service"], DOTENV)
    bucket = service_environment(services["minio-bucket"], DOTENV)
    assert files["KEEL_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert files["KEEL_S3_BUCKET"] == bucket["KEEL_S3_BUCKET"]
    assert "mc mb" in " ".join(services["minio-bucket"]["command"])
    assert services["file-service"]["depends_on"]["minio-bucket"] == {
        "condition": "service_completed_successfully"
    }


def test_notifications_go_to_the_smtp_catcher(compose: dict[str, Any]) -> None:
    environment = compose["services"]["notification-service"]["environment"]
    assert environment["KEEL_SMTP_URL"] == "smtp://mailpit:1025"
    assert "mailpit" in compose["services"]


def test_scaled_services_publish_no_host_ports(compose: dict[str, Any]) -> None:
    for name in SCALED:
        assert compose["services"][name]["deploy"]["replicas"] >= 2
    for name, service in keel_services(compose).items():
        assert "ports" not in service, name
        assert "container_name" not in service, name  # a fixed name would forbid replicas


def test_every_keel_process_waits_for_the_migration(compose: dict[str, Any]) -> None:
    for name, service in keel_services(compose).items():
        if name == "migrate":
            assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
            assert service["restart"] == "no"
            continue
        assert service["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    one_shots = {"migrate", "minio-bucket", "mailpit"}  # mailpit's image has its own
    for name, service in compose["services"].items():
        if name not in one_shots:
            assert service["healthcheck"]["test"][0] == "CMD", name


def test_the_secrets_come_from_the_env_file(compose: dict[str, Any]) -> None:
    example = dict(
        line.split("=", 1)
        for line in (COMPOSE_FILE.parent / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(DOTENV) <= set(example)
    raw = COMPOSE_FILE.read_text()
    for secret in ("KEEL_ADMIN_TOKEN", "KEEL_PEER_TOKEN", "KEEL_TOKEN_SECRET", "POSTGRES_PASSWORD"):
        assert f"${{{secret}:?" in raw  # required: compose refuses to start without it
    assert (COMPOSE_FILE.parent / ".gitignore").read_text().splitlines()[-1] == ".env"


# --- the load balancer ---------------------------------------------------------------------


def haproxy_sections() -> dict[str, list[str]]:
    """deploy/haproxy.cfg as ``{"frontend http": [its lines], ...}`` (comments dropped)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in HAPROXY_CONFIG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not raw[0].isspace():
            current = sections.setdefault(line, [])
        else:
            current.append(" ".join(line.split()))
    return sections


def route(frontend: str, path: str) -> str:
    """The backend ``frontend`` sends a request for ``path`` to (path_beg ACLs only)."""
    lines = haproxy_sections()[f"frontend {frontend}"]
    prefixes = {
        words[1]: words[3]
        for words in map(str.split, lines)
        if len(words) == 4 and words[0] == "acl" and words[2] == "path_beg"
    }
    for words in map(str.split, lines):
        if words[0] == "use_backend" and path.startswith(prefixes[words[3]]):
            return words[1]
    return next(line.split()[1] for line in lines if line.startswith("default_backend "))


def servers(backend: str) -> str:
    """Where ``backend``'s server-template points (``service:port``)."""
    lines = haproxy_sections()[f"backend {backend}"]
    return next(line.split()[3] for line in lines if line.startswith("server-template "))


def test_websockets_and_bridge_pages_go_to_the_bridges() -> None:
    for path in ("/ws", "/healthz", "/keel.js", "/demo", "/notifications/unsubscribe"):
        assert route("http", path) == "bridges", path
    port = image_environment()["KEEL_WS_ADDR"].rsplit(":", 1)[1]
    assert servers("bridges") == f"bridge:{port}"


def test_the_bridges_are_checked_on_healthz() -> None:
    checks = haproxy_sections()["backend bridges"]
    assert "option httpchk" in checks
    assert "http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host bridge" in checks
    assert "http-check expect status 200" in checks


def test_websockets_may_stay_open_for_long() -> None:
    defaults = haproxy_sections()["defaults"]
    assert "timeout tunnel 1h" in defaults


def test_file_endpoints_go_to_the_file_services() -> None:
    for path in ("/files/tus", "/files/tus/abc", "/files/download/t/a.png", "/files/health"):
        assert route("http", path) == "files", path
    port = image_environment()["KEEL_FILES_HTTP_ADDR"].rsplit(":", 1)[1]
    assert servers("files") == f"file-service:{port}"


def test_grpc_calls_go_to_the_process_serving_them() -> None:
    expected = {
        "/keel.channels.v1.ChannelService/SendMessage": ("gateways_grpc", "gateway"),
        "/keel.events.v1.EventService/SubscribeEvents": ("gateways_grpc", "gateway"),
        "/keel.tenants.v1.TenantService/CreateTenant": ("tenant_grpc", "tenant-service"),
        "/keel.files.v1.FileService/UploadFile": ("files_grpc", "file-service"),
        "/keel.notifications.v1.NotificationService/ListInbox": (
            "notifications_grpc",
            "notification-service",
        ),
    }
    port = image_environment()["KEEL_GRPC_ADDR"].rsplit(":", 1)[1]
    for path, (backend, service) in expected.items():
        assert route("grpc", path) == backend, path
        assert servers(backend) == f"{service}:{port}"
        assert "proto h2" in " ".join(haproxy_sections()[f"backend {backend}"])


def test_only_the_load_balancer_publishes_keel_ports(compose: dict[str, Any]) -> None:
    ports = compose["services"]["lb"]["ports"]
    assert [p.rsplit(":", 1)[1] for p in ports] == ["8080", "50051"]
    bind = {line for section in haproxy_sections().values() for line in section}
    assert {"bind :8080", "bind :50051 proto h2"} <= bind
    volume = compose["services"]["lb"]["volumes"][0]
    assert volume.startswith("./haproxy.cfg:")


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="HAProxy is not installed here")
def test_haproxy_accepts_its_configuration() -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
