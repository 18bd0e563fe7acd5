"""Writing a run's results: ``docs/benchmarks.json`` (every figure), ``docs/benchmarks.md``
and its charts (``docs/benchmarks/*.svg``, drawn by :mod:`bench.plots`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import plots


def write(report: dict[str, Any], md_path: Path, json_path: Path) -> None:
    """Write the JSON, the charts into :func:`chart_dir` of ``md_path``, and the Markdown
    that shows each chart beside its scenario's tables."""
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    _write_markdown(report, md_path, json_path.name)


def chart_dir(md_path: Path) -> Path:
    """Where the charts of the report ``md_path`` go: beside it, named after it
    (``docs/benchmarks.md`` → ``docs/benchmarks/``, ``var/bench/files.md`` →
    ``var/bench/files/``). The directory is the report's own (see
    :func:`bench.plots.write_figures`)."""
    if md_path.suffix:
        return md_path.with_suffix("")
    return md_path.with_name(md_path.name + "-charts")


def _write_markdown(report: dict[str, Any], md_path: Path, json_name: str) -> None:
    directory = chart_dir(md_path)
    drawn = plots.write_figures(report, directory)
    md_path.write_text(markdown(report, json_name, figures=drawn, figure_dir=directory.name))


def _n(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _met(value: Any) -> str:
    return {True: "**met**", False: "**not met**", None: "not measured at this size"}[value]


def _lat(summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("count"):
        return "—"
    return f"{_n(summary['p50'], 2)} / {_n(summary['p99'], 2)} / {_n(summary['p99_9'], 2)}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def markdown(
    report: dict[str, Any],
    json_name: str,
    *,
    figures: Sequence[plots.Figure] = (),
    figure_dir: str = "",
) -> str:
    """The Markdown of ``report``; ``figures`` (files in ``figure_dir``, relative to the
    Markdown) are shown after their scenario's tables."""
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Profile **{report['profile']}**, run {report['started_at']} "
        f"({_n(report['seconds'], 0)} s). Every figure below, and more, is in "
        f"[`{json_name}`]({json_name}). Reproduce with `make bench` (quick profile) or "
        "`make bench-full` (the issue's sizes); the harness is in `bench/` "
        "(see `bench/README.md`). How the hot paths work, where the time goes and why a "
        "target is not met: [performance.md](performance.md).",
        "",
    ]
    if report.get("loaded_machine"):
        lines += [
            "> **These figures come from a shared, loaded machine.** Other work was running "
            f"during the run (load average {m['load_average_at_start']} at the start, "
            f"{report['load_average_at_end']} at the end, on {m['cpus']} CPUs; "
            f"{_n(100 * m['other_cpu_busy_at_start'], 0)} % of all CPU busy in the one-second "
            "sample taken just before it). "
            "Load generator, Keel and the baselines also share those CPUs with each other. "
            "Read the ratios to the baseline (measured minutes apart under the same "
            "conditions) rather than the absolute numbers, and rerun on a quiet machine "
            "before quoting them.",
            "",
        ]
    lines += [
        "## Machine",
        "",
        *_table(
            ["", ""],
            [
                ["CPU", f"{m['cpu_model']} x {m['cpus']}"],
                ["memory", f"{m['memory_gib']} GiB"],
                ["OS / kernel", f"{m['os']} / {m['kernel']}"],
                ["Python", m["python"]],
                ["packages", ", ".join(f"{k} {v}" for k, v in m["packages"].items())],
                ["PostgreSQL / Redis", f"{m['postgresql']} / {m['redis']}"],
                ["open files per process", m["open_files_limit"]],
                [
                    "load average at start / end",
                    f"{m['load_average_at_start']} / {report['load_average_at_end']}",
                ],
            ],
        ),
        "## How it measures",
        "",
        "- **Keel** runs as its real processes (`keel serve tenant-service`, `gateway`, "
        "`bridge`; `keel serve all` for SQLite), on a fresh PostgreSQL database and Redis, "
        f"with the benchmark limits `{report['bridge_env']}` and log level "
        f"{report['log_level']}. The tenant has `chat:*` and `upload:*` (no presence "
        "scope, so presence events are not part of the figures).",
        "- **Load** comes from separate processes on uvloop (`bench/loadgen.py`), each "
        "holding up to 8,000 WebSocket connections from a loopback source address of its own "
        "(127.0.0.2, 127.0.0.3, …), speaking `keel.v1` (auth frame with a client token from "
        "`IssueClientToken`, subscribe, send), and from gRPC client processes "
        "(`bench/grpcload.py`).",
        "- **Memory and CPU** are the kernel's: RSS (`VmRSS`) and user+system CPU time of "
        "each server process from `/proc`. CPU % is of one core.",
        "- **Latency** is receive time - send time carried in the message, on the same "
        "host clock (`CLOCK_MONOTONIC`), recorded in log-linear histograms (`bench/hdr.py`, "
        "< 1 % error). Shown as p50 / p99 / p99.9 in milliseconds.",
        "- **Baseline**: each scenario also runs the least a server can do, in the same "
        "invocation: `bench/baseline_server.py` on the same WebSocket library "
        "(websockets) and event loop as Keel's processes (asyncio's default loop), which "
        "accepts connections without auth and writes one pre-encoded frame per message "
        "to every subscriber — no auth, no persistence, no gRPC (a minimal grpc.aio "
        "SendMessage for the API scenario; a minimal aiohttp sender for webhooks). "
        "Ratios are Keel ÷ baseline.",
        "",
    ]
    setup = report.get("setup") or {}
    if setup.get("client_token_seconds"):
        issued, seconds = setup["client_tokens_issued"], setup["client_token_seconds"]
        lines += [
            f"Set-up: {_n(issued)} users and client tokens issued through `IssueClientToken` "
            f"in {_n(seconds, 1)} s ({_n(issued / seconds, 0)}/s, 200 calls in flight), shared "
            "by the scenarios.",
            "",
        ]
    lines += ["## Targets", ""]
    rows = []
    for name, result in report["scenarios"].items():
        for t in result.get("targets", []):
            rows.append(
                [
                    result.get("title", name),
                    t["name"],
                    t["target"],
                    _n(t["value"]),
                    _met(t["met"]) + (f" ({t['note']})" if t.get("note") else ""),
                ]
            )
    lines += _table(["scenario", "figure", "target", "measured", "result"], rows)

    for name, result in report["scenarios"].items():
        lines += [f"## {result.get('title', name)}", ""]
        if "error" in result:
            lines += ["The scenario failed:", "", "```", result["error"][-3000:], "```", ""]
            continue
        lines += [
            "Parameters: "
            + ", ".join(
                f"{k} = {_n(v) if not isinstance(v, list) else v}"
                for k, v in result["params"].items()
            )
            + f". Took {_n(result.get('seconds'), 0)} s.",
            "",
        ]
        writer = _SECTIONS.get(name)
        if writer is not None:
            lines += writer(result)
        charts = [f for f in figures if f.scenario == name]
        if charts:
            lines += [" ".join(f"![{f.title}]({figure_dir}/{f.file_name})" for f in charts), ""]
        if result.get("ratios"):
            lines += [
                "Ratios to the baseline: "
                + ", ".join(
                    f"{k.replace('_', ' ')} {_ratio(v)}" for k, v in result["ratios"].items()
                )
                + ".",
                "",
            ]
        for note in result.get("notes", []):
            lines += [f"- {note}"]
        if result.get("notes"):
            lines.append("")
    if report.get("findings"):
        lines += ["## Findings", ""] + [f"- {f}" for f in report["findings"]] + [""]
    return "\n".join(lines)


