"""A benchmark run's figures as SVG charts, drawn beside the tables of its report.

``figures(report)`` turns the report :mod:`bench.run` writes (the JSON of
``docs/benchmarks.json``) into :class:`Figure` values: for each scenario with steps
(``fanout``, ``chat``) the throughput achieved against the load offered and the latency
percentiles (p50, p99, p99.9) against the load offered, Keel beside the baseline; for the
scenarios with one figure per side (``idle``, ``api``, ``webhooks``, ``resume``,
``notifications``, ``files``) horizontal bars. :mod:`bench.report` writes them next to the
Markdown and links them from it.

The SVG is written by hand (no plotting library, so no dependency) and promises:

- the same report gives the same bytes (no dates, ids or random values; fixed rounding);
- 640 x 360, readable at that size, with a title, axes with ticks and units, a legend,
  and ``<title>``/``<desc>`` for screen readers (the description lists every value);
- Keel is blue and the baseline vermillion (Okabe-Ito colours, distinct for colour-blind
  readers); percentiles differ by dash and marker shape too, not by colour alone;
- each line series is one ``<polyline>`` with one point per step (``data-series`` names
  it), each bar one ``<rect>`` with ``data-series``;
- an axis becomes logarithmic when its positive values span more than a factor of 30.

``python -m bench.plots REPORT.json --out-dir DIR`` draws a saved report's figures again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

WIDTH: Final = 640
HEIGHT: Final = 360
KEEL_COLOUR: Final = "#0072B2"  # Okabe-Ito blue
BASELINE_COLOUR: Final = "#D55E00"  # Okabe-Ito vermillion
REFERENCE_COLOUR: Final = "#777777"
SERIES_COLOURS: Final = {"Keel": KEEL_COLOUR, "baseline": BASELINE_COLOUR}
#: Key in a latency summary, its label, its dash pattern and its marker.
PERCENTILES: Final = (
    ("p50", "p50", "", "circle"),
    ("p99", "p99", "7 4", "square"),
    ("p99_9", "p99.9", "2 3", "triangle"),
)
#: Positive values spanning more than this factor get a logarithmic axis.
LOG_SPAN: Final = 30.0
_FONT: Final = "DejaVu Sans, Helvetica, Arial, sans-serif"


@dataclass(frozen=True)
class Series:
    """One line: ``points`` are (x, y) in step order."""

    name: str
    points: tuple[tuple[float, float], ...]
    colour: str
    dash: str = ""
    marker: str = "circle"


@dataclass(frozen=True)
class Bar:
    """One bar: ``group`` is its label on the axis, ``series`` its legend entry."""

    group: str
    series: str
    value: float


@dataclass(frozen=True)
class Figure:
    """One chart of a scenario; written as ``<scenario>-<chart>.svg``."""

    scenario: str
    chart: str
    title: str
    svg: str

    @property
    def file_name(self) -> str:
        return f"{self.scenario}-{self.chart}.svg"


@dataclass(frozen=True)
class _Axis:
    label: str
    log: bool
    lo: float
    hi: float
    ticks: tuple[float, ...]

    def position(self, value: float, start: float, end: float) -> float:
        if self.log:
            share = (math.log10(value) - math.log10(self.lo)) / (
                math.log10(self.hi) - math.log10(self.lo)
            )
        else:
            share = (value - self.lo) / (self.hi - self.lo)
        return start + share * (end - start)


# --- numbers -------------------------------------------------------------------------


def _number(value: float) -> str:
    """A value for a reader: 252,464; 15.4; 0.425."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _tick(value: float) -> str:
    """A tick label: 200k, 1.5M, 0.1."""
    value = round(value, 9)
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _c(value: float) -> str:
    return f"{value:.1f}"


