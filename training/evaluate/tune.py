"""Choosing the alert rule by leave-one-group-out cross-validation on SKAB's window scores.

A SKAB run (:func:`training.evaluate.evaluate` with protocol ``skab``) scores every file through
the service path; its per-file window scores can be kept (``bench/detection.py run --cache``).
The alert rule on top of those scores, a threshold rule plus the detector's ``k``/``n``/``m`` and
hysteresis, is cheap to vary: each candidate is replayed through the service's own
:class:`monitor.detector.Detector` (and the same flagging as :func:`runner.replay`), so the
figures are exactly those ``plantwatch evaluate`` would report with that rule.

**No tuning on reported files.** :func:`leave_group_out` holds out one SKAB group (``valve1``,
``valve2``, ``other``) at a time, picks the candidate that does best on the other two groups'
files, applies it to the held-out group, and pools the held-out flags of the three folds into one
cross-validated set of figures. Only those are reported as results; the rule chosen on all groups
is the candidate default, its in-sample figures are labelled so.

**Threshold rule.** As in ``plantwatch train``: ``factor × quantile_q`` of the validation windows'
scores, i.e. the windows that lie wholly in the last quarter of each file's 400 training rows
(rows 300-399; ``time_split`` with ``validation_fraction = 0.25``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from monitor.detector import Detector, DetectorConfig
from monitor.events import ModelRef
from training.data import _parse_labels, _parse_timestamps
from training.evaluate import metrics, nab
from training.evaluate.runner import _alerts

#: SKAB's training rows per file and the validation quarter of them.
TRAIN_ROWS = 400
VALIDATION_FROM = 300
NAB_WINDOW_S = 60.0

Objective = Literal["f1", "nab_standard"]

_MODEL = ModelRef(name="tune", version="0", sha256="0" * 64)


@dataclass(frozen=True)
class CachedSeries:
    """One SKAB file's window scores (index = the row a window ends at; NaN where none)."""

    name: str
    group: str
    window: int
    score: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_]
    changepoints: npt.NDArray[np.bool_]
    times_s: npt.NDArray[np.float64]

    def calibration_scores(self) -> npt.NDArray[np.float64]:
        s = self.score[VALIDATION_FROM + self.window - 1 : TRAIN_ROWS]
        return s[np.isfinite(s)]


@dataclass(frozen=True)
class Rule:
    """An alert rule: threshold ``factor × quantile_q`` of the calibration scores, then the
    detector's ``k`` of ``n`` to open and ``m`` quiet windows (below ``hysteresis × T``) to
    resolve."""

    q: float
    factor: float
    k: int
    n: int
    m: int
    hysteresis: float = 0.8
    #: The model configuration (cached run set) the rule applies to; "" when there is one.
    config: str = ""

    def threshold(self, series: CachedSeries) -> float:
        return float(np.quantile(series.calibration_scores(), self.q)) * self.factor

    def label(self) -> str:
        model = f"{self.config}: " if self.config else ""
        return (
            f"{model}q{self.q:g}×{self.factor:g}, k={self.k}/n={self.n}, m={self.m}, "
            f"h={self.hysteresis:g}"
        )


def flags(series: CachedSeries, rule: Rule) -> npt.NDArray[np.bool_]:
    """Flagged points of ``series`` under ``rule``: the service detector on the cached scores.

    The detector's output does not depend on how windows are batched, so one ``observe`` call
    over all scored windows gives the events the block-wise replay gives.
    """
    n = series.score.shape[0]
    ts = np.arange(n, dtype=np.int64) * 1000
    ok = np.flatnonzero(np.isfinite(series.score))
    det = Detector(
        DetectorConfig(k=rule.k, n=rule.n, m=rule.m, hysteresis=rule.hysteresis),
        threshold=rule.threshold(series),
        features=("score",),
        model=_MODEL,
    )
    events = det.observe(
        ["series"] * ok.size,
        ts[ok],
        series.score[ok].astype(np.float32),
        np.ones((ok.size, 1), dtype=np.float32),
    )
    out = np.zeros(n, dtype=bool)
    for a in _alerts(events, ts):
        out[a.opened : a.closed] = True
    return out


