"""Alert-threshold calibration on held-out validation windows.

Unsupervised rules, on normal validation scores (what ``plantwatch train`` uses):

* :class:`QuantileRule` — ``factor × quantile_q`` (the SKAB reference rule, the default);
* :class:`PotRule` — peaks over threshold: a generalized Pareto tail fitted above a high
  quantile, extrapolated to a target false-alarm risk per window (Siffer et al., KDD 2017).

Semi-supervised, when a few labelled incidents exist: :func:`calibrate_supervised` picks the
threshold *and* the detector's k-of-n/m rule that maximise (event-)F1 on labelled validation
series under a cap on the false-alarm rate, by replaying them through
:class:`monitor.detector.Detector`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from monitor.bundle import ScoreSummary, ThresholdSpec
from monitor.detector import Detector, DetectorConfig
from monitor.errors import ConfigError
from monitor.events import EventType, ModelRef

logger = logging.getLogger(__name__)

SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class QuantileRule:
    """``threshold = factor × quantile_q(validation scores)``.

    The SKAB reference rule. With the defaults, about 1 % of normal windows reach the
    ``q``-quantile and the 1.5 factor leaves headroom for normal drift beyond the validation
    period; the detector's k-of-n rule then filters isolated excursions.
    """

    q: float = 0.99
    factor: float = 1.5

    name = "quantile"

    def __post_init__(self) -> None:
        if not 0.0 < self.q < 1.0 or self.factor <= 0:
            raise ValueError("quantile rule needs 0 < q < 1 and factor > 0")

    def calibrate(self, scores: npt.NDArray[np.floating]) -> ThresholdSpec:
        if scores.size == 0:
            raise ValueError("no validation scores to calibrate on")
        value = float(np.quantile(scores, self.q)) * self.factor
        return ThresholdSpec(
            value=value, rule=self.name, params={"q": self.q, "factor": self.factor}
        )


@dataclass(frozen=True)
class GPDFit:
    """Generalized Pareto fit of exceedances ``y > 0``.

    ``P(Y > y) = (1 + shape·y/scale)^(-1/shape)``, or ``exp(-y/scale)`` for ``shape = 0``.
    """

    shape: float
    scale: float

    def isf(self, p: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The exceedance ``y`` with ``P(Y > y) = p`` (inverse survival function)."""
        q = np.asarray(p, dtype=np.float64)
        if abs(self.shape) < 1e-9:
            y: npt.NDArray[np.float64] = -self.scale * np.log(q)
        else:
            y = self.scale / self.shape * (q ** (-self.shape) - 1.0)
        return y


