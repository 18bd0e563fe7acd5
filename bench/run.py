"""Run Keel's benchmarks: ``python -m bench.run --profile quick|full|smoke [--scenario NAME]...``.

Starts a Keel cluster (tenant-service, gateway, bridges) on a fresh PostgreSQL
database and Redis, runs each scenario on Keel and on its baseline, and writes
``docs/benchmarks.md`` and ``docs/benchmarks.json`` (paths configurable).
:func:`run` is the same thing as a function, for the smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report as report_writer
from bench.cluster import BENCH_WS_ENV, KeelCluster
from bench.files import files
from bench.notifications import notifications
from bench.osstats import load_average, machine_description
from bench.profiles import PROFILES, SCENARIOS, params
from bench.scenarios import SCENARIO_FUNCTIONS as _CHAT_SCENARIOS
from bench.scenarios import Context

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_FUNCTIONS = _CHAT_SCENARIOS | {"notifications": notifications, "files": files}

#: The longest one scenario may take (Keel and baseline together), per profile.
SCENARIO_BUDGET = {"smoke": 90.0, "quick": 240.0, "full": 2400.0}


def run(
    profile: str = "quick",
    scenarios: Sequence[str] | None = None,
    *,
    out_md: Path | None = ROOT / "docs" / "benchmarks.md",
    out_json: Path | None = ROOT / "docs" / "benchmarks.json",
    log_dir: Path | None = None,
    log_level: str = "INFO",
    py_spy: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``scenarios`` (default: all) at ``profile`` sizes; write and return the report."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    names = list(scenarios or SCENARIOS)
    for name in names:
        if name not in SCENARIO_FUNCTIONS:
            raise ValueError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = log_dir or ROOT / "var" / "bench" / f"{profile}-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    started = time.monotonic()
    sizes = {name: params(profile, name) | (overrides or {}).get(name, {}) for name in names}
    results, setup = asyncio.run(_run(profile, sizes, log_dir, log_level, py_spy))
    load_end = load_average()
    cpus = machine["cpus"] or 1
    loaded = (
        machine["load_average_at_start"][0] > 0.25 * cpus
        or machine["other_cpu_busy_at_start"] > 0.15
        or load_end[0] > 1.5 * cpus
    )
    report: dict[str, Any] = {
        "profile": profile,
        "started_at": stamp,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "load_average_at_end": load_end,
        "loaded_machine": loaded,
        "bridge_env": " ".join(f"{k}={v}" for k, v in BENCH_WS_ENV.items()),
        "log_level": log_level,
        "log_dir": str(log_dir),
        "setup": setup,
        "scenarios": results,
    }
    if out_md is not None and out_json is not None:
        report_writer.write(report, out_md, out_json)
    return report


async def _run(
    profile: str,
    sizes: dict[str, dict[str, Any]],
    log_dir: Path,
    log_level: str,
    py_spy: Path | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = KeelCluster(log_dir / "keel", log_level=log_level)
    ctx = Context(
        profile=profile, log_dir=log_dir, cluster=cluster, log_level=log_level, py_spy=py_spy
    )
    results: dict[str, Any] = {}
    try:
        await cluster.start()
        for name, p in sizes.items():
            print(f"[bench] {name} ({profile}) ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(SCENARIO_BUDGET[profile]):
                    result = await SCENARIO_FUNCTIONS[name](ctx, dict(p))
            except Exception as exc:
                result = {
                    "title": name,
                    "params": p,
                    "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                }
            finally:
                await ctx.stop_helpers(list(ctx.helpers))
            result["seconds"] = round(time.monotonic() - t0, 1)
            results[name] = result
            print(
                f"[bench] {name} done in {result['seconds']} s"
                + (" (FAILED)" if "error" in result else ""),
                file=sys.stderr,
                flush=True,
            )
    finally:
        await ctx.stop_helpers(list(ctx.helpers))
        await cluster.close()
    return results, ctx.setup


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--profile", choices=list(PROFILES), default="quick")
    parser.add_argument(
        "--scenario", action="append", choices=list(SCENARIOS), help="repeatable; default all"
    )
    parser.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--out-json", type=Path, default=ROOT / "docs" / "benchmarks.json")
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"))
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="record the bridge with py-spy during the fan-out steps (raw collapsed stacks)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SCENARIO.KEY=VALUE",
        help="override one size, e.g. --set idle.conns_per_bridge=2000 (JSON values)",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        scenario, _, field = key.partition(".")
        if scenario not in SCENARIOS or not field or not value:
            parser.error(f"--set {item!r}: expected SCENARIO.KEY=VALUE")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        overrides.setdefault(scenario, {})[field] = parsed
    report = run(
        args.profile,
        args.scenario,
        out_md=args.out_md,
        out_json=args.out_json,
        log_dir=args.log_dir,
        log_level=args.log_level,
        py_spy=args.py_spy,
        overrides=overrides,
    )
    failed = [n for n, r in report["scenarios"].items() if "error" in r]
    print(f"[bench] wrote {args.out_md} and {args.out_json}", file=sys.stderr)
    for name in failed:
        print(f"[bench] {name} FAILED:\n{report['scenarios'][name]['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