def wants_log(values: Sequence[float]) -> bool:
    """Whether ``values`` (all positive) span more than :data:`LOG_SPAN`."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def _axis(label: str, values: Sequence[float], *, log: bool) -> _Axis:
    if log:
        lo_exp = math.floor(math.log10(min(values)))
        hi_exp = max(math.ceil(math.log10(max(values))), lo_exp + 1)
        steps = (1, 2, 5) if hi_exp - lo_exp <= 3 else (1,)
        marks = [m * 10.0**e for e in range(lo_exp, hi_exp) for m in steps] + [10.0**hi_exp]
        # The axis spans from the last mark below the data to the first above it.
        lo = max(t for t in marks if t <= min(values) * (1 + 1e-9))
        hi = min(t for t in marks if t > lo and t >= max(values) * (1 - 1e-9))
        return _Axis(label, True, lo, hi, tuple(t for t in marks if lo <= t <= hi))
    hi = max([*values, 0.0]) or 1.0
    raw = hi / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    count = math.ceil(hi / step - 1e-9)
    return _Axis(label, False, 0.0, count * step, tuple(i * step for i in range(count + 1)))


# --- drawing -------------------------------------------------------------------------


def _open(title: str, desc: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="title desc" '
        f'font-family="{_FONT}" font-size="12">',
        f'<title id="title">{escape(title)}</title>',
        f'<desc id="desc">{escape(desc)}</desc>',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="16" y="24" font-size="15" font-weight="bold" fill="#111111">'
        f"{escape(title)}</text>",
    ]


def _marker(shape: str, x: float, y: float, colour: str, tip: str) -> str:
    if shape == "none":
        return ""
    tooltip = f"<title>{escape(tip)}</title>"
    if shape == "square":
        return (
            f'<rect x="{_c(x - 3.5)}" y="{_c(y - 3.5)}" width="7" height="7" '
            f'fill="{colour}">{tooltip}</rect>'
        )
    if shape == "triangle":
        return (
            f'<path d="M{_c(x)},{_c(y - 4.5)} L{_c(x + 4.5)},{_c(y + 3.5)} '
            f'L{_c(x - 4.5)},{_c(y + 3.5)} Z" fill="{colour}">{tooltip}</path>'
        )
    return f'<circle cx="{_c(x)}" cy="{_c(y)}" r="3.5" fill="{colour}">{tooltip}</circle>'


def _legend(entries: Sequence[tuple[str, str, str, str]], x: float, y: float) -> list[str]:
    """Legend rows of (name, colour, dash, marker); ``marker`` "bar" draws a swatch."""
    out = ['<g class="legend">']
    for i, (name, colour, dash, marker) in enumerate(entries):
        row = y + 20 * i
        if marker == "bar":
            out.append(
                f'<rect x="{_c(x)}" y="{_c(row - 6)}" width="22" height="12" fill="{colour}"/>'
            )
        else:
            dashes = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<line x1="{_c(x)}" y1="{_c(row)}" x2="{_c(x + 22)}" y2="{_c(row)}" '
                f'stroke="{colour}" stroke-width="2"{dashes}/>'
            )
            out.append(_marker(marker, x + 11, row, colour, name))
        out.append(f'<text x="{_c(x + 28)}" y="{_c(row + 4)}" fill="#111111">{escape(name)}</text>')
    return [*out, "</g>"]


def line_chart(
    *,
    title: str,
    x_label: str,
    x_unit: str,
    y_label: str,
    y_unit: str,
    series: Sequence[Series],
    x_log: bool | None = None,
    y_log: bool | None = None,
) -> str:
    """An SVG line chart of ``series``; an axis is logarithmic if asked or, when ``None``,
    if its values span more than :data:`LOG_SPAN`. Points that a log axis cannot show
    (zero or less) are left out."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x_log = wants_log(xs) if x_log is None else x_log
    y_log = wants_log(ys) if y_log is None else y_log
    shown = [
        Series(
            s.name,
            tuple(p for p in s.points if (not x_log or p[0] > 0) and (not y_log or p[1] > 0)),
            s.colour,
            s.dash,
            s.marker,
        )
        for s in series
    ]
    xs = [x for s in shown for x, _ in s.points] or [1.0]
    ys = [y for s in shown for _, y in s.points] or [1.0]
    x_axis = _axis(f"{x_label} ({x_unit})", xs, log=x_log)
    y_axis = _axis(f"{y_label} ({y_unit})", ys, log=y_log)
    left, right, top, bottom = 72.0, WIDTH - 150.0, 44.0, HEIGHT - 52.0
    desc = (
        f"{title}. x: {x_axis.label}{', log scale' if x_log else ''}; "
        f"y: {y_axis.label}{', log scale' if y_log else ''}. "
        + " ".join(
            f"{s.name}: "
            + (", ".join(f"{_number(x)} → {_number(y)}" for x, y in s.points) or "no data")
            + "."
            for s in shown
        )
    )
    out = _open(title, desc)
    out += _axes(x_axis, y_axis, left, right, top, bottom)
    for s in reversed(shown):  # the first series (Keel) is drawn last, on top
        coords = [
            (x_axis.position(x, left, right), y_axis.position(y, bottom, top)) for x, y in s.points
        ]
        dashes = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(f'<g class="series" data-series={quoteattr(s.name)}>')
        out.append(
            f'<polyline fill="none" stroke="{s.colour}" stroke-width="2"{dashes} '
            f'stroke-linejoin="round" points="{" ".join(f"{_c(x)},{_c(y)}" for x, y in coords)}"/>'
        )
        out += [
            _marker(
                s.marker,
                cx,
                cy,
                s.colour,
                f"{s.name}: {_number(x)} {x_unit} → {_number(y)} {y_unit}",
            )
            for (cx, cy), (x, y) in zip(coords, s.points, strict=True)
        ]
        out.append("</g>")
    out += _legend([(s.name, s.colour, s.dash, s.marker) for s in shown], WIDTH - 138, top + 8)
    return "\n".join([*out, "</svg>", ""])