@dataclass(frozen=True)
class Tally:
    """Point confusion and NAB counts of some files' test rows."""

    points: metrics.Confusion = field(default_factory=metrics.Confusion)
    changes: nab.NabTally = field(default_factory=nab.NabTally)

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.points + other.points, self.changes + other.changes)

    def figures(self) -> dict[str, float]:
        scores = self.changes.scores()
        return {
            "f1": self.points.f1,
            "far_pct": self.points.far_pct,
            "mar_pct": self.points.mar_pct,
            "nab_standard": scores["standard"],
            "nab_low_fp": scores["low_fp"],
            "nab_low_fn": scores["low_fn"],
        }


def tally(series: CachedSeries, flagged: npt.NDArray[np.bool_]) -> Tally:
    """The SKAB protocol's counts of one file: its rows after the first 400."""
    test = slice(TRAIN_ROWS, None)
    return Tally(
        metrics.confusion(series.labels[test], flagged[test]),
        nab.tally(
            series.times_s[test],
            series.changepoints[test],
            nab.changepoints(flagged[test]),
            NAB_WINDOW_S,
        ),
    )


def objective_value(figures: dict[str, float], objective: Objective, max_far_pct: float) -> float:
    """What a fold maximises: ``objective``, or minus the FAR beyond ``max_far_pct`` (so a
    candidate within the cap always beats one beyond it)."""
    excess = figures["far_pct"] - max_far_pct
    if excess > 0:
        return -1e3 - excess
    return figures[objective]


