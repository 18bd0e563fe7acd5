"""Free TCP ports for the processes the benchmarks and the tests start.

Ports are handed out below the kernel's ephemeral range: a port from that range can be
taken, between choosing it and a process listening on it, as the source port of any
outgoing connection (database pools, gRPC, Redis) — which made a keel process fail at
start with "address already in use". Below it only listeners compete, and a bind checks
those; no port is handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = range(20_000, min(_ephemeral_start(), 32_768))
_handed_out: set[int] = set()


def free_port() -> int:
    for _ in range(1000):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {_PORTS.start} and {_PORTS.stop - 1}")