def _axes(x: _Axis, y: _Axis, left: float, right: float, top: float, bottom: float) -> list[str]:
    out = ['<g class="grid" stroke="#dddddd" stroke-width="1">']
    out += [
        f'<line x1="{_c(left)}" y1="{_c(p)}" x2="{_c(right)}" y2="{_c(p)}"/>'
        for p in (y.position(t, bottom, top) for t in y.ticks)
    ]
    out += [
        f'<line x1="{_c(p)}" y1="{_c(top)}" x2="{_c(p)}" y2="{_c(bottom)}"/>'
        for p in (x.position(t, left, right) for t in x.ticks)
    ]
    out.append("</g>")
    out.append('<g class="ticks" fill="#333333">')
    out += [
        f'<text x="{_c(left - 6)}" y="{_c(y.position(t, bottom, top) + 4)}" '
        f'text-anchor="end">{_tick(t)}</text>'
        for t in y.ticks
    ]
    out += [
        f'<text x="{_c(x.position(t, left, right))}" y="{_c(bottom + 16)}" '
        f'text-anchor="middle">{_tick(t)}</text>'
        for t in x.ticks
    ]
    out.append("</g>")
    out.append(
        f'<path d="M{_c(left)},{_c(top)} V{_c(bottom)} H{_c(right)}" fill="none" '
        'stroke="#333333" stroke-width="1"/>'
    )
    out.append(_axis_label_x(x, (left + right) / 2, bottom + 38))
    out.append(
        f'<text class="axis-label" x="16" y="{_c((top + bottom) / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 16 {_c((top + bottom) / 2)})" fill="#111111">'
        f"{escape(y.label + (', log scale' if y.log else ''))}</text>"
    )
    return out


def _axis_label_x(x: _Axis, centre: float, baseline: float) -> str:
    return (
        f'<text class="axis-label" x="{_c(centre)}" y="{_c(baseline)}" text-anchor="middle" '
        f'fill="#111111">{escape(x.label + (", log scale" if x.log else ""))}</text>'
    )