def default_grid(window: int) -> list[Rule]:
    """Candidate rules for a window length: thresholds from the 0.99/0.999 quantiles × 1-4,
    k from a single window to the service default, n = ceil(1.5 k), m from k to 4 n."""
    ks = sorted({1, max(1, window // 4), max(1, window // 2), window, window + max(4, window // 4)})
    rules = []
    for q, factor, k, m_mult, h in itertools.product(
        (0.99, 0.999), (1.0, 1.25, 1.5, 2.0, 3.0, 4.0), ks, (1, 2, 4), (0.8, 1.0)
    ):
        n = math.ceil(1.5 * k)
        rules.append(Rule(q, factor, k, n, max(1, k * m_mult), h))
    return rules


@dataclass
class FoldResult:
    held_out: str
    rule: Rule
    train_figures: dict[str, float]
    test_figures: dict[str, float]


@dataclass
class CVReport:
    """Cross-validated figures and the rule each fold chose."""

    runs: list[str]
    objective: str
    max_far_pct: float
    candidates: int
    folds: list[FoldResult]
    cv_figures: dict[str, float]
    cv_figures_per_run: list[dict[str, float]]
    chosen_on_all: Rule
    chosen_on_all_figures: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "objective": self.objective,
            "max_far_pct": self.max_far_pct,
            "candidates": self.candidates,
            "folds": [
                {
                    "held_out": f.held_out,
                    "rule": asdict(f.rule),
                    "train": f.train_figures,
                    "test": f.test_figures,
                }
                for f in self.folds
            ],
            "cv_figures": self.cv_figures,
            "cv_figures_per_run": self.cv_figures_per_run,
            "chosen_on_all": asdict(self.chosen_on_all),
            "chosen_on_all_in_sample": self.chosen_on_all_figures,
        }

    def text(self) -> str:
        def fmt(f: dict[str, float]) -> str:
            return ", ".join(f"{k} {v:.3f}" for k, v in f.items())

        lines = [
            f"{self.candidates} candidate rules; objective {self.objective} with FAR <= "
            f"{self.max_far_pct:g} % on the training groups"
        ]
        for f in self.folds:
            lines.append(f"held out {f.held_out}: chose {f.rule.label()}")
            lines.append(f"    train groups: {fmt(f.train_figures)}")
            lines.append(f"    held out:     {fmt(f.test_figures)}")
        lines.append(f"cross-validated (held-out folds pooled): {fmt(self.cv_figures)}")
        for name, figures in zip(self.runs, self.cv_figures_per_run, strict=True):
            lines.append(f"    run {name}: {fmt(figures)}")
        lines.append(f"chosen on all groups: {self.chosen_on_all.label()}")
        lines.append(f"    in-sample (not a result): {fmt(self.chosen_on_all_figures)}")
        return "\n".join(lines)


Runs = Sequence[Sequence[CachedSeries]]


def _configs(runs: Runs | Mapping[str, Runs]) -> dict[str, Runs]:
    return dict(runs) if isinstance(runs, Mapping) else {"": runs}


def with_configs(grid: Sequence[Rule], configs: Iterable[str]) -> list[Rule]:
    """Every rule of ``grid`` for every model configuration: CV then also picks the model."""
    return [replace(rule, config=c) for c in configs for rule in grid]


def tally_grid(runs: Runs | Mapping[str, Runs], grid: Sequence[Rule]) -> list[list[list[Tally]]]:
    """``[candidate][run][file]`` tallies (to share between several objectives)."""
    configs = _configs(runs)
    return [
        [[tally(s, flags(s, rule)) for s in run] for run in configs[rule.config]] for rule in grid
    ]


def leave_group_out(
    runs: Runs | Mapping[str, Runs],
    grid: Sequence[Rule],
    *,
    objective: Objective = "f1",
    max_far_pct: float = 10.0,
    names: Sequence[str] | None = None,
    tallies: Sequence[Sequence[Sequence[Tally]]] | None = None,
) -> CVReport:
    """Leave-one-group-out CV of ``grid`` over ``runs`` (e.g. one per seed, same files).

    ``runs`` may map model configurations to their runs (same files, same number of runs);
    each rule then applies to the runs of its :attr:`Rule.config` (see :func:`with_configs`),
    so a fold chooses the model configuration as well as the alert rule.

    A fold's candidate is scored on the pooled counts of all runs' files outside the held-out
    group; the chosen rule is then applied to every run's held-out files. Cross-validated
    figures pool all runs; ``cv_figures_per_run`` gives each run's own (for mean ± std).
    ``tallies``: :func:`tally_grid` of the same ``runs`` and ``grid``, if already computed.
    """
    configs = _configs(runs)
    if not configs or not grid or not all(configs.values()):
        raise ValueError("nothing to tune: no runs or no candidate rules")
    sizes = {len(v) for v in configs.values()}
    if len(sizes) != 1:
        raise ValueError("every model configuration needs the same number of runs")
    n_runs = sizes.pop()
    groups = sorted({s.group for s in next(iter(configs.values()))[0]})
    if tallies is None:
        tallies = tally_grid(configs, grid)

    def total(c: int, keep: Iterable[str], run: int | None = None) -> Tally:
        t = Tally()
        keep = set(keep)
        for r, run_files in enumerate(configs[grid[c].config]):
            if run is not None and r != run:
                continue
            for i, s in enumerate(run_files):
                if s.group in keep:
                    t = t + tallies[c][r][i]
        return t

    def best(keep: Sequence[str]) -> int:
        values = [
            objective_value(total(c, keep).figures(), objective, max_far_pct)
            for c in range(len(grid))
        ]
        return int(np.argmax(values))

    folds = []
    pooled = Tally()
    per_run = [Tally() for _ in range(n_runs)]
    for g in groups:
        train = [x for x in groups if x != g]
        c = best(train)
        held = total(c, [g])
        pooled = pooled + held
        for r in range(n_runs):
            per_run[r] = per_run[r] + total(c, [g], r)
        folds.append(FoldResult(g, grid[c], total(c, train).figures(), held.figures()))
    c_all = best(groups)
    return CVReport(
        runs=list(names or [str(i) for i in range(n_runs)]),
        objective=objective,
        max_far_pct=max_far_pct,
        candidates=len(grid),
        folds=folds,
        cv_figures=pooled.figures(),
        cv_figures_per_run=[t.figures() for t in per_run],
        chosen_on_all=grid[c_all],
        chosen_on_all_figures=total(c_all, groups).figures(),
    )


def load_skab_cache(run_dir: Path, skab_root: Path) -> list[CachedSeries]:
    """A cached SKAB run (``bench/detection.py run --cache``) with labels, changepoints and
    times re-read from the SKAB copy at ``skab_root``."""
    from training.evaluate.protocols import SKAB_GROUPS, read_skab, skab_files, slug

    out = []
    for file in skab_files(skab_root):
        name = f"{file.parent.name}/{file.stem}"
        doc = np.load(run_dir / f"{slug(name)}.npz")
        frame, _ = read_skab(file)
        rows = np.arange(1, len(frame) + 1)
        out.append(
            CachedSeries(
                name=name,
                group=file.parent.name,
                window=int(doc["window"]),
                score=doc["score"].astype(np.float64),
                labels=_parse_labels(frame["anomaly"], file, "anomaly", rows),
                changepoints=_parse_labels(frame["changepoint"], file, "changepoint", rows),
                times_s=_parse_timestamps(frame["datetime"], file, "datetime", rows) / 1e9,
            )
        )
        assert file.parent.name in SKAB_GROUPS
    return out
