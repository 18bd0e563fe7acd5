"""The container health check of every Keel process: exit 0 when healthy, 1 when not.

The image runs it as its ``HEALTHCHECK`` (installed as ``/usr/local/bin/keel-healthcheck``),
so it must answer for whichever process the container's command chose, without grpcurl and
quickly (it imports grpc and the standard library only, not Keel):

- a process with a gRPC server (``all``, ``tenant-service``, ``gateway``,
  ``notification-service``, ``file-service``) is healthy when ``grpc.health.v1.Health/Check``
  on ``KEEL_GRPC_ADDR`` answers SERVING;
- a bridge has no gRPC server: when nothing listens on ``KEEL_GRPC_ADDR``, the check asks the
  bridge's ``GET /healthz`` on ``KEEL_WS_ADDR`` instead (200 while its gateway link is up).

A wildcard listening host (``0.0.0.0``, ``::``) is checked on the loopback address. The
reason for a failure goes to standard error, where ``docker inspect`` shows it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

#: Seconds each probe may take; Docker's own ``--timeout`` bounds the whole check.
PROBE_TIMEOUT = 3.0

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "[::1]"}


def local_address(listening: str) -> str:
    """The address to reach a server listening on ``listening`` (``HOST:PORT``) from inside
    its own container: a wildcard host becomes the loopback address."""
    host, _, port = listening.rpartition(":")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def grpc_serving(addr: str) -> bool | None:
    """Whether the gRPC server at ``addr`` answers SERVING; None when nothing answers there."""
    with grpc.insecure_channel(addr) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT
            )
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            print(f"keel-healthcheck: {addr}: {error.code().name}", file=sys.stderr)
            return False
    serving: bool = response.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"keel-healthcheck: {addr}: {status}", file=sys.stderr)
    return serving


def bridge_healthy(addr: str) -> bool:
    """Whether the bridge at ``addr`` answers 200 to ``GET /healthz``."""
    url = f"http://{addr}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError as error:
        print(f"keel-healthcheck: {url}: {error.code}", file=sys.stderr)
    except OSError as error:
        print(f"keel-healthcheck: {url}: {error}", file=sys.stderr)
    return False


def main() -> int:
    """Check the process of this container; the exit code Docker reads."""
    grpc_addr = local_address(os.environ.get("KEEL_GRPC_ADDR") or "127.0.0.1:50051")
    serving = grpc_serving(grpc_addr)
    if serving is not None:
        return 0 if serving else 1
    # Nothing answers gRPC: a bridge, or a process that is down.
    ws_addr = local_address(os.environ.get("KEEL_WS_ADDR") or "127.0.0.1:8080")
    if bridge_healthy(ws_addr):
        return 0
    print(f"keel-healthcheck: no gRPC server answers at {grpc_addr}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
