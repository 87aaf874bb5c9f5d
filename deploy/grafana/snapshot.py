"""Render the dashboard's panels from Prometheus ``query_range`` results into one PNG.

Not Grafana: a matplotlib picture of the same PromQL (``dashboard.PANELS``) over real data, for
the README. ``tests/integration/test_observability.py`` produces the data (serve + a simulated
plant + a real Prometheus) and calls :func:`render` when ``PLANTWATCH_DASHBOARD_PNG`` names an
output file::

    PLANTWATCH_DASHBOARD_PNG=deploy/grafana/dashboard.png \\
        .venv/bin/pytest tests/integration/test_observability.py
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: Per panel title, per target: Prometheus ``data.result`` lists (matrix or vector).
Results = Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]


def _legend(template: str, metric: Mapping[str, str]) -> str:
    out = template or ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__")
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def render(panels: Sequence[Any], results: Results, out: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 2.6), squeeze=False)
    fig.patch.set_facecolor("#111217")
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_facecolor("#181b1f")
        ax.set_title(panel.title, color="#d8d9da", fontsize=8.5, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=6.5)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        per_target = results.get(panel.title, [])
        if panel.kind in ("stat", "table"):
            lines = []
            for target, result in zip(panel.targets, per_target, strict=False):
                for item in result[:6]:
                    value = item["value"][1] if "value" in item else item["values"][-1][1]
                    lines.append(f"{_legend(target.legend, item['metric'])}: {float(value):.4g}")
            ax.text(
                0.03,
                0.95,
                "\n".join(lines) or "no data",
                color="#73bf69",
                fontsize=16 if len(lines) == 1 and len(lines[0]) < 18 else 6.5,
                va="top",
                transform=ax.transAxes,
                family="monospace",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for target, result in zip(panel.targets, per_target, strict=False):
            for item in result[:12]:
                values = item.get("values", [])
                xs = [datetime.fromtimestamp(float(t), tz=UTC) for t, _ in values]
                ys = [float(v) for _, v in values]
                label = _legend(target.legend, item["metric"])
                dashed = label == "threshold"
                ax.plot(
                    xs,
                    ys,
                    linewidth=1.6 if dashed else 1.0,
                    linestyle="--" if dashed else "-",
                    color="#f2495c" if dashed else None,
                    label=label[:28],
                    drawstyle="steps-post" if panel.kind == "bars" else "default",
                )
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=4))  # type: ignore[no-untyped-call]
        if panel.unit == "s":
            ax.set_ylabel("s", color="#8e8e8e", fontsize=6.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(
                fontsize=5.5,
                loc="upper left",
                facecolor="#181b1f",
                labelcolor="#d8d9da",
                framealpha=0.6,
                ncol=2,
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, color="#d8d9da", fontsize=11, x=0.01, ha="left")
    fig.subplots_adjust(left=0.035, right=0.99, bottom=0.05, top=0.93, hspace=0.5, wspace=0.22)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72, facecolor=fig.get_facecolor())
    plt.close(fig)