def _idle(r: dict[str, Any]) -> list[str]:
    k, b = r["keel"], r["baseline"]
    rows = [
        ["connections held", _n(k["connections"]), _n(b["connections"])],
        [
            "RSS per connection (KiB)",
            _n(k["kib_per_connection"], 2),
            _n(b["kib_per_connection"], 2),
        ],
        [
            "idle CPU % (per server process)",
            _n(k["idle_cpu_percent_per_bridge"], 2),
            _n(b["idle_cpu_percent"], 2),
        ],
        [
            "connect + auth + subscribe, per second",
            _n(k["connect"]["per_second"]),
            _n(b["connect"]["per_second"]),
        ],
        [
            "connect → subscribed p50 / p99 / p99.9 (ms)",
            _lat(k["connect"]["connect_subscribe_ms"]),
            _lat(b["connect"]["connect_subscribe_ms"]),
        ],
        ["failed connections", _n(k["connect"]["failed"]), _n(b["connect"]["failed"])],
    ]
    out = _table(["", "Keel bridge", "baseline"], rows)
    out += _table(
        ["bridge", "connections", "RSS before (MiB)", "RSS after (MiB)", "KiB/conn", "idle CPU %"],
        [
            [
                i,
                _n(x["connections"]),
                _n(x["rss_before_mib"]),
                _n(x["rss_after_mib"]),
                _n(x["kib_per_connection"], 2),
                _n(x["idle_cpu_percent"], 2),
            ]
            for i, x in enumerate(k["bridges"])
        ],
    )
    out += [
        f"Gateway while idle: {_n(k['gateway']['cpu_percent'], 2)} % CPU, "
        f"{_n(k['gateway']['rss_mib'])} MiB RSS.",
        "",
    ]
    return out


