"""Prometheus metrics of every Keel process, served over HTTP at ``/metrics``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_HANDLED = Counter(
    "keel_grpc_server_handled_total",
    "RPCs completed, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_LATENCY = Histogram(
    "keel_grpc_server_handling_seconds",
    "Time to serve an RPC, by service and method.",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STREAM_DURATION = Histogram(
    "keel_grpc_server_stream_seconds",
    "How long server-streaming and bidirectional RPCs stay open, by service and method.",
    ["grpc_service", "grpc_method"],
    buckets=(0.1, 1, 10, 60, 600, 3600, 21600, 86400),
)
RPC_IN_FLIGHT = Gauge(
    "keel_grpc_server_in_flight", "RPCs being served now, by service.", ["grpc_service"]
)
SERVICE_SERVING = Gauge(
    "keel_service_serving", "1 while a service reports SERVING to health checks.", ["service"]
)
DEPENDENCY_UP = Gauge(
    "keel_dependency_up",
    "1 while the process's last health check reached a dependency"
    " (database, redis when configured, blob_store in the file service), else 0.",
    ["dependency"],
)


@dataclass
class MetricsEndpoint:
    """The running ``/metrics`` HTTP server."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(host: str, port: int) -> MetricsEndpoint:
    """Serve the default registry on ``http://host:port/metrics`` from a daemon thread."""
    server, thread = start_http_server(port, addr=host)
    return MetricsEndpoint(server, thread)
