"""Turn ``run.py --json`` output into an SVG bar chart, written by hand (no matplotlib).

Theory of operation
-------------------
The scenarios have different units (req/s, MiB/s, bytes per connection, ms), so one shared
axis would flatten all but the largest. The chart is small multiples instead: one panel per
scenario, each scaled to its own largest median, servers in the same order and colour in every
panel, the median printed above each bar. Only medians are drawn; the JSON keeps every round.
The SVG is plain text with fixed geometry, so it diffs well when committed under ``docs/``.

Usage::

    python tests/benchmarks/run.py --json /tmp/bench.json
    python tests/benchmarks/plot.py /tmp/bench.json -o docs/performance-bench.svg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_OUT = REPO_ROOT / "docs" / "performance-bench.svg"

# Colour-blind-safe palette (Okabe-Ito); ours first, in the strongest colour.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
PANEL_W, PANEL_H = 300, 210
COLUMNS = 3
MARGIN = 20
HEADER_H = 70  # title and legend
PLOT_TOP, PLOT_BOTTOM = 34, 30  # inside a panel: room for its title, and for the axis labels


def fmt(value: float, unit: str) -> str:
    """Short label for a bar: 12.3k, 1,234.5, 0.42."""
    if unit in ("ms",):
        return f"{value:.2f}"
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def text(
    x: float, y: float, body: str, size: int = 12, anchor: str = "middle", **attrs: str
) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
        f"{escape(body)}</text>"
    )


def panel(
    x0: float, y0: float, title: str, unit: str, values: list[float | None], colours: list[str]
) -> list[str]:
    """One scenario: a framed box, a title, one bar per server scaled to the panel's maximum."""
    out = [
        f'<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="#fafafa" '
        'stroke="#ddd"/>',
        text(x0 + PANEL_W / 2, y0 + 20, f"{title} [{unit}]", 13, font_weight="bold"),
    ]
    top = max((v for v in values if v is not None), default=0.0)
    base_y = y0 + PANEL_H - PLOT_BOTTOM
    height = PANEL_H - PLOT_TOP - PLOT_BOTTOM - 14  # 14: room for the value label
    slot = (PANEL_W - 20) / max(1, len(values))
    out.append(
        f'<line x1="{x0 + 10}" y1="{base_y}" x2="{x0 + PANEL_W - 10}" y2="{base_y}" stroke="#888"/>'
    )
    for i, (value, colour) in enumerate(zip(values, colours, strict=True)):
        left = x0 + 10 + i * slot + slot * 0.15
        width = slot * 0.7
        centre = left + width / 2
        if value is None:
            out.append(text(centre, base_y - 4, "n/a", 11, fill="#888"))
            continue
        bar = height * value / top if top > 0 else 0.0
        out.append(
            f'<rect x="{left:.1f}" y="{base_y - bar:.1f}" width="{width:.1f}" '
            f'height="{bar:.1f}" fill="{colour}"><title>{escape(fmt(value, unit))}</title></rect>'
        )
        out.append(text(centre, base_y - bar - 4, fmt(value, unit), 11))
    return out


def render(report: dict[str, Any]) -> str:
    servers: list[str] = report["servers"]
    metrics: list[dict[str, str]] = report.get("metrics") or [
        {"key": key, "title": key, "unit": ""} for key in next(iter(report["medians"].values()))
    ]
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(servers))]
    rows = (len(metrics) + COLUMNS - 1) // COLUMNS
    width = MARGIN * 2 + COLUMNS * PANEL_W + (COLUMNS - 1) * MARGIN
    height = HEADER_H + rows * (PANEL_H + MARGIN) + MARGIN
    meta = report.get("meta", {})
    subtitle = (
        f"median of {meta.get('rounds', '?')} round(s), {meta.get('duration_s', '?')} s each, "
        f"load generator {meta.get('loadgen', '?')}, {meta.get('cpus', '?')} CPUs, "
        f"idle scenario at {meta.get('idle_connections', '?')} connections; "
        "higher is better except B/conn and ms"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        text(MARGIN, 26, "evloop_httpd benchmark: per scenario and server", 16, "start",
             font_weight="bold"),
        text(MARGIN, 44, subtitle, 11, "start", fill="#555"),
    ]  # fmt: skip
    legend_x = MARGIN
    for name, colour in zip(servers, colours, strict=True):
        out.append(f'<rect x="{legend_x}" y="54" width="12" height="12" fill="{colour}"/>')
        out.append(text(legend_x + 16, 64, name, 12, "start"))
        legend_x += 24 + 8 * len(name)
    for index, metric in enumerate(metrics):
        x0 = MARGIN + (index % COLUMNS) * (PANEL_W + MARGIN)
        y0 = HEADER_H + (index // COLUMNS) * (PANEL_H + MARGIN)
        values = [report["medians"][s].get(metric["key"]) for s in servers]
        out.extend(panel(x0, y0, metric["title"], metric["unit"], values, colours))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render run.py --json output as an SVG chart.")
    parser.add_argument("json_path", type=Path, help="file written by run.py --json")
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="SVG to write")
    args = parser.parse_args(argv)
    report = json.loads(args.json_path.read_text())
    if not report.get("servers") or "medians" not in report:
        print(f"{args.json_path}: no medians to plot (did any server run?)", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
