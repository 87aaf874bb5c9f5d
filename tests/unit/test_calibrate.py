"""Threshold rules: quantile, peaks over threshold (GPD tail), semi-supervised calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.errors import ConfigError
from training.calibrate import (
    GPDFit,
    LabelledScores,
    PotRule,
    QuantileRule,
    build_rule,
    calibrate_supervised,
    detector_grid,
    fit_gpd,
    rule_from_options,
)


def gpd_samples(shape: float, scale: float, n: int, seed: int) -> np.ndarray:
    u = np.random.default_rng(seed).uniform(size=n)
    if shape == 0:
        return -scale * np.log(u)
    return scale / shape * (u ** (-shape) - 1.0)


@pytest.mark.parametrize("shape", [-0.3, 0.0, 0.25])
def test_gpd_fit_recovers_parameters(shape: float) -> None:
    fit = fit_gpd(gpd_samples(shape, 2.0, 5000, seed=1))
    assert fit.shape == pytest.approx(shape, abs=0.06)
    assert fit.scale == pytest.approx(2.0, rel=0.08)


def test_gpd_fit_respects_a_shape_cap() -> None:
    y = gpd_samples(1.2, 1.0, 3000, seed=6)
    assert fit_gpd(y).shape > 0.9
    capped = fit_gpd(y, max_shape=0.5)
    assert capped.shape == pytest.approx(0.5, abs=0.01)
    assert capped.scale > 0


def test_gpd_isf_inverts_the_survival_function() -> None:
    for fit in (GPDFit(0.2, 1.5), GPDFit(0.0, 1.5), GPDFit(-0.2, 1.5)):
        y = fit.isf(np.array([0.1, 0.01]))
        if fit.shape == 0:
            surv = np.exp(-y / fit.scale)
        else:
            surv = (1 + fit.shape * y / fit.scale) ** (-1 / fit.shape)
        np.testing.assert_allclose(surv, [0.1, 0.01], rtol=1e-9)


def test_gpd_fit_rejects_too_little_data() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        fit_gpd([1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        fit_gpd([1.0, 2.0, 0.0, 3.0])


def test_pot_recovers_an_exponential_tail_quantile() -> None:
    scores = np.random.default_rng(2).exponential(1.0, size=200_000)
    spec = PotRule(level=0.98, risk=1e-4).calibrate(scores)
    assert spec.value == pytest.approx(math.log(1e4), rel=0.05)  # P(X > t) = 1e-4
    assert spec.rule == "pot"
    assert spec.params["level"] == 0.98
    assert spec.params["risk"] == 1e-4
    assert spec.params["shape"] == pytest.approx(0.0, abs=0.05)


def test_pot_extrapolates_a_heavy_tail_beyond_the_data() -> None:
    # Scores whose tail is GPD(0.2, 1) above 1.0; risk 1e-5 is beyond the 20 000 samples.
    rng = np.random.default_rng(3)
    body = rng.uniform(0.0, 1.0, size=18_000)
    tail = 1.0 + gpd_samples(0.2, 1.0, 2_000, seed=4)
    scores = np.concatenate([body, tail])
    spec = PotRule(level=0.9, risk=1e-5).calibrate(scores)
    # P(X > t) = 0.1 · P(Y > t - 1)  →  t = 1 + isf(1e-4)
    want = 1.0 + float(GPDFit(0.2, 1.0).isf(1e-4))
    assert spec.value > scores.max() * 0.5
    assert spec.value == pytest.approx(want, rel=0.35)


def test_pot_rule_validates() -> None:
    with pytest.raises(ValueError, match="risk"):
        PotRule(level=0.99, risk=0.02)
    with pytest.raises(ValueError, match=r"only 5 validation scores above the 0\.99 quantile"):
        PotRule(level=0.99, risk=1e-3).calibrate(np.arange(500, dtype=float))


def test_build_rule_by_name() -> None:
    assert build_rule("quantile", q=0.95, factor=2.0) == QuantileRule(q=0.95, factor=2.0)
    assert build_rule("pot", risk=1e-3) == PotRule(risk=1e-3)
    with pytest.raises(ConfigError, match="unknown threshold rule 'evt'"):
        build_rule("evt")
    with pytest.raises(ConfigError, match="threshold rule pot"):
        build_rule("pot", risk=0.5)


def test_rule_from_options_takes_each_rule_its_own_options() -> None:
    options = {"q": 0.95, "factor": 2.0, "level": 0.9, "risk": 1e-3}
    assert rule_from_options("quantile", **options) == QuantileRule(q=0.95, factor=2.0)
    assert rule_from_options("pot", **options) == PotRule(level=0.9, risk=1e-3)
    with pytest.raises(ConfigError, match="unknown threshold rule 'evt'"):
        rule_from_options("evt", **options)


def _labelled(seed: int, n: int = 1500) -> LabelledScores:
    """Normal scores in [0, 1] with two 40-window episodes scoring in [3, 4]."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.0, 1.0, size=n)
    labels = np.zeros(n, dtype=bool)
    for start in (400, 1100):
        labels[start : start + 40] = True
    scores[labels] = rng.uniform(3.0, 4.0, size=int(labels.sum()))
    return LabelledScores(scores=scores, labels=labels)


def test_supervised_threshold_separates_normal_from_anomalous() -> None:
    series = [_labelled(0), _labelled(1)]
    choice = calibrate_supervised(series, rules=[(1, 1, 1), (3, 5, 5)], max_far=0.01)
    assert 1.0 <= choice.threshold <= 3.0
    assert choice.feasible
    assert choice.event_recall == 1.0
    assert choice.event_precision == 1.0
    assert choice.alerts == 4
    assert choice.far <= 0.01
    spec = choice.spec()
    assert spec.rule == "supervised"
    assert spec.params["k"] == choice.k
    assert spec.value == choice.threshold


def test_supervised_far_cap_binds() -> None:
    # Anomalies overlap the top of the normal range: catching more of them costs false alarms.
    rng = np.random.default_rng(5)
    scores = rng.uniform(0.0, 1.0, size=3000)
    labels = np.zeros(3000, dtype=bool)
    labels[1000:1100] = True
    scores[labels] = rng.uniform(0.6, 1.5, size=100)
    series = [LabelledScores(scores=scores, labels=labels)]
    thresholds = np.linspace(0.5, 1.4, 19)
    loose = calibrate_supervised(
        series, rules=[(1, 1, 1)], thresholds=thresholds, objective="window_f1", max_far=1.0
    )
    tight = calibrate_supervised(
        series, rules=[(1, 1, 1)], thresholds=thresholds, objective="window_f1", max_far=1e-4
    )
    assert loose.feasible
    assert tight.feasible
    assert tight.far <= 1e-4 < loose.far
    assert tight.threshold > loose.threshold
    assert tight.window_f1 < loose.window_f1
    # An unreachable cap: the lowest false-alarm rate wins, flagged as infeasible.
    none = calibrate_supervised(
        series, rules=[(1, 1, 1)], thresholds=[0.1, 0.2], objective="window_f1", max_far=1e-3
    )
    assert not none.feasible
    assert none.threshold == 0.2


def test_supervised_needs_both_classes() -> None:
    s = LabelledScores(scores=np.ones(10), labels=np.zeros(10, dtype=bool))
    with pytest.raises(ValueError, match="both normal and anomalous"):
        calibrate_supervised([s])


def test_detector_grid_ends_at_the_service_default() -> None:
    grid = detector_grid(32)
    assert grid[-1] == (40, 60, 60)
    assert all(1 <= k <= n and m >= 1 for k, n, m in grid)
