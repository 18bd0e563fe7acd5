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

With Keel's own TLS on (``KEEL_TLS_CERT``, docs/deploy.md#tls) both probes speak TLS as the
process's own clients do (service_kit/tls.py, not imported here): they trust ``KEEL_TLS_CA``
(else the system's roots), present ``KEEL_TLS_CERT``/``KEEL_TLS_KEY`` when ``KEEL_TLS_CA``
is set (mutual TLS), and expect the certificate to name the host probed (the loopback
address for a wildcard) or ``KEEL_TLS_SERVER_NAME``.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

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


def _read(env: Mapping[str, str], name: str) -> bytes | None:
    path = env.get(name)
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def grpc_channel(addr: str, env: Mapping[str, str]) -> grpc.Channel:
    """A channel to ``addr``: TLS as described in the module docstring when
    ``KEEL_TLS_CERT`` is set, plaintext otherwise."""
    if not env.get("KEEL_TLS_CERT"):
        return grpc.insecure_channel(addr)
    ca = _read(env, "KEEL_TLS_CA")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=_read(env, "KEEL_TLS_KEY") if ca else None,
        certificate_chain=_read(env, "KEEL_TLS_CERT") if ca else None,
    )
    name = env.get("KEEL_TLS_SERVER_NAME")
    options = [("grpc.ssl_target_name_override", name)] if name else None
    return grpc.secure_channel(addr, credentials, options=options)


def grpc_serving(addr: str, env: Mapping[str, str] | None = None) -> bool | None:
    """Whether the gRPC server at ``addr`` answers SERVING; None when nothing answers there
    (or no TLS connection could be made: why goes to standard error)."""
    env = os.environ if env is None else env
    with grpc_channel(addr, env) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT
            )
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                if env.get("KEEL_TLS_CERT"):  # a refused handshake looks like no server
                    print(f"keel-healthcheck: {addr}: {error.details()}", file=sys.stderr)
                return None
            print(f"keel-healthcheck: {addr}: {error.code().name}", file=sys.stderr)
            return False
    serving: bool = response.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"keel-healthcheck: {addr}: {status}", file=sys.stderr)
    return serving


def bridge_healthy(addr: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether the bridge at ``addr`` answers 200 to ``GET /healthz`` (over HTTPS when
    ``KEEL_TLS_CERT`` is set)."""
    env = os.environ if env is None else env
    context: ssl.SSLContext | None = None
    if env.get("KEEL_TLS_CERT"):
        context = ssl.create_default_context(cafile=env.get("KEEL_TLS_CA") or None)
        # urllib cannot expect another name than the host it dials; the chain is still checked.
        context.check_hostname = not env.get("KEEL_TLS_SERVER_NAME")
    url = f"{'https' if context else 'http'}://{addr}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT, context=context) as response:
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