def _steps_fanout(steps: list[dict[str, Any]], server: str) -> list[str]:
    return _table(
        [
            "msg/s",
            "offered deliveries/s",
            "delivered/s",
            "completion",
            "p50 / p99 / p99.9 ms",
            f"{server} CPU %",
            "machine CPU %",
        ],
        [
            [
                _n(s["rate"]),
                _n(s["offered_deliveries_per_second"]),
                _n(s["deliveries_per_second"]),
                _n(s["completion"], 3),
                _lat(s["latency_ms"]),
                _n(s["cpu"][server]["cpu_percent"]),
                _n(s["cpu"]["machine"]["cpu_percent"]),
            ]
            for s in steps
        ],
    )


def _fanout(r: dict[str, Any]) -> list[str]:
    k, b = r["keel"], r["baseline"]
    rows = [
        [
            "max deliveries/s",
            _n(k["max_deliveries_per_second"]),
            _n(b["max_deliveries_per_second"]),
        ],
        [
            "deliveries per server CPU-second",
            _n(k["deliveries_per_cpu_second"]),
            _n(b["deliveries_per_cpu_second"]),
        ],
        [
            "latency at 10 msg/s p50 / p99 / p99.9 (ms)",
            _lat(k["latency_at_10_msgs_ms"]),
            _lat(b["latency_at_10_msgs_ms"]),
        ],
        [
            f"latency at {k['reference_step']['rate']} msg/s "
            f"({_n(k['reference_step']['offered_deliveries_per_second'])} deliveries/s offered)",
            _lat(k["reference_step"]["latency_ms"]),
            _lat(b["reference_step"]["latency_ms"]),
        ],
    ]
    out = _table(["", "Keel (1 bridge)", "baseline"], rows)
    out += [
        "Keel, step by step (latency: gRPC SendMessage → PostgreSQL → bus → gateway → "
        "bridge → socket):",
        "",
    ]
    out += _steps_fanout(k["steps"], "bridge")
    out += ["Baseline, step by step:", ""]
    out += _steps_fanout(b["steps"], "baseline")
    return out


def _steps_chat(steps: list[dict[str, Any]], servers: list[str]) -> list[str]:
    return _table(
        [
            "offered msg/s",
            "acked msg/s",
            "completion",
            "send→deliver p50 / p99 / p99.9 ms",
            "send→ack p50 / p99 ms",
            *[f"{s} CPU %" for s in servers],
        ],
        [
            [
                _n(s["rate"]),
                _n(s["msgs_per_second"]),
                _n(s["completion"], 3),
                _lat(s["latency_ms"]),
                (
                    f"{_n(s['ack_latency_ms']['p50'], 2)} / {_n(s['ack_latency_ms']['p99'], 2)}"
                    if s["ack_latency_ms"]["count"]
                    else "—"
                ),
                *[_n(s["cpu"][x]["cpu_percent"]) for x in servers],
            ]
            for s in steps
        ],
    )


def _chat(r: dict[str, Any]) -> list[str]:
    k, b = r["keel"], r["baseline"]
    rows = [
        [
            "sustained msg/s with p99 ≤ 50 ms",
            _n(k["sustained_msgs_per_second"]),
            _n(b["sustained_msgs_per_second"]),
        ],
        ["max msg/s reached", _n(k["max_msgs_per_second"]), _n(b["max_msgs_per_second"])],
        [
            "latency at that max p50 / p99 / p99.9 (ms)",
            _lat(k["latency_at_max_ms"]),
            _lat(b["latency_at_max_ms"]),
        ],
    ]
    out = _table(["", "Keel", "baseline"], rows)
    servers = [x for x in k["steps"][0]["cpu"] if x.startswith("bridge")] + ["gateway", "machine"]
    out += [
        "Keel, step by step (each message: WebSocket send → bridge → gateway → "
        "PostgreSQL → bus → bridge → the 9 other members):",
        "",
    ]
    out += _steps_chat(k["steps"], servers)
    out += ["Baseline, step by step:", ""]
    out += _steps_chat(b["steps"], ["baseline", "machine"])
    return out


