"""deploy/healthcheck.py, the image's HEALTHCHECK, run as Docker runs it (a subprocess with
the container's environment) against a real gRPC health server (plaintext, and mutual TLS
with certificates made at test time) and a real HTTP server.
tests/e2e/test_compose_topology.py runs it against every Keel process too."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.ports import free_port
from tests.deploy.compose_file import ROOT
from tests.tls_certs import write_tls_files

SCRIPT = ROOT / "deploy" / "healthcheck.py"


def healthcheck(**environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def grpc_health() -> Iterator[tuple[health.HealthServicer, int]]:
    """A gRPC server with grpc.health.v1 on a free port of 127.0.0.1."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=None)


class _Healthz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def bridge_http() -> Iterator[tuple[type[_Healthz], int]]:
    """An HTTP server answering /healthz like a bridge, with a status the test sets."""
    handler = type("Healthz", (_Healthz,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_serving_grpc_process_is_healthy_on_a_wildcard_address(
    grpc_health: tuple[health.HealthServicer, int],
) -> None:
    _, port = grpc_health
    result = healthcheck(KEEL_GRPC_ADDR=f"0.0.0.0:{port}")
    assert result.returncode == 0, result.stderr


def test_a_process_that_is_not_serving_is_unhealthy(
    grpc_health: tuple[health.HealthServicer, int],
) -> None:
    servicer, port = grpc_health
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = healthcheck(KEEL_GRPC_ADDR=f"127.0.0.1:{port}")
    assert result.returncode == 1 and "NOT_SERVING" in result.stderr


def test_a_bridge_is_healthy_while_its_healthz_answers_200(
    bridge_http: tuple[type[_Healthz], int],
) -> None:
    handler, port = bridge_http
    nothing = f"127.0.0.1:{free_port()}"  # a bridge has no gRPC server
    assert healthcheck(KEEL_GRPC_ADDR=nothing, KEEL_WS_ADDR=f"0.0.0.0:{port}").returncode == 0
    handler.status = 503  # its gateway link is down
    result = healthcheck(KEEL_GRPC_ADDR=nothing, KEEL_WS_ADDR=f"127.0.0.1:{port}")
    assert result.returncode == 1 and "503" in result.stderr


def test_nothing_listening_is_unhealthy() -> None:
    result = healthcheck(
        KEEL_GRPC_ADDR=f"127.0.0.1:{free_port()}", KEEL_WS_ADDR=f"127.0.0.1:{free_port()}"
    )
    assert result.returncode == 1 and "no gRPC server answers" in result.stderr


def test_with_tls_on_the_check_speaks_mutual_tls_with_the_process_files(tmp_path: Path) -> None:
    files = write_tls_files(tmp_path / "keel")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(files.key.read_bytes(), files.cert.read_bytes())],
            root_certificates=files.ca.read_bytes(),
            require_client_auth=True,
        ),
    )
    server.start()
    try:
        addr = f"0.0.0.0:{port}"
        nothing = f"127.0.0.1:{free_port()}"
        result = healthcheck(KEEL_GRPC_ADDR=addr, KEEL_WS_ADDR=nothing, **files.env())
        assert result.returncode == 0, result.stderr
        stranger = write_tls_files(tmp_path / "stranger")  # another CA: refused, and told why
        refused = healthcheck(KEEL_GRPC_ADDR=addr, KEEL_WS_ADDR=nothing, **stranger.env())
        assert refused.returncode == 1
        assert f"keel-healthcheck: 127.0.0.1:{port}: " in refused.stderr
        plaintext = healthcheck(KEEL_GRPC_ADDR=addr, KEEL_WS_ADDR=nothing)
        assert plaintext.returncode == 1
    finally:
        server.stop(grace=None)
