"""Evaluation report: ``report.md`` with the figures plus one PNG per test series."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from training.evaluate.protocols import EvaluationResult
    from training.evaluate.runner import Replay


def write_report(result: EvaluationResult, directory: Path) -> list[Path]:
    """Write the Markdown summary and the per-series plots; return the paths written."""
    from training.evaluate.protocols import slug

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    images: list[tuple[str, str]] = []
    for r in result.replays:
        png = directory / f"{slug(r.series.name)}.png"
        plot_series(r, png)
        written.append(png)
        images.append((r.series.name, png.name))
    md = directory / "report.md"
    md.write_text(_markdown(result, images), encoding="utf-8")
    return [md, *written]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _groups_line(options: dict[str, Any]) -> list[str]:
    """With ``--asset-groups``: the groups, each scored by its own bundle."""
    groups = options.get("asset_groups")
    if not groups:
        return []
    return [
        "- asset groups, a bundle each (raw-score figures in units of each bundle's threshold): "
        + ", ".join(f"`{g}`" for g in groups)
    ]


def _markdown(result: EvaluationResult, images: list[tuple[str, str]]) -> str:
    lines = [
        f"# Evaluation: protocol `{result.protocol}`",
        "",
        f"- data: `{result.options.get('data')}`",
        f"- alert rule: {result.options.get('alert_rule')}",
        f"- model: {result.options.get('model')}",
        *_groups_line(result.options),
        f"- time: {result.elapsed_s:.1f} s",
        "",
        "## Figures",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| `{k}` | {_fmt(v)} |" for k, v in result.figures.items()),
        "",
        "## Per series",
        "",
        "| series | points | anomalous | flagged | alerts | F1 | FAR % | MAR % | threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result.per_series():
        lines.append(
            "| "
            + " | ".join(
                _fmt(row[k])
                for k in (
                    "series",
                    "points",
                    "anomalous",
                    "flagged",
                    "alerts",
                    "f1",
                    "far_pct",
                    "mar_pct",
                    "threshold",
                )
            )
            + " |"
        )
    lines += _alert_lines(result)
    lines += ["", "## Plots", ""]
    lines += [f"### {name}\n\n![{name}]({png})\n" for name, png in images]
    return "\n".join(lines) + "\n"


def _alert_lines(result: EvaluationResult) -> list[str]:
    """Every alert raised, and whether it overlaps a labelled anomaly (the event figures'
    rule); then every labelled anomaly no alert overlaps."""
    from training.evaluate import metrics

    alerts, missed = [], []
    for r in result.replays:
        s = r.series
        segs = [
            (max(a, s.evaluate_from), b)
            for a, b in metrics.segments(s.labels)
            if b > s.evaluate_from
        ]
        spans = [(a.opened, a.closed) for a in r.alerts]
        for a in r.alerts:
            true = any(metrics.overlaps((a.opened, a.closed), seg) for seg in segs)
            closed = _when(s.ts_ms, a.closed - 1) if a.resolved else "(open at the end)"
            alerts.append(
                f"| {s.name} | {_when(s.ts_ms, a.opened)} | {closed} | {a.peak_ratio:.3g} "
                f"| {', '.join(a.top_sensors)} | {'yes' if true else '**no**'} |"
            )
        for seg in segs:
            if not any(metrics.overlaps(seg, span) for span in spans):
                missed.append(
                    f"| {s.name} | {_when(s.ts_ms, seg[0])} | {_when(s.ts_ms, seg[1] - 1)} "
                    f"| {seg[1] - seg[0]} |"
                )
    lines = [
        "",
        "## Alerts",
        "",
        "Every alert raised (peak: score / threshold at its highest window; top sensors: "
        "that window's largest shares of the error) and whether it overlaps a labelled anomaly; "
        "one that does not is a false event.",
        "",
        "| series | opened | closed | peak | top sensors | labelled anomaly |",
        "|---|---|---|---|---|---|",
        *alerts,
    ]
    if not alerts:
        lines.append("| (none) | | | | | |")
    lines += [
        "",
        f"Labelled anomalies no alert overlaps: {len(missed)}.",
        "",
    ]
    if missed:
        lines += ["| series | from | to | points |", "|---|---|---|---|", *missed]
    return lines


def _when(ts_ms: npt.NDArray[np.int64], index: int) -> str:
    """The UTC time of point ``index``, to the second."""
    import datetime as dt

    t = dt.datetime.fromtimestamp(int(ts_ms[index]) / 1000, dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def plot_series(r: Replay, path: Path) -> None:
    """Sensors (standardised), score with threshold, true labels and raised alerts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r.series
    x = np.arange(s.size)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    values = s.values.astype(np.float64)
    sd = np.nanstd(values, axis=0)
    z = (values - np.nanmean(values, axis=0)) / np.where(sd > 0, sd, 1.0)
    top.plot(x, z, linewidth=0.6)
    top.set_ylabel("sensors (z-score)")
    top.set_title(s.name)
    bottom.plot(x, r.score, color="black", linewidth=0.7, label="window score")
    line = r.limit if r.limit is not None else r.threshold
    bottom.axhline(
        line,
        color="red",
        linestyle="--",
        linewidth=0.8,
        label="control limit" if r.limit is not None else "threshold",
    )
    finite = r.score[np.isfinite(r.score)]
    if finite.size and float(finite.min()) > 0:
        bottom.set_yscale("log")
    bottom.set_ylabel("score")
    bottom.set_xlabel("point")
    for ax in (top, bottom):
        _shade(ax, s.labels, "tab:orange", 0.25, "labelled anomaly" if ax is bottom else None)
        _shade(ax, r.flagged, "tab:red", 0.15, "flagged" if ax is bottom else None, lower=True)
        if s.evaluate_from:
            ax.axvline(s.evaluate_from, color="grey", linewidth=0.8)
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _shade(
    ax: Axes,
    mask: npt.NDArray[np.bool_],
    color: str,
    alpha: float,
    label: str | None,
    lower: bool = False,
) -> None:
    from training.evaluate.metrics import segments

    for i, (a, b) in enumerate(segments(mask)):
        span = (0.0, 0.5) if lower else (0.5, 1.0)
        label_i = label if i == 0 else None
        ax.axvspan(a, b, ymin=span[0], ymax=span[1], color=color, alpha=alpha, label=label_i)