def bar_chart(*, title: str, value_label: str, unit: str, bars: Sequence[Bar]) -> str:
    """An SVG chart of horizontal ``bars``, grouped by ``Bar.group`` in the order given;
    the value axis is logarithmic when the values span more than :data:`LOG_SPAN`."""
    values = [b.value for b in bars if b.value > 0] or [1.0]
    log = wants_log(values)
    shown = [b for b in bars if b.value > 0 or not log]
    axis = _axis(f"{value_label} ({unit})", values, log=log)
    groups = list(dict.fromkeys(b.group for b in shown))
    series = list(dict.fromkeys(b.series for b in shown))
    left, right, top, bottom = 200.0, WIDTH - 120.0, 44.0, HEIGHT - 52.0
    desc = (
        f"{title}. {axis.label}{', log scale' if log else ''}. "
        + "; ".join(f"{b.group}, {b.series}: {_number(b.value)} {unit}" for b in shown)
        + "."
    )
    out = _open(title, desc)
    out.append('<g class="grid" stroke="#dddddd" stroke-width="1">')
    out += [
        f'<line x1="{_c(p)}" y1="{_c(top)}" x2="{_c(p)}" y2="{_c(bottom)}"/>'
        for p in (axis.position(t, left, right) for t in axis.ticks)
    ]
    out += ["</g>", '<g class="ticks" fill="#333333">']
    out += [
        f'<text x="{_c(axis.position(t, left, right))}" y="{_c(bottom + 16)}" '
        f'text-anchor="middle">{_tick(t)}</text>'
        for t in axis.ticks
    ]
    out.append("</g>")
    band = (bottom - top) / max(len(groups), 1)
    for i, group in enumerate(groups):
        members = [b for b in shown if b.group == group]
        height = min(band * 0.75 / len(members), 26.0)
        first = top + i * band + (band - height * len(members)) / 2
        out.append(
            f'<text x="{_c(left - 8)}" y="{_c(top + (i + 0.5) * band + 4)}" text-anchor="end" '
            f'fill="#111111">{escape(group)}</text>'
        )
        for j, b in enumerate(members):
            y = first + j * height
            end = axis.position(b.value, left, right) if b.value > 0 or not log else left
            colour = SERIES_COLOURS.get(b.series, REFERENCE_COLOUR)
            out.append(
                f'<rect data-series={quoteattr(b.series)} x="{_c(left)}" y="{_c(y + 1)}" '
                f'width="{_c(max(end - left, 1.0))}" height="{_c(height - 2)}" fill="{colour}">'
                f"<title>{escape(f'{group}, {b.series}: {_number(b.value)} {unit}')}</title></rect>"
            )
            # The value sits after the bar, or inside its end where the bar is long.
            inside = end > right - 56
            out.append(
                f'<text x="{_c(end - 4 if inside else max(end, left) + 4)}" '
                f'y="{_c(y + height / 2 + 4)}" '
                + (
                    'text-anchor="end" fill="#ffffff" font-weight="bold">'
                    if inside
                    else 'fill="#111111">'
                )
                + f"{_number(b.value)}</text>"
            )
    out.append(
        f'<path d="M{_c(left)},{_c(top)} V{_c(bottom)} H{_c(right)}" fill="none" '
        'stroke="#333333" stroke-width="1"/>'
    )
    out.append(_axis_label_x(axis, (left + right) / 2, bottom + 38))
    out += _legend(
        [(s, SERIES_COLOURS.get(s, REFERENCE_COLOUR), "", "bar") for s in series],
        WIDTH - 100,
        top + 8,
    )
    return "\n".join([*out, "</svg>", ""])


# --- the figures of a report ---------------------------------------------------------


def _steps(result: dict[str, Any], side: str) -> list[dict[str, Any]]:
    return list((result.get(side) or {}).get("steps") or [])


