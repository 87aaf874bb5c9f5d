"""Detection-quality benchmark: SKAB and simulator evaluations through the service path.

Three steps, each re-runnable on its own so a long benchmark can be done in pieces on a shared
machine:

``run``     evaluate configurations (SKAB and/or the simulator's generic data set) and append one
            JSON line per run (figures, wall and CPU seconds, load average, options) to ``--log``;
            ``--cache DIR`` also keeps every run's per-file window scores (``.npz``, outside the
            repository: they are derived from SKAB data) for ``tune``.
``tune``    leave-one-group-out cross-validation of the alert rule (threshold rule and detector
            k/n/m) on cached SKAB scores (:mod:`training.evaluate.tune`); appends its result to
            the log too.
``render``  print the Markdown tables (mean ± std over seeds) from the log.

Usage::

    python bench/detection.py run --skab /path/to/skab --skab-families dense,pca --seeds 0,1,2
    python bench/detection.py run --sim --sim-families dense,conv,lstm,vae,pca --seeds 0,1,2
    python bench/detection.py tune --skab /path/to/skab --cache /tmp/pw-cache --run dense-w16
    python bench/detection.py render

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

import numpy as np

from training.calibrate import RULES, SENSOR_WEIGHTINGS
from training.evaluate import AlertOptions, EvaluationResult, GenericOptions, ModelOptions, evaluate
from training.evaluate.protocols import slug
from training.evaluate.simdata import SimDataset, write_sim_dataset
from training.flatline import FLATLINE_MODES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model

DEFAULT_LOG = Path("bench/results/detection/runs.jsonl")

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
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}, "
        f"{platform.platform()}"
    )


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _agg(values: Sequence[float | None], decimals: int = 3) -> str:
    """``mean ± std`` (sample std) of the finite values, ``n/a`` without any."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{decimals}f}"
    return f"{statistics.mean(vals):.{decimals}f} ± {statistics.stdev(vals):.{decimals}f}"


def _decimals(key: str) -> int:
    return 1 if key.endswith(("_pct", "_steps")) or key.startswith("nab") else 3


def _cache_run(result: EvaluationResult, directory: Path) -> None:
    """Per-series window scores of one run, for ``tune`` (kept outside the repository)."""
    directory.mkdir(parents=True, exist_ok=True)
    for r in result.replays:
        s = r.series
        np.savez_compressed(
            directory / f"{slug(s.name)}.npz",
            name=s.name,
            score=r.score,
            labels=s.labels,
            evaluate_from=s.evaluate_from,
            threshold=r.threshold,
            window=result.options["model"]["window"],
        )