def fit_gpd(
    exceedances: npt.ArrayLike, min_shape: float = -0.5, max_shape: float = math.inf
) -> GPDFit:
    """Maximum-likelihood GPD fit, numpy only (Grimshaw's profile likelihood).

    With ``θ = shape / scale`` the likelihood maximised over ``shape`` has the closed form
    ``shape(θ) = mean(log(1 + θ·y))``, so only ``θ`` is searched: on a log-spaced grid over its
    admissible range ``(-1/max(y), ∞)``, then refined by golden-section search. ``shape`` is kept
    ``>= min_shape``: below -1 the likelihood is unbounded, and below -0.5 the MLE is irregular;
    ``max_shape`` bounds it from above (the fit is then the MLE under that constraint).
    """
    y = np.asarray(exceedances, dtype=np.float64)
    y = y[np.isfinite(y)]
    if y.size < 3 or np.any(y <= 0):
        raise ValueError("GPD fit needs at least 3 positive exceedances")
    n, y_max, y_mean = y.size, float(y.max()), float(y.mean())

    def profile(theta: float) -> tuple[float, float]:
        """(profile log-likelihood, shape) at ``theta``; -inf where inadmissible."""
        if abs(theta) * y_max < 1e-9:
            return -n * math.log(y_mean) - n, 0.0
        if theta * y_max <= -1.0:
            return -math.inf, math.nan
        v = float(np.mean(np.log1p(theta * y)))
        if not min_shape <= v <= max_shape or not math.isfinite(v):
            return -math.inf, math.nan
        return -n * math.log(v / theta) - n * v - n, v

    # u = θ·max(y) in (-1, ∞): both tails of the grid are dense near 0 and near -1.
    grid = (
        np.concatenate(
            [-(1.0 - np.geomspace(1e-9, 1.0 - 1e-9, 200)), [0.0], np.geomspace(1e-9, 1e6, 400)]
        )
        / y_max
    )
    grid = np.unique(grid)
    values = [profile(float(t))[0] for t in grid]
    best = int(np.argmax(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    # Golden-section refinement inside the bracketing grid cells.
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = float(lo), float(hi)
    for _ in range(100):
        c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
        if profile(c)[0] >= profile(d)[0]:
            b = d
        else:
            a = c
    candidates = [float(grid[best]), (a + b) / 2.0]
    theta = max(candidates, key=lambda t: profile(t)[0])
    loglik, shape = profile(theta)
    if not math.isfinite(loglik):
        raise ValueError("GPD fit failed: no admissible parameters")
    scale = y_mean if shape == 0.0 else shape / theta
    return GPDFit(shape=shape, scale=scale)


@dataclass(frozen=True)
class PotRule:
    """Peaks over threshold: ``threshold`` is the score a normal window exceeds with ``risk``.

    The scores above the ``level`` quantile ``t`` are fitted with a generalized Pareto
    distribution (:func:`fit_gpd`) and the tail extrapolated:
    ``threshold = t + scale/shape · ((risk · N / N_t)^(-shape) - 1)`` (N windows, N_t above t).
    Unlike a quantile, this reaches beyond the largest validation score when ``risk`` is
    below ``1 / N``. Validation windows overlap (stride 1), so exceedances come in clusters;
    the fit treats them as independent, which leaves the tail estimate unbiased but noisier.
    ``risk`` is a per-window probability; the detector's k-of-n rule then filters isolated
    excursions, so the alert rate is far lower.

    The shape is capped at ``max_shape`` (0.5: finite variance). A heavier fitted tail came, on
    the simulated plant, from clustered exceedances (operating transitions), and extrapolating it
    put the threshold 30× beyond the largest validation score.
    """

    level: float = 0.98
    risk: float = 1e-4
    max_shape: float = 0.5

    name = "pot"

    def __post_init__(self) -> None:
        if not 0.5 <= self.level < 1.0 or not 0.0 < self.risk < 1.0 - self.level:
            raise ValueError("pot rule needs 0.5 <= level < 1 and 0 < risk < 1 - level")

    def calibrate(self, scores: npt.NDArray[np.floating]) -> ThresholdSpec:
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if s.size == 0:
            raise ValueError("no validation scores to calibrate on")
        initial = float(np.quantile(s, self.level))
        excess = s[s > initial] - initial
        if excess.size < 10:
            raise ValueError(
                f"pot rule: only {excess.size} validation scores above the {self.level:g} "
                "quantile (need 10); lower the level or give more validation data"
            )
        gpd = fit_gpd(excess, max_shape=self.max_shape)
        value = initial + float(gpd.isf(self.risk * s.size / excess.size))
        return ThresholdSpec(
            value=value,
            rule=self.name,
            params={
                "level": self.level,
                "risk": self.risk,
                "max_shape": self.max_shape,
                "initial": initial,
                "shape": gpd.shape,
                "scale": gpd.scale,
                "exceedances": float(excess.size),
            },
        )


ThresholdRule = QuantileRule | PotRule
RULES = ("quantile", "pot")
#: How a bundle's score weighs the sensors' errors (``TrainConfig.sensor_weighting``): the plain
#: mean, or each sensor in units of its mean error on the validation windows
#: (:func:`training.export.balanced_weights`, calibrated with the threshold).
SENSOR_WEIGHTINGS = ("none", "balanced")


def build_rule(name: str, **params: float) -> ThresholdRule:
    """A threshold rule by name (:data:`RULES`) with its parameters, e.g. ``("pot", risk=1e-4)``."""
    rules: dict[str, Any] = {"quantile": QuantileRule, "pot": PotRule}
    if name not in rules:
        raise ConfigError(f"unknown threshold rule {name!r} (choose from {', '.join(RULES)})")
    try:
        rule: ThresholdRule = rules[name](**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"threshold rule {name}: {exc}") from None
    return rule


def rule_from_options(
    name: str, *, q: float, factor: float, level: float, risk: float
) -> ThresholdRule:
    """:func:`build_rule` from the ``--threshold-*`` and ``--pot-*`` options of ``train`` and
    ``evaluate``: ``pot`` takes ``level`` and ``risk``, ``quantile`` ``q`` and ``factor``."""
    if name == "pot":
        return build_rule(name, level=level, risk=risk)
    return build_rule(name, q=q, factor=factor)


# --- semi-supervised calibration --------------------------------------------------------------


@dataclass(frozen=True)
class LabelledScores:
    """Window scores of one labelled validation series (one asset), in time order.

    ``labels[i]`` says window ``i`` is anomalous (how a window inherits its readings' labels is
    the caller's choice, e.g. "any reading labelled"). Consecutive windows are one reading
    apart (stride 1, as the service scores them).
    """

    scores: npt.NDArray[np.floating]
    labels: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        if self.scores.shape != self.labels.shape or self.scores.ndim != 1:
            raise ValueError("scores and labels must be 1-D arrays of the same length")


@dataclass(frozen=True)
class SupervisedChoice:
    """The chosen operating point and how it did on the labelled validation series."""

    threshold: float
    k: int
    n: int
    m: int
    objective: str
    value: float  # the objective's value
    event_precision: float
    event_recall: float
    window_f1: float
    #: Share of normal (label 0) windows inside an open alert.
    far: float
    alerts: int
    false_alerts: int
    feasible: bool  # False if no candidate met the FAR cap (then: the lowest FAR)

    def spec(self) -> ThresholdSpec:
        """The threshold for a manifest; k/n/m belong in the service's detector settings."""
        return ThresholdSpec(
            value=self.threshold,
            rule="supervised",
            params={
                "k": float(self.k),
                "n": float(self.n),
                "m": float(self.m),
                self.objective: self.value,
                "far": self.far,
            },
        )


def detector_grid(window: int) -> list[tuple[int, int, int]]:
    """Default ``(k, n, m)`` candidates for a window length, up to the service default.

    The service default is ``k = L + max(4, L/4)``, ``n = m = 1.5 k``; smaller ``k`` alert
    sooner on short incidents. ``n = m = ceil(1.5 k)`` throughout.
    """
    ks = {1, 3, max(1, window // 4), max(1, window // 2), window, window + max(4, window // 4)}
    return [(k, math.ceil(1.5 * k), math.ceil(1.5 * k)) for k in sorted(ks)]


def calibrate_supervised(
    series: Sequence[LabelledScores],
    *,
    rules: Sequence[tuple[int, int, int]] = ((3, 5, 10), (10, 15, 15), (40, 60, 60)),
    thresholds: npt.ArrayLike | None = None,
    objective: Literal["event_f1", "window_f1"] = "event_f1",
    max_far: float = 0.01,
    hysteresis: float = 0.8,
) -> SupervisedChoice:
    """Pick threshold and detector ``(k, n, m)`` on labelled *validation* series.

    Every candidate is replayed through :class:`~monitor.detector.Detector` (the service's own
    alert state machine). An alert covers its windows from its first above-threshold window to
    the window that resolves it (or the series end). Event recall: share of labelled episodes
    (runs of anomalous windows) that an alert overlaps; event precision: share of alerts that
    overlap an episode. The best ``objective`` among candidates with ``far <= max_far`` wins
    (ties: higher window F1, lower FAR, lower threshold, larger k). Thresholds default to 40
    quantiles of the normal windows' scores, from the median to the 0.9999 quantile, and 8
    multiples (1.01-4×) of the largest normal score.
    Use this on validation data only: the scores it sees must not come from the test files.
    """
    if not series:
        raise ValueError("no labelled series to calibrate on")
    all_scores = np.concatenate([np.asarray(s.scores, dtype=np.float64) for s in series])
    all_labels = np.concatenate([np.asarray(s.labels, dtype=bool) for s in series])
    if not all_labels.any() or all_labels.all():
        raise ValueError("semi-supervised calibration needs both normal and anomalous windows")
    if thresholds is None:
        normal = all_scores[~all_labels & np.isfinite(all_scores)]
        levels = 1.0 - np.geomspace(0.5, 1e-4, 40)
        cands = np.concatenate(
            [np.quantile(normal, levels), normal.max() * np.geomspace(1.01, 4.0, 8)]
        )
    else:
        cands = np.asarray(thresholds, dtype=np.float64)
    cands = np.unique(cands[np.isfinite(cands) & (cands > 0)])
    best: tuple[tuple[float, ...], SupervisedChoice] | None = None
    for k, n, m in rules:
        config = DetectorConfig(k=k, n=n, m=m, hysteresis=hysteresis)
        for thr in cands:
            choice = _evaluate_operating_point(series, float(thr), config, objective, max_far)
            # Ties on the objective go to more of the incidents' windows covered, then fewer
            # false-alarm windows: the lowest threshold that is as good as any.
            key = (
                float(choice.feasible),
                choice.value if choice.feasible else -choice.far,
                choice.window_f1,
                -choice.far,
                -float(thr),
                float(k),
            )
            if best is None or key > best[0]:
                best = (key, choice)
    assert best is not None
    if not best[1].feasible:
        logger.warning(
            "no threshold/k-of-n meets the false-alarm cap %.3g; lowest FAR is %.3g",
            max_far,
            best[1].far,
        )
    return best[1]


_CALIBRATION_MODEL = ModelRef(name="calibration", version="0", sha256="0" * 64)


def _evaluate_operating_point(
    series: Sequence[LabelledScores],
    threshold: float,
    config: DetectorConfig,
    objective: str,
    max_far: float,
) -> SupervisedChoice:
    alerts = false_alerts = episodes = detected = 0
    tp = fp = fn = normal = 0
    for s in series:
        scores = np.asarray(s.scores, dtype=np.float32)
        labels = np.asarray(s.labels, dtype=bool)
        in_alert = _alert_mask(scores, threshold, config)
        spans = _runs(in_alert)
        alerts += len(spans)
        false_alerts += sum(not labels[a:b].any() for a, b in spans)
        truth = _runs(labels)
        episodes += len(truth)
        detected += sum(bool(in_alert[a:b].any()) for a, b in truth)
        tp += int(np.sum(in_alert & labels))
        fp += int(np.sum(in_alert & ~labels))
        fn += int(np.sum(~in_alert & labels))
        normal += int(np.sum(~labels))
    precision = (alerts - false_alerts) / alerts if alerts else 0.0
    recall = detected / episodes if episodes else 0.0
    event_f1 = _f1(precision, recall)
    window_f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    far = fp / normal if normal else 0.0
    return SupervisedChoice(
        threshold=threshold,
        k=config.k,
        n=config.n,
        m=config.m,
        objective=objective,
        value=event_f1 if objective == "event_f1" else window_f1,
        event_precision=precision,
        event_recall=recall,
        window_f1=window_f1,
        far=far,
        alerts=alerts,
        false_alerts=false_alerts,
        feasible=far <= max_far,
    )


def _alert_mask(
    scores: npt.NDArray[np.float32], threshold: float, config: DetectorConfig
) -> npt.NDArray[np.bool_]:
    """Windows inside an alert when ``scores`` (one asset, in order) stream through a detector."""
    mask = np.zeros(len(scores), dtype=bool)
    if not np.any(scores >= threshold):
        return mask
    detector = Detector(config, threshold=threshold, features=("score",), model=_CALIBRATION_MODEL)
    ts = np.arange(len(scores), dtype=np.int64)
    events = detector.observe(
        ["series"] * len(scores), ts, scores, np.zeros((len(scores), 1), dtype=np.float32)
    )
    start: int | None = None
    for event in events:
        if event.event is EventType.OPENED:
            start = event.start_ts_ms
        elif event.event is EventType.RESOLVED and start is not None:
            mask[start : event.ts_ms + 1] = True
            start = None
    if start is not None:
        mask[start:] = True
    return mask


def _runs(flags: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``[start, stop)`` of every run of True in ``flags``."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def summarize(scores: npt.NDArray[np.floating], threshold: float) -> ScoreSummary:
    s = np.asarray(scores, dtype=np.float64)
    return ScoreSummary(
        n_windows=int(s.size),
        mean=float(s.mean()),
        std=float(s.std()),
        min=float(s.min()),
        max=float(s.max()),
        quantiles={f"{q:g}": float(np.quantile(s, q)) for q in SUMMARY_QUANTILES},
        above_threshold=float(np.mean(s >= threshold)),
    )
