"""The sizes of each scenario in each profile: ``smoke`` (tiny, proves the harness works),
``quick`` (``make bench``, a few minutes) and ``full`` (``make bench-full``, the issue's sizes)."""

from __future__ import annotations

from typing import Any

SCENARIOS = ("idle", "fanout", "chat", "api", "webhooks", "resume", "notifications", "files")

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "idle": {"bridges": 1, "conns_per_bridge": 20, "idle_seconds": 0.5},
        "fanout": {"subscribers": 20, "rates": [10, 50], "step_seconds": 0.5},
        "chat": {"channels": 3, "members": 10, "rates": [30, 60], "step_seconds": 0.5},
        "api": {"channels": 4, "workers": 1, "concurrency": 4, "seconds": 0.5},
        "webhooks": {"steady_rate": 10, "steady_seconds": 0.5, "burst": 20},
        "resume": {"clients": 20, "missed": 20, "storm_concurrency": 50},
        "notifications": {
            "users": 20,
            "rounds": 2,
            "senders": 1,
            "small_concurrency": 4,
            "small_seconds": 0.5,
        },
        "files": {"mib": 4, "rounds": 1, "tus_patch_mib": 1},
    },
    "quick": {
        # idle_seconds covers one keepalive ping cycle (KEEL_WS_PING_INTERVAL, 20 s)
        "idle": {"bridges": 1, "conns_per_bridge": 5000, "idle_seconds": 20.0},
        "fanout": {"subscribers": 2000, "rates": [10, 50, 100, 200, 400], "step_seconds": 3.0},
        "chat": {
            "channels": 200,
            "members": 10,
            # 1,500: the target itself (issue 13), so the ladder says whether it holds there
            "rates": [50, 100, 200, 400, 1000, 1500, 2000, 3000],
            "step_seconds": 3.0,
        },
        "api": {"channels": 50, "workers": 2, "concurrency": 32, "seconds": 5.0},
        "webhooks": {"steady_rate": 20, "steady_seconds": 3.0, "burst": 1000},
        "resume": {"clients": 500, "missed": 500, "storm_concurrency": 200},
        # the fan-out size (1,000 users) is quick enough for every profile
        "notifications": {
            "users": 1000,
            "rounds": 5,
            "senders": 2,
            "small_concurrency": 32,
            "small_seconds": 5.0,
        },
        # one file of this size up and down every path, each round (medians reported)
        "files": {"mib": 256, "rounds": 3, "tus_patch_mib": 8},
    },
    "full": {
        "idle": {"bridges": 4, "conns_per_bridge": 15000, "idle_seconds": 60.0},
        "fanout": {"subscribers": 10000, "rates": [10, 20, 50, 100, 200], "step_seconds": 5.0},
        "chat": {
            "channels": 2000,
            "members": 10,
            "bridges": 2,
            "rates": [100, 200, 500, 1000, 2000, 3000, 4000, 6000],
            "step_seconds": 8.0,
        },
        "api": {"channels": 100, "workers": 2, "concurrency": 64, "seconds": 10.0},
        "webhooks": {"steady_rate": 50, "steady_seconds": 5.0, "burst": 5000},
        "resume": {"clients": 10000, "missed": 500, "storm_concurrency": 500},
        "notifications": {
            "users": 1000,
            "rounds": 20,
            "senders": 2,
            "small_concurrency": 64,
            "small_seconds": 10.0,
        },
        "files": {"mib": 1024, "rounds": 2, "tus_patch_mib": 8},
    },
}

#: Connections one load-generator process holds at most (each is one open file; a process
#: may hold 20,000).
CONNS_PER_WORKER = 8000


def params(profile: str, scenario: str) -> dict[str, Any]:
    return dict(PROFILES[profile][scenario])
