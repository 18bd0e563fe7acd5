"""The benchmark charts (bench/plots.py) and how the report shows them (bench/report.py).

From a small synthetic report and from the committed docs/benchmarks*.json: every chart is
well-formed SVG with a title, a description, a legend naming its series and axes with
units; a step chart has one point per step; the same report draws the same bytes; the
Markdown links every chart written and every link resolves.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import plots, report

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SVG = "{http://www.w3.org/2000/svg}"
LINK = re.compile(r"!\[[^\]]+\]\(([^)]+\.svg)\)")
STEP_CHARTS = ("fanout", "chat")


def _latency(p50: float) -> dict[str, float]:
    return {"count": 100, "mean": p50, "p50": p50, "p90": 2 * p50, "p99": 3 * p50, "p99_9": 4 * p50}


def _fanout_steps(rates: list[int], ms_per_rate: float) -> list[dict[str, Any]]:
    return [
        {
            "rate": rate,
            "offered_deliveries_per_second": rate * 1000,
            "deliveries_per_second": min(rate * 1000, 150_000),
            "latency_ms": _latency(ms_per_rate * rate),
        }
        for rate in rates
    ]


def _chat_steps(rates: list[int], ms_per_rate: float) -> list[dict[str, Any]]:
    return [
        {"rate": rate, "msgs_per_second": rate * 0.99, "latency_ms": _latency(ms_per_rate * rate)}
        for rate in rates
    ]


def synthetic_report() -> dict[str, Any]:
    """Every scenario, with three Keel steps and four baseline steps where there are steps."""
    per_second = {"fanout": 6150.0, "small": 264.0, "email": 130.0, "push": 136.0}
    return {
        "scenarios": {
            "idle": {
                "title": "Idle connections",
                "keel": {"kib_per_connection": 18.7, "connect": {"per_second": 556.0}},
                "baseline": {"kib_per_connection": 17.8, "connect": {"per_second": 3504.0}},
            },
            "fanout": {
                "title": "Broadcast fan-out",
                "keel": {"steps": _fanout_steps([10, 50, 200], 2.0)},
                "baseline": {"steps": _fanout_steps([10, 50, 100, 200], 0.5)},
            },
            "chat": {
                "title": "Chat mix",
                "keel": {"steps": _chat_steps([50, 100, 400], 0.1)},
                "baseline": {"steps": _chat_steps([50, 100, 400, 3000], 0.001)},
            },
            "api": {
                "title": "Backend API",
                "keel": {
                    "postgresql": {"msgs_per_second": 600.0},
                    "sqlite": {"msgs_per_second": 1500.0},
                },
                "baseline": {"msgs_per_second": 5400.0},
            },
            "webhooks": {
                "title": "Webhooks",
                "keel": {"burst": {"events_per_second": 205.0}},
                "baseline": {"events_per_second": 8800.0},
            },
            "resume": {
                "title": "Resume storm",
                "keel": {"all_caught_up_seconds": 560.8},
                "baseline": {"all_caught_up_seconds": 16.1},
            },
            "notifications": {
                "title": "Notifications",
                "keel": {k: {"per_second": v} for k, v in per_second.items()},
                "baseline": {k: {"per_second": 20 * v} for k, v in per_second.items()},
            },
            "files": {
                "title": "Files",
                "params": {"tus_patch_mib": 8},
                "keel": {
                    name: {"mb_per_second": 100.0 + i}
                    for i, name in enumerate(
                        [
                            "grpc_upload",
                            "tus_upload",
                            "tus_upload_chunked",
                            "url_put",
                            "grpc_download",
                            "url_download",
                        ]
                    )
                },
                "baseline": {
                    name: {"mb_per_second": 1000.0} for name in ("put", "get", "get_chunked")
                },
            },
        }
    }


def _load(name: str) -> dict[str, Any]:
    return json.loads((DOCS / name).read_text())  # type: ignore[no-any-return]


def _quick() -> dict[str, Any]:
    return _load("benchmarks.json")


def _full() -> dict[str, Any]:
    return _load("benchmarks-full.json")


SOURCES: dict[str, Callable[[], dict[str, Any]]] = {
    "synthetic": synthetic_report,
    "docs/benchmarks.json": _quick,
    "docs/benchmarks-full.json": _full,
}


def _by_name(source: dict[str, Any]) -> dict[str, ET.Element]:
    return {f.file_name: ET.fromstring(f.svg) for f in plots.figures(source)}


def _series_points(svg: ET.Element) -> dict[str, int]:
    return {
        g.attrib["data-series"]: len(g.find(f"{SVG}polyline").attrib["points"].split())  # type: ignore[union-attr]
        for g in svg.iter(f"{SVG}g")
        if "data-series" in g.attrib
    }


def _legend(svg: ET.Element) -> set[str]:
    legend = next(g for g in svg.iter(f"{SVG}g") if g.attrib.get("class") == "legend")
    return {t.text or "" for t in legend.iter(f"{SVG}text")}


def test_the_synthetic_report_gets_every_chart() -> None:
    assert set(_by_name(synthetic_report())) == {
        "idle-memory.svg",
        "idle-connect.svg",
        "fanout-throughput.svg",
        "fanout-latency.svg",
        "chat-throughput.svg",
        "chat-latency.svg",
        "api-throughput.svg",
        "webhooks-throughput.svg",
        "resume-catch-up.svg",
        "notifications-throughput.svg",
        "files-throughput.svg",
    }


@pytest.mark.parametrize("source", SOURCES)
def test_every_chart_is_an_accessible_640x360_svg(source: str) -> None:
    charts = _by_name(SOURCES[source]())
    assert charts
    for name, svg in charts.items():
        assert svg.tag == f"{SVG}svg", name
        assert (svg.attrib["width"], svg.attrib["height"]) == ("640", "360"), name
        assert svg.attrib["role"] == "img"
        title, desc = svg.find(f"{SVG}title"), svg.find(f"{SVG}desc")
        assert title is not None and title.text, name
        assert desc is not None and desc.text and len(desc.text) > len(title.text), name


@pytest.mark.parametrize("source", SOURCES)
def test_every_series_is_named_in_the_legend_and_every_axis_has_a_unit(source: str) -> None:
    for name, svg in _by_name(SOURCES[source]()).items():
        named = {e.attrib["data-series"] for e in svg.iter() if "data-series" in e.attrib}
        assert named and named <= _legend(svg), name
        labels = [
            t.text or "" for t in svg.iter(f"{SVG}text") if t.attrib.get("class") == "axis-label"
        ]
        assert labels and all(re.search(r"\(\S.*\)", label) for label in labels), (name, labels)


@pytest.mark.parametrize("source", SOURCES)
def test_step_charts_draw_one_point_per_step_for_keel_and_the_baseline(source: str) -> None:
    data = SOURCES[source]()
    charts = _by_name(data)
    for scenario in STEP_CHARTS:
        result = data["scenarios"].get(scenario)
        if result is None:
            continue
        steps = {"Keel": len(result["keel"]["steps"]), "baseline": len(result["baseline"]["steps"])}
        throughput = _series_points(charts[f"{scenario}-throughput.svg"])
        assert {k: throughput[k] for k in steps} == steps
        latency = _series_points(charts[f"{scenario}-latency.svg"])
        assert latency == {
            f"{side} {pct}": count
            for side, count in steps.items()
            for pct in ("p50", "p99", "p99.9")
        }


def test_bar_charts_draw_one_bar_per_figure_with_its_value() -> None:
    charts = _by_name(synthetic_report())
    bars = [
        r for r in charts["files-throughput.svg"].iter(f"{SVG}rect") if "data-series" in r.attrib
    ]
    assert [b.attrib["data-series"] for b in bars] == ["Keel"] * 4 + ["baseline"] + ["Keel"] * 2 + [
        "baseline"
    ] * 2
    memory = charts["idle-memory.svg"]
    texts = {t.text for t in memory.iter(f"{SVG}text")}
    assert {"18.7", "17.8", "Keel bridge", "baseline"} <= texts


def test_latency_spanning_decades_is_drawn_on_a_log_scale_and_narrow_throughput_is_not() -> None:
    charts = _by_name(synthetic_report())

    def y_label(svg: ET.Element) -> str:
        return next(
            t.text or ""
            for t in svg.iter(f"{SVG}text")
            if "rotate" in t.attrib.get("transform", "")
        )

    assert y_label(charts["chat-latency.svg"]).endswith("log scale")
    assert not y_label(charts["fanout-throughput.svg"]).endswith("log scale")


def test_the_same_report_draws_the_same_bytes() -> None:
    data = _load("benchmarks.json")
    first = [(f.file_name, f.svg) for f in plots.figures(data)]
    again = [
        (f.file_name, f.svg) for f in plots.figures(json.loads(json.dumps(copy.deepcopy(data))))
    ]
    assert first == again


def test_a_failed_or_incomplete_scenario_has_no_chart_and_the_others_are_drawn() -> None:
    data = synthetic_report()
    data["scenarios"]["fanout"] = {"title": "Broadcast fan-out", "error": "TimeoutError"}
    del data["scenarios"]["api"]["keel"]["sqlite"]
    names = set(_by_name(data))
    assert not any(n.startswith(("fanout-", "api-")) for n in names)
    assert "chat-latency.svg" in names


def _links(md: Path) -> list[Path]:
    return [md.parent / link for link in LINK.findall(md.read_text())]


def test_the_report_links_every_chart_it_writes_beside_the_markdown(tmp_path: Path) -> None:
    data = _load("benchmarks.json")
    md, out = tmp_path / "out" / "benchmarks.md", tmp_path / "out" / "benchmarks.json"
    report.write(data, md, out)
    written = sorted((tmp_path / "out" / "benchmarks").glob("*.svg"))
    assert written and sorted(_links(md)) == written
    assert len(written) == len(plots.figures(data))

    # A run of one scenario into the same place leaves only that scenario's charts.
    data["scenarios"] = {"fanout": data["scenarios"]["fanout"]}
    report.write(data, md, out)
    assert sorted(p.name for p in (tmp_path / "out" / "benchmarks").glob("*.svg")) == [
        "fanout-latency.svg",
        "fanout-throughput.svg",
    ]
    assert all(p.exists() for p in _links(md))


def test_a_chart_sits_after_its_own_scenarios_tables(tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    report.write(_load("benchmarks.json"), md, tmp_path / "benchmarks.json")
    text = md.read_text()
    for name, title in (("fanout", "## Broadcast fan-out"), ("chat", "## Chat mix")):
        section = text[text.index(title) :]
        section = section[: section.index("\n## ", 1)]
        assert f"(benchmarks/{name}-throughput.svg)" in section
        assert f"(benchmarks/{name}-latency.svg)" in section


@pytest.mark.parametrize("stem", ["benchmarks", "benchmarks-full"])
def test_the_committed_reports_show_their_current_charts(stem: str) -> None:
    md = DOCS / f"{stem}.md"
    charts = {f.file_name: f.svg for f in plots.figures(_load(f"{stem}.json"))}
    linked = _links(md)
    assert sorted(p.name for p in linked) == sorted(charts)
    for path in linked:
        assert path.parent == DOCS / stem
        assert path.read_text() == charts[path.name], f"{path} is not drawn from {stem}.json"