def _stepped(
    name: str,
    result: dict[str, Any],
    *,
    offered: str,
    achieved: str,
    unit: str,
    achieved_label: str,
    latency_label: str,
) -> list[Figure]:
    """Throughput and latency per step, Keel beside the baseline."""
    title = result.get("title", name)
    sides = [
        (label, _steps(result, side), SERIES_COLOURS[label])
        for label, side in (("Keel", "keel"), ("baseline", "baseline"))
    ]
    sides = [side for side in sides if side[1]]
    if not sides:
        return []
    rates = sorted({float(s[offered]) for _, steps, _ in sides for s in steps})
    throughput = [
        Series(label, tuple((float(s[offered]), float(s[achieved])) for s in steps), colour)
        for label, steps, colour in sides
    ]
    ideal = Series("offered", tuple((r, r) for r in rates), REFERENCE_COLOUR, "4 4", "none")
    log = wants_log([*rates, *(y for s in throughput for _, y in s.points)])
    latency = [
        Series(
            f"{label} {pct_label}",
            tuple(
                (float(s[offered]), float(s["latency_ms"][key]))
                for s in steps
                if (s.get("latency_ms") or {}).get("count")
            ),
            colour,
            dash,
            marker,
        )
        for label, steps, colour in sides
        for key, pct_label, dash, marker in PERCENTILES
    ]
    figures = [
        Figure(
            name,
            "throughput",
            f"{title}: throughput vs offered load",
            line_chart(
                title=f"{title}: throughput vs offered load",
                x_label="offered load",
                x_unit=unit,
                y_label=achieved_label,
                y_unit=unit,
                series=[*throughput, ideal],
                x_log=log,
                y_log=log,
            ),
        )
    ]
    if any(s.points for s in latency):
        figures.append(
            Figure(
                name,
                "latency",
                f"{title}: latency percentiles vs offered load",
                line_chart(
                    title=f"{title}: latency percentiles vs offered load",
                    x_label="offered load",
                    x_unit=unit,
                    y_label=latency_label,
                    y_unit="ms",
                    series=latency,
                    x_log=log,
                ),
            )
        )
    return figures


def _fanout(name: str, r: dict[str, Any]) -> list[Figure]:
    return _stepped(
        name,
        r,
        offered="offered_deliveries_per_second",
        achieved="deliveries_per_second",
        unit="deliveries/s",
        achieved_label="delivered",
        latency_label="publish → deliver latency",
    )


def _chat(name: str, r: dict[str, Any]) -> list[Figure]:
    return _stepped(
        name,
        r,
        offered="rate",
        achieved="msgs_per_second",
        unit="msgs/s",
        achieved_label="sent and delivered",
        latency_label="send → deliver latency",
    )


def _bars(name: str, r: dict[str, Any], spec: _BarChart, bars: list[Bar]) -> Figure:
    title = f"{r.get('title', name)}: {spec.title}"
    svg = bar_chart(title=title, value_label=spec.value_label, unit=spec.unit, bars=bars)
    return Figure(name, spec.chart, title, svg)


@dataclass(frozen=True)
class _BarChart:
    """A bar chart of single figures: each bar is (label, series, path of keys to its value
    in the scenario's result)."""

    chart: str
    title: str
    value_label: str
    unit: str
    bars: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