def _record(
    log: Path,
    kind: str,
    label: str,
    result: EvaluationResult,
    wall: float,
    cpu: float,
    **extra: Any,
) -> dict[str, Any]:
    row = {
        "kind": kind,
        "label": label,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/detection.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": machine(),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_after": _load(),
        "figures": {k: (v if math.isfinite(v) else None) for k, v in result.figures.items()},
        "options": result.options,
        **extra,
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    return row


def _model(args: argparse.Namespace, family: str, seed: int, window: int | None) -> ModelOptions:
    hyper: dict[str, Any] = json.loads(args.hyper) if args.hyper else {}
    return ModelOptions(
        family=family,
        window=window,
        epochs=args.epochs,
        seed=seed,
        threshold_rule=args.threshold_rule,
        threshold_quantile=args.threshold_quantile,
        threshold_factor=args.threshold_factor,
        pot_level=args.pot_level,
        pot_risk=args.pot_risk,
        hyperparameters=hyper,
        ignore_sensors=tuple(c for c in args.ignore.split(",") if c),
        sensor_weighting=args.sensor_weighting,
        modes=args.modes,
        flatline=args.flatline,
        bias_factor=args.bias_factor,
        noise_std=args.noise_std,
        mask_fraction=args.mask_fraction,
        mask_unit=args.mask_unit,
    )


def _alerts(args: argparse.Namespace) -> AlertOptions:
    return AlertOptions.from_args(args)


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    alerts = _alerts(args)
    tag = f"-{args.tag}" if args.tag else ""
    if args.skab:
        for family in args.skab_families.split(","):
            for seed in seeds:
                model = _model(args, family, seed, args.window)
                label = f"skab-{family}-w{args.window or 'default'}{tag}"
                t0, c0 = time.perf_counter(), time.process_time()
                load0 = _load()
                result = evaluate(
                    "skab",
                    args.skab,
                    model=model,
                    alerts=alerts,
                    progress=(lambda line: print("  " + line, flush=True))
                    if args.verbose
                    else None,
                )
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if args.cache:
                    _cache_run(result, args.cache / f"{label}-s{seed}")
                _record(args.log, "skab", label, result, wall, cpu, seed=seed, load_before=load0)
                shown = {k: round(result.figures[k], 3) for k in SKAB_KEYS}
                print(f"{label} seed {seed}: {json.dumps(shown)} wall {wall:.0f} s cpu {cpu:.0f} s")
    if args.sim:
        with tempfile.TemporaryDirectory(prefix="pw-sim-eval-") as tmp:
            # --sim-test-seed: another day of the same plant (other fault episodes), to choose
            # options on without looking at the reported test day (seed 12).
            data = write_sim_dataset(Path(tmp) / "sim", SimDataset(test_seed=args.sim_test_seed))
            for family in args.sim_families.split(","):
                for seed in seeds:
                    model = _model(args, family, seed, args.window)
                    label = f"sim-{family}-w{args.window or 'default'}{tag}"
                    t0, c0 = time.perf_counter(), time.process_time()
                    load0 = _load()
                    result = evaluate(
                        "generic",
                        data,
                        model=model,
                        alerts=alerts,
                        generic=GenericOptions(
                            asset_groups=tuple(g for g in args.sim_asset_groups.split(",") if g)
                        ),
                    )
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    _record(args.log, "sim", label, result, wall, cpu, seed=seed, load_before=load0)
                    shown = {k: round(result.figures.get(k, math.nan), 3) for k in SIM_KEYS}
                    print(
                        f"{label} seed {seed}: {json.dumps(shown)} "
                        f"wall {wall:.0f} s cpu {cpu:.0f} s"
                    )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from training.evaluate import tune

    # --run "a,b;c,d": configuration "a,b" (its seeds' cached runs) and configuration "c,d".
    configs = {
        spec: [tune.load_skab_cache(args.cache / r, args.skab) for r in spec.split(",")]
        for spec in args.run.split(";")
    }
    names = [f"seed run {i}" for i in range(len(next(iter(configs.values()))))]
    first = next(iter(configs.values()))[0][0]
    grid = tune.with_configs(tune.default_grid(first.window), configs)
    cached = configs
    t0, c0 = time.perf_counter(), time.process_time()
    tallies = tune.tally_grid(cached, grid)
    for objective, cap in (("f1", 10.0), ("f1", 100.0), ("nab_standard", 100.0)):
        report = tune.leave_group_out(
            cached, grid, objective=objective, max_far_pct=cap, names=names, tallies=tallies
        )
        print(report.text(), flush=True)
        row = {
            "kind": "tune",
            "label": args.label or args.run,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python bench/detection.py "
            + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "load_after": _load(),
            **report.to_json(),
        }
        with args.log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    print(f"tuned in {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    """Score plots of a few SKAB files under two alert rules (no sensor values: SKAB's data
    stays out of the repository; these show our scores, the labels and our flags only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.evaluate import tune
    from training.evaluate.metrics import segments

    # LABEL=q,factor,k,n,m,hysteresis[@RUN]: a panel per rule, on --run or on RUN's scores.
    panels = []
    for spec in args.rules:
        label, text = spec.split("=", 1)
        text, _, run = text.partition("@")
        panels.append((label, _rule(text), run or args.run))
    runs = {
        run: {s.name: s for s in tune.load_skab_cache(args.cache / run, args.skab)}
        for run in {p[2] for p in panels}
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.files.split(","):
        fig, axes = plt.subplots(len(panels), 1, figsize=(12, 2.6 * len(panels)), sharex=True)
        for ax, (label, rule, run) in zip(np.atleast_1d(axes), panels, strict=True):
            s = runs[run][name]
            flagged = tune.flags(s, rule)
            x = np.arange(s.score.size)
            ax.plot(x, s.score, color="black", linewidth=0.7, label="window score")
            ax.axhline(
                rule.threshold(s), color="red", linestyle="--", linewidth=0.8, label="threshold"
            )
            ax.set_yscale("log")
            for i, (a, b) in enumerate(segments(s.labels)):
                ax.axvspan(
                    a,
                    b,
                    ymin=0.5,
                    ymax=1.0,
                    color="tab:orange",
                    alpha=0.25,
                    label="labelled anomaly" if i == 0 else None,
                )
            for i, (a, b) in enumerate(segments(flagged)):
                ax.axvspan(
                    a,
                    b,
                    ymin=0.0,
                    ymax=0.5,
                    color="tab:red",
                    alpha=0.15,
                    label="flagged (alert open)" if i == 0 else None,
                )
            ax.axvline(tune.TRAIN_ROWS, color="grey", linewidth=0.8)
            c = tune.tally(s, flagged).figures()
            ax.set_title(
                f"SKAB {name}, {run}: {label} ({rule.label()}): F1 {c['f1']:.2f}, "
                f"FAR {c['far_pct']:.0f} %, MAR {c['mar_pct']:.0f} %",
                fontsize=9,
            )
            ax.legend(loc="upper left", fontsize=7)
        np.atleast_1d(axes)[-1].set_xlabel("row (first 400: training)")
        fig.tight_layout()
        out = args.out / f"skab-{name.replace('/', '-')}.png"
        fig.savefig(out, dpi=72)
        plt.close(fig)
        print(f"wrote {out}")
    return 0


def _rule(text: str) -> Any:
    """``q,factor,k,n,m,hysteresis`` as a :class:`training.evaluate.tune.Rule`."""
    from training.evaluate.tune import Rule

    q, factor, k, n, m, h = text.split(",")
    return Rule(float(q), float(factor), int(k), int(n), int(m), float(h))


def _rows(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


def cmd_render(args: argparse.Namespace) -> int:
    rows = _rows(args.log)
    # A configuration run again with the same seed: its latest run counts (the mean ± std are
    # over seeds, not over reruns of one seed).
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in rows:
        if r["kind"] in ("skab", "sim"):
            latest[(r["kind"], r["label"], r["seed"])] = r
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in latest.values():
        by.setdefault((r["kind"], r["label"]), []).append(r)
    out = [
        "| SKAB configuration | seeds | F1 | FAR % | MAR % | NAB std | NAB lowFP | NAB lowFN "
        "| wall s/run | CPU s/run | load |",
        "|---" * 11 + "|",
    ]
    for (kind, label), runs in by.items():
        if kind != "skab":
            continue
        cells = [_agg([r["figures"][k] for r in runs], _decimals(k)) for k in SKAB_KEYS]
        out.append(
            f"| {label} | {','.join(str(r['seed']) for r in runs)} | "
            + " | ".join(cells)
            + f" | {_agg([r['wall_s'] for r in runs], 0)} | {_agg([r['cpu_s'] for r in runs], 0)}"
            + f" | {_agg([r['load_after'][1] for r in runs], 1)} |"
        )
    sims = [(label, runs) for (kind, label), runs in by.items() if kind == "sim"]
    detection = [k for k in SIM_KEYS if not k.startswith("attribution.")]
    attribution = [
        "attribution.alert_top1",
        "attribution.alert_top3",
        "attribution.alert_cases",
        "attribution.window_top1",
        "attribution.window_top3",
        "attribution.window_cases",
    ]
    for keys, timing in ((detection, False), (attribution, True)):
        extra = ["wall s/run", "CPU s/run", "load"] if timing else []
        out += [
            "",
            "| simulator configuration | seeds | " + " | ".join([*keys, *extra]) + " |",
            "|---" * (len(keys) + len(extra) + 2) + "|",
        ]
        for label, runs in sims:
            cells = [
                _agg(
                    [r["figures"].get(k) for r in runs], 1 if k.endswith("cases") else _decimals(k)
                )
                for k in keys
            ]
            if timing:
                cells += [
                    _agg([r["wall_s"] for r in runs], 0),
                    _agg([r["cpu_s"] for r in runs], 0),
                    _agg([r["load_after"][1] for r in runs], 1),
                ]
            seeds = ",".join(str(r["seed"]) for r in runs)
            out.append(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
    print("\n".join(out))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--log", type=Path, default=DEFAULT_LOG, help="JSON-lines run log")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="evaluate configurations, append to the log")
    r.add_argument("--skab", type=Path, help="path to a SKAB copy")
    r.add_argument("--skab-families", default="dense")
    r.add_argument("--sim", action="store_true", help="also run the simulator generic data set")
    r.add_argument("--sim-families", default="dense,conv,lstm,vae,pca")
    r.add_argument(
        "--sim-asset-groups",
        default="",
        help="e.g. 'pump-*,compressor-*': a bundle per group (evaluate --asset-groups)",
    )
    r.add_argument(
        "--sim-test-seed",
        type=int,
        default=SimDataset().test_seed,
        help="the simulator's test day (default: the reported one); tag other days, e.g. val13",
    )
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--window", type=int)
    r.add_argument("--epochs", type=int)
    r.add_argument("--hyper", help="JSON hyperparameters for the model family")
    r.add_argument("--ignore", default="", help="sensor columns left out, comma-separated")
    r.add_argument(
        "--sensor-weighting",
        default="none",
        choices=SENSOR_WEIGHTINGS,
        help="the log's labels predate the option: tag balanced runs (e.g. --tag bal)",
    )
    r.add_argument(
        "--modes", type=int, default=0, help="operating modes with a threshold each (tag: m3)"
    )
    r.add_argument("--flatline", default="auto", choices=FLATLINE_MODES, help="(tag off: nofl)")
    r.add_argument("--bias-factor", type=float, default=0.0, help="(tag: bias1.5)")
    r.add_argument("--noise-std", type=float, default=0.0, help="denoising (tag: noise0.1)")
    r.add_argument("--mask-fraction", type=float, default=0.0, help="masking (tag: mask0.25)")
    r.add_argument("--mask-unit", default="reading", choices=("reading", "sensor", "time"))
    r.add_argument("--hold-sensor", help="the service's detector.hold (tag: hold)")
    r.add_argument("--running-above", type=float, default=0.0)
    r.add_argument("--hold-seconds", type=float, default=600.0)
    r.add_argument("--threshold-rule", default="quantile", choices=RULES)
    r.add_argument("--threshold-quantile", type=float, default=0.99)
    r.add_argument("--threshold-factor", type=float, default=1.5)
    r.add_argument("--pot-level", type=float, default=0.98)
    r.add_argument("--pot-risk", type=float, default=1e-4)
    r.add_argument("--rule", default="service", choices=("service", "reference"))
    r.add_argument("--k", type=int)
    r.add_argument("--n", type=int)
    r.add_argument("--m", type=int)
    r.add_argument("--hysteresis", type=float, default=0.8)
    r.add_argument("--threads", type=int, default=1, help="torch threads")
    r.add_argument("--tag", default="", help="suffix of the configuration label")
    r.add_argument("--cache", type=Path, help="keep per-file scores here (for tune)")
    r.add_argument("--verbose", action="store_true")
    r.set_defaults(handler=cmd_run)
    t = sub.add_parser("tune", help="leave-one-group-out CV of the alert rule on cached scores")
    t.add_argument("--skab", type=Path, required=True)
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument(
        "--run",
        required=True,
        help="cached runs: seeds comma-separated, configurations ';'-separated",
    )
    t.add_argument("--label", default="", help="name of the tuned configuration in the log")
    t.set_defaults(handler=cmd_tune)
    i = sub.add_parser("images", help="score plots of a few cached SKAB files")
    i.add_argument("--skab", type=Path, required=True)
    i.add_argument("--cache", type=Path, required=True)
    i.add_argument("--run", required=True)
    i.add_argument("--files", default="valve1/0,valve2/1,other/14")
    i.add_argument("--rules", nargs="+", required=True, help="LABEL=q,factor,k,n,m,hysteresis")
    i.add_argument("--out", type=Path, default=Path("bench/results/detection"))
    i.set_defaults(handler=cmd_images)
    d = sub.add_parser("render", help="print the Markdown tables from the log")
    d.set_defaults(handler=cmd_render)
    args = p.parse_args()
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
