"""The benchmark harness works: every scenario at a tiny size, through ``bench.run.run``.

No timing is asserted — figures on a shared test machine mean nothing — only that
each scenario ran on Keel and on its baseline and reported the figures the report
is made of, as non-negative numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.profiles import SCENARIOS
from bench.run import run

pytestmark = pytest.mark.e2e

#: The figures each scenario must report: paths into its result.
EXPECTED: dict[str, list[tuple[str, ...]]] = {
    "idle": [
        ("keel", "connections"),
        ("keel", "kib_per_connection"),
        ("keel", "idle_cpu_percent_per_bridge"),
        ("keel", "connect", "per_second"),
        ("baseline", "connections"),
        ("baseline", "kib_per_connection"),
        ("baseline", "idle_cpu_percent"),
    ],
    "fanout": [
        ("keel", "max_deliveries_per_second"),
        ("keel", "latency_at_10_msgs_ms", "p99"),
        ("keel", "steps"),
        ("baseline", "max_deliveries_per_second"),
        ("baseline", "latency_at_10_msgs_ms", "p99"),
    ],
    "chat": [
        ("keel", "sustained_msgs_per_second"),
        ("keel", "max_msgs_per_second"),
        ("keel", "steps"),
        ("baseline", "max_msgs_per_second"),
    ],
    "api": [
        ("keel", "postgresql", "msgs_per_second"),
        ("keel", "postgresql", "latency_ms", "p99"),
        ("keel", "sqlite", "msgs_per_second"),
        ("baseline", "msgs_per_second"),
    ],
    "webhooks": [
        ("keel", "burst", "events_per_second"),
        ("keel", "burst", "delivered"),
        ("keel", "steady", "latency_ms", "p99"),
        ("baseline", "events_per_second"),
    ],
    "resume": [
        ("keel", "all_caught_up_seconds"),
        ("keel", "caught_up"),
        ("keel", "memory", "bridge", "peak_mib"),
        ("baseline", "all_caught_up_seconds"),
        ("baseline", "caught_up"),
    ],
    "notifications": [
        ("keel", "fanout", "latency_ms", "p99"),
        ("keel", "fanout", "until_last_ms", "median"),
        ("keel", "small", "per_second"),
        ("keel", "email", "per_second"),
        ("keel", "push", "per_second"),
        ("baseline", "fanout", "latency_ms", "p99"),
        ("baseline", "small", "per_second"),
        ("baseline", "email", "per_second"),
        ("baseline", "push", "per_second"),
    ],
    "files": [
        *(
            ("keel", path, figure)
            for path in (
                "grpc_upload",
                "grpc_download",
                "tus_upload",
                "tus_upload_chunked",
                "url_put",
                "url_download",
            )
            for figure in ("mb_per_second", "rss_growth_mib")
        ),
        ("baseline", "put", "mb_per_second"),
        ("baseline", "get", "mb_per_second"),
        ("baseline", "get_chunked", "mb_per_second"),
    ],
}


def _numbers(value: Any) -> list[float]:
    """Every number inside ``value`` (dicts and lists walked)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def _get(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        assert isinstance(value, dict) and key in value, f"missing {'.'.join(path)}"
        value = value[key]
    return value


def test_every_scenario_runs_at_tiny_size(tmp_path: Path) -> None:
    md, out = tmp_path / "benchmarks.md", tmp_path / "benchmarks.json"
    report = run("smoke", out_md=md, out_json=out, log_dir=tmp_path / "logs")

    assert json.loads(out.read_text())["profile"] == "smoke"
    text = md.read_text()
    assert "## Machine" in text
    for key in ("cpu_model", "cpus", "memory_gib", "load_average_at_start"):
        assert key in report["machine"]
    assert set(report["scenarios"]) == set(SCENARIOS)
    for name, result in report["scenarios"].items():
        assert "error" not in result, f"{name} failed:\n{result['error']}"
        for key in ("title", "params", "keel", "baseline", "ratios", "targets"):
            assert key in result, f"{name}: no {key}"
        for path in EXPECTED[name]:
            _get(result, path)
        numbers = _numbers(result["keel"]) + _numbers(result["baseline"])
        assert numbers, name
        bad = [n for n in numbers if n < 0 or math.isnan(n)]
        assert not bad, f"{name}: negative or NaN figures {bad[:5]}"
        for ratio in result["ratios"].values():
            assert ratio is None or ratio >= 0
        assert f"## {result['title']}" in text
    # every connection of each WebSocket scenario was opened and subscribed, on both servers
    for name in ("idle", "fanout", "chat"):
        for side in ("keel", "baseline"):
            assert report["scenarios"][name][side]["connect"]["failed"] == 0, (name, side)
    assert report["scenarios"]["resume"]["keel"]["behind"] == 0
    assert report["scenarios"]["webhooks"]["keel"]["burst"]["bad_signatures"] == 0
    notified = report["scenarios"]["notifications"]["keel"]
    assert notified["fanout"]["connect"]["failed"] == 0
    assert notified["fanout"]["complete_rounds"] == notified["fanout"]["rounds"]
    for channel in ("email", "push"):
        assert notified[channel]["delivered"] == notified[channel]["sent"], channel
    # every transfer moved the whole file, on every path of Keel and of the baseline
    files = report["scenarios"]["files"]
    size = files["params"]["mib"] << 20
    for side in ("keel", "baseline"):
        for path, figures in files[side].items():
            assert figures["bytes"] == size, (side, path)
    assert files["keel"]["tus_upload"]["patches"] == 1
    assert files["keel"]["tus_upload_chunked"]["patches"] == files["params"]["mib"]