def _value(result: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = result
    for key in path:
        value = value[key]
    return float(value)


_NOTIFICATION_KINDS: Final = (
    ("one send to many users", "fanout"),
    ("small sends", "small"),
    ("emails", "email"),
    ("Web Push", "push"),
)

#: The charts of the scenarios with one figure per side.
BAR_CHARTS: Final[dict[str, tuple[_BarChart, ...]]] = {
    "idle": (
        _BarChart(
            "memory",
            "memory per idle connection",
            "RSS growth per subscribed connection",
            "KiB",
            (
                ("Keel bridge", "Keel", ("keel", "kib_per_connection")),
                ("baseline", "baseline", ("baseline", "kib_per_connection")),
            ),
        ),
        _BarChart(
            "connect",
            "connect + auth + subscribe rate",
            "connections subscribed per second",
            "connections/s",
            (
                ("Keel bridge", "Keel", ("keel", "connect", "per_second")),
                ("baseline", "baseline", ("baseline", "connect", "per_second")),
            ),
        ),
    ),
    "api": (
        _BarChart(
            "throughput",
            "SendMessage throughput",
            "calls answered per second",
            "msgs/s",
            (
                ("Keel on PostgreSQL", "Keel", ("keel", "postgresql", "msgs_per_second")),
                ("Keel on SQLite (serve all)", "Keel", ("keel", "sqlite", "msgs_per_second")),
                ("grpc.aio, no work", "baseline", ("baseline", "msgs_per_second")),
            ),
        ),
    ),
    "webhooks": (
        _BarChart(
            "throughput",
            "deliveries from a backlog",
            "events delivered per second",
            "events/s",
            (
                ("Keel", "Keel", ("keel", "burst", "events_per_second")),
                ("aiohttp sender", "baseline", ("baseline", "events_per_second")),
            ),
        ),
    ),
    "resume": (
        _BarChart(
            "catch-up",
            "time until every client caught up (lower is better)",
            "time until all caught up",
            "s",
            (
                ("Keel (1 bridge)", "Keel", ("keel", "all_caught_up_seconds")),
                ("in-memory ring", "baseline", ("baseline", "all_caught_up_seconds")),
            ),
        ),
    ),
    "notifications": (
        _BarChart(
            "throughput",
            "notifications per second",
            "delivered per second",
            "notifications/s",
            tuple(
                (label, series, (side, kind, "per_second"))
                for label, kind in _NOTIFICATION_KINDS
                for series, side in (("Keel", "keel"), ("baseline", "baseline"))
            ),
        ),
    ),
}


def _bar_charts(name: str, r: dict[str, Any]) -> list[Figure]:
    return [
        _bars(
            name,
            r,
            spec,
            [Bar(label, series, _value(r, path)) for label, series, path in spec.bars],
        )
        for spec in BAR_CHARTS[name]
    ]


#: Short names of the file scenario's paths (its report uses longer ones).
FILE_PATHS: Final = {
    "grpc_upload": "gRPC UploadFile",
    "tus_upload": "tus, one PATCH",
    "tus_upload_chunked": "tus, {patch} MiB PATCHes",
    "url_put": "upload URL PUT",
    "put": "PUT (upload)",
    "grpc_put": "gRPC upload, grpc.aio",
    "grpc_download": "gRPC DownloadFile",
    "url_download": "signed URL GET",
    "get": "GET, sendfile",
    "get_chunked": "GET, 1 MiB reads",
    "grpc_get": "gRPC download, grpc.aio",
}


def _files(name: str, r: dict[str, Any]) -> list[Figure]:
    patch = r["params"].get("tus_patch_mib", "")
    bars = [
        Bar(label.format(patch=patch), series, side[key]["mb_per_second"])
        for key, label in FILE_PATHS.items()
        for series, side in (("Keel", r["keel"]), ("baseline", r["baseline"]))
        if key in side
    ]
    return [
        _bars(name, r, _BarChart("throughput", "MB/s per path", "throughput, median", "MB/s"), bars)
    ]


_BUILDERS: Final[dict[str, Callable[[str, dict[str, Any]], list[Figure]]]] = {
    "fanout": _fanout,
    "chat": _chat,
    "files": _files,
} | dict.fromkeys(BAR_CHARTS, _bar_charts)


def figures(report: dict[str, Any]) -> list[Figure]:
    """Every chart of ``report``, in the order of its scenarios.

    A scenario that failed, or whose figures lack a value a chart needs, has no chart
    (with a line on stderr): the report of a half-hour run is written all the same.
    """
    out: list[Figure] = []
    for name, result in report.get("scenarios", {}).items():
        builder = _BUILDERS.get(name)
        if builder is None or "error" in result:
            continue
        try:
            out += builder(name, result)
        except (KeyError, TypeError, ValueError) as exc:
            print(f"[bench] no charts for {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return out


def write_figures(report: dict[str, Any], out_dir: Path) -> list[Figure]:
    """Write ``report``'s charts into ``out_dir`` and return them.

    ``out_dir`` belongs to the report: other ``*.svg`` files in it (a scenario not run
    this time) are removed so that the directory holds what the Markdown links.
    """
    drawn = figures(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {f.file_name for f in drawn}
    for old in sorted(out_dir.glob("*.svg")):
        if old.name not in names:
            old.unlink()
    for figure in drawn:
        (out_dir / figure.file_name).write_text(figure.svg, encoding="utf-8")
    return drawn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__)
    parser.add_argument("report", type=Path, help="a report's JSON, e.g. docs/benchmarks.json")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: beside the JSON, named after it"
    )
    args = parser.parse_args(argv)
    out_dir = args.out_dir or args.report.with_suffix("")
    drawn = write_figures(json.loads(args.report.read_text()), out_dir)
    print(f"[bench] wrote {len(drawn)} charts into {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
