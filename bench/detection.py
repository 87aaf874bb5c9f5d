"""Detection-quality benchmark: SKAB and simulator evaluations through the service path.

Writes ``bench/results/detection.md`` with our rows beside SKAB's published leaderboard, the
exact command, machine info and seeds. Usage::

    python bench/detection.py --skab /path/to/skab [--families dense,conv] [--seeds 0,1,2]
        [--skip-skab] [--skip-sim] [--out bench/results/detection.md]

SKAB is read by path only (GPL-3.0 data; never copied into this repository).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.evaluate import AlertOptions, ModelOptions, evaluate
from training.evaluate.simdata import SimDataset, write_sim_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model

#: SKAB's published leaderboards (waico/SKAB, commit b2c0d46), copied as numbers with attribution.
SKAB_OUTLIER = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T²+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T²", 0.66, 19.21, 42.6),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53),
    ("Vanilla AE", 0.39, 2.59, 75.15),
    ("MSCRED", 0.36, 49.94, 69.88),
    ("Isolation Forest", 0.29, 2.56, 82.89),
]
SKAB_NAB = [
    ("MSCRED", 32.42, 16.53, 40.28),
    ("Isolation Forest", 26.16, 19.5, 30.82),
    ("T²+Q (PCA)", 25.35, 14.51, 31.33),
    ("Conv-AE", 23.61, 21.54, 27.55),
    ("LSTM-AE", 23.51, 20.11, 25.91),
    ("T²", 19.54, 10.2, 24.31),
    ("MSET", 13.84, 10.22, 17.37),
    ("Vanilla AE", 11.41, 6.53, 13.91),
]
SKAB_KEYS = ("f1", "far_pct", "mar_pct", "nab_standard", "nab_low_fp", "nab_low_fn")
SIM_KEYS = (
    "point.f1",
    "point.far_pct",
    "point.mar_pct",
    "event.precision",
    "event.recall",
    "event.f1",
    "mean_detection_delay_steps",
    "roc_auc",
    "pr_auc",
    "detection_rate_at_far_5pct",
    "attribution.alert_top1",
    "attribution.alert_top3",
    "attribution.window_top1",
    "attribution.window_top3",
)


def machine() -> str:
    cpu = cpu_model()
    import numpy
    import onnxruntime
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores (shared with other jobs), Python "
        f"{platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, numpy {numpy.__version__}, {platform.platform()}"
    )


def _agg(values: Sequence[float]) -> str:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3g}"
    return f"{statistics.mean(vals):.3g} ± {statistics.stdev(vals):.2g}"


def run_skab(
    root: Path, configs: list[tuple[str, ModelOptions, AlertOptions]]
) -> list[dict[str, Any]]:
    rows = []
    for label, model, alerts in configs:
        t0 = time.perf_counter()
        result = evaluate(
            "skab",
            root,
            model=model,
            alerts=alerts,
            progress=lambda line: print("  " + line, flush=True),
        )
        elapsed = time.perf_counter() - t0
        print(
            f"{label}: {json.dumps({k: round(result.figures[k], 3) for k in SKAB_KEYS})} "
            f"in {elapsed:.0f} s",
            flush=True,
        )
        rows.append(
            {
                "label": label,
                "figures": result.figures,
                "elapsed_s": elapsed,
                "rule": result.options["alert_rule"],
                "model": result.options["model"],
            }
        )
    return rows


def run_sim(
    families: Sequence[str], seeds: Sequence[int], alerts: AlertOptions
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="pw-sim-eval-") as tmp:
        data = write_sim_dataset(Path(tmp) / "sim", SimDataset())
        for family in families:
            runs = []
            for seed in seeds:
                t0 = time.perf_counter()
                window = 32
                result = evaluate(
                    "generic",
                    data,
                    model=ModelOptions(family=family, window=window, seed=seed),
                    alerts=alerts,
                )
                runs.append((result, time.perf_counter() - t0))
                shown = {k: round(result.figures.get(k, math.nan), 3) for k in SIM_KEYS}
                print(f"sim {family} seed {seed}: {json.dumps(shown)}", flush=True)
            rows.append({"family": family, "runs": runs})
    return rows


def render(
    args: argparse.Namespace,
    skab: list[dict[str, Any]],
    sim: list[dict[str, Any]],
    seeds: Sequence[int],
) -> str:
    cmd = "python bench/detection.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = [
        "# Detection quality",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "Every figure comes from `training.evaluate` (`plantwatch evaluate`): bundles trained by",
        "`train_bundle`, scored through the exported ONNX graph with `Scorer`, windows from",
        "`WindowStore`, alerts from the service's `Detector` (or, labelled *reference*, SKAB's",
        "offline Conv-AE rule, for comparison only).",
        "",
    ]
    if skab:
        out += [
            "## SKAB (34 labelled files; per file: fit on the first 400 rows, test on the rest)",
            "",
            "Point-wise figures pooled over all test rows, no point adjustment; NAB with a 60 s",
            "window to the right of each changepoint (SKAB's scoring, see",
            "`training/evaluate/nab.py`).",
            "",
            "| ours | F1 | FAR % | MAR % | NAB std | NAB lowFP | NAB lowFN | time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in skab:
            f = row["figures"]
            out.append(
                f"| {row['label']} | {f['f1']:.3f} | {f['far_pct']:.2f} | {f['mar_pct']:.2f} | "
                f"{f['nab_standard']:.2f} | {f['nab_low_fp']:.2f} | {f['nab_low_fn']:.2f} | "
                f"{row['elapsed_s']:.0f} s |"
            )
        out += ["", "Configurations:", ""]
        out += [f"- **{r['label']}**: model {r['model']}; alert rule {r['rule']}" for r in skab]
        out += [
            "",
            "Published SKAB leaderboard (waico/SKAB, commit b2c0d46; numbers copied with "
            "attribution):",
            "",
            "| Algorithm | F1 | FAR % | MAR % |",
            "|---|---|---|---|",
            *(f"| {a} | {f1} | {far} | {mar} |" for a, f1, far, mar in SKAB_OUTLIER),
            "",
            "| Algorithm | NAB std | LowFP | LowFN |",
            "|---|---|---|---|",
            *(f"| {a} | {s} | {lfp} | {lfn} |" for a, s, lfp, lfn in SKAB_NAB),
            "",
        ]
    if sim:
        out += [
            "## Simulator (generic layout; same plant_seed for train and test)",
            "",
            f"Train: 12 h normal, 3 pumps + 1 compressor; test: 8 h of the next day with 12 faults "
            f"(two per kind). Window 32; mean ± std over seeds {list(seeds)}.",
            "",
            "| family | " + " | ".join(SIM_KEYS) + " | time/run |",
            "|---|" + "---|" * (len(SIM_KEYS) + 1),
        ]
        for row in sim:
            runs = row["runs"]
            cells = [_agg([r.figures.get(k, math.nan) for r, _ in runs]) for k in SIM_KEYS]
            t = statistics.mean(e for _, e in runs)
            out.append(f"| {row['family']} | " + " | ".join(cells) + f" | {t:.0f} s |")
        out.append("")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skab", type=Path, help="path to a SKAB copy")
    p.add_argument("--families", default="dense", help="model families for the simulator rows")
    p.add_argument("--skab-families", default="dense", help="model families for SKAB rows")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--skab-reference",
        action="store_true",
        help="also run SKAB with the reference (Conv-AE notebook) alert rule",
    )
    p.add_argument("--skip-sim", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench/results/detection.md"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    skab: list[dict[str, Any]] = []
    if args.skab:
        configs = []
        for fam in args.skab_families.split(","):
            configs.append((f"{fam}, service detector", ModelOptions(family=fam), AlertOptions()))
            if args.skab_reference:
                configs.append(
                    (
                        f"{fam}, reference rule",
                        ModelOptions(family=fam),
                        AlertOptions(mode="reference"),
                    )
                )
        skab = run_skab(args.skab, configs)
    sim = [] if args.skip_sim else run_sim(args.families.split(","), seeds, AlertOptions())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args, skab, sim, seeds), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