def _api(r: dict[str, Any]) -> list[str]:
    k, b = r["keel"], r["baseline"]
    rows = []
    for label, x in (
        ("Keel on PostgreSQL", k["postgresql"]),
        ("Keel on SQLite (serve all)", k["sqlite"]),
        ("baseline (grpc.aio, no work)", b),
    ):
        cpu = ", ".join(f"{n} {_n(v['cpu_percent'])} %" for n, v in x["cpu"].items())
        rows.append(
            [
                label,
                _n(x["msgs_per_second"]),
                _lat(x["latency_ms"]),
                _n(sum(x["errors"].values())),
                cpu,
            ]
        )
    return _table(["server", "msgs/s", "p50 / p99 / p99.9 ms", "errors", "CPU"], rows)


def _webhooks(r: dict[str, Any]) -> list[str]:
    k, b = r["keel"], r["baseline"]
    rows = [
        [
            "events/s delivered (backlog of the burst)",
            _n(k["burst"]["events_per_second"]),
            _n(b["events_per_second"]),
        ],
        [
            "delivered / sent",
            f"{_n(k['burst']['delivered'])} / {_n(k['burst']['events'])}",
            f"{_n(b['delivered'])} / {_n(b['events'])}",
        ],
        ["bad signatures", _n(k["burst"]["bad_signatures"]), _n(b["bad_signatures"])],
        [
            f"latency at a steady {k['steady']['rate']} events/s p50 / p99 / p99.9 (ms)",
            _lat(k["steady"]["latency_ms"]),
            "—",
        ],
        [
            "latency during the burst p50 / p99 / p99.9 (ms)",
            _lat(k["burst"]["latency_ms"]),
            _lat(b["latency_ms"]),
        ],
    ]
    return _table(["", "Keel", "baseline"], rows)


def _resume(r: dict[str, Any]) -> list[str]:
    k, b = r["keel"], r["baseline"]
    kb, bb = k["memory"]["bridge"], b["memory"]["baseline"]
    rows = [
        [
            "clients / missed messages",
            f"{_n(r['params']['clients'])} / {_n(k['missed'])}",
            f"{_n(r['params']['clients'])} / {_n(b['missed'])}",
        ],
        [
            "time until all caught up (s)",
            _n(k["all_caught_up_seconds"], 2),
            _n(b["all_caught_up_seconds"], 2),
        ],
        [
            "per-client catch-up p50 / p99 / p99.9 (ms)",
            _lat(k["catchup_ms"]),
            _lat(b["catchup_ms"]),
        ],
        [
            "caught up / behind / failed",
            f"{_n(k['caught_up'])} / {_n(k['behind'])} / {_n(k['failed'])}",
            f"{_n(b['caught_up'])} / {_n(b['behind'])} / {_n(b['failed'])}",
        ],
        [
            "server RSS before → peak (MiB)",
            f"{_n(kb['before_mib'])} → {_n(kb['peak_mib'])}",
            f"{_n(bb['before_mib'])} → {_n(bb['peak_mib'])}",
        ],
        [
            "gaps / duplicates seen",
            f"{_n(k['gaps'])} / {_n(k['dups'])}",
            f"{_n(b['gaps'])} / {_n(b['dups'])}",
        ],
    ]
    out = _table(["", "Keel (1 bridge)", "baseline"], rows)
    g = k["memory"].get("gateway")
    if g:
        out += [
            f"Gateway during the storm: RSS {_n(g['before_mib'])} → {_n(g['peak_mib'])} MiB, "
            f"{_n(k['cpu_seconds'].get('gateway'), 2)} CPU-seconds; bridge "
            f"{_n(k['cpu_seconds'].get('bridge'), 2)} CPU-seconds.",
            "",
        ]
    return out


def _notifications(r: dict[str, Any]) -> list[str]:
    from bench.notifications import report_section  # the scenario writes its own section

    return report_section(r)


def _files(r: dict[str, Any]) -> list[str]:
    from bench.files import report_section  # the scenario writes its own section

    return report_section(r)


def main(argv: list[str]) -> int:
    """``python -m bench.report JSON MD``: render a saved report and its charts again."""
    if len(argv) != 2:
        print("usage: python -m bench.report benchmarks.json benchmarks.md")
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    _write_markdown(json.loads(source.read_text()), target, source.name)
    return 0


_SECTIONS = {
    "idle": _idle,
    "fanout": _fanout,
    "chat": _chat,
    "api": _api,
    "webhooks": _webhooks,
    "resume": _resume,
    "notifications": _notifications,
    "files": _files,
}


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
