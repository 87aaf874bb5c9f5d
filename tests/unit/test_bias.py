"""Residual bias check: the limits, the penalty in the graph, an offset sensor alerts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.bundle import describe
from monitor.errors import ConfigError
from tests.conftest import assert_onnx_matches_torch, sine_frame, sliding, small_scorer
from training.bias import MIN_LIMIT, BiasCheck, fit_bias, window_bias
from training.export import ScoringGraph, score_windows
from training.models import build_model
from training.windows import StandardScaler


def test_limits_are_the_factor_times_the_largest_validation_bias() -> None:
    bias = np.array([[0.1, -0.4, 0.0], [-0.3, 0.2, 0.0], [0.2, 0.1, 0.0]])
    check = fit_bias(bias, factor=2.0, threshold=0.5)
    np.testing.assert_allclose(check.limit, [0.6, 0.8, MIN_LIMIT])
    assert check.unit == pytest.approx(3 * 0.5)
    assert check.to_json(["x", "y", "z"]) == {
        "bias_factor": 2.0,
        "bias_limits": {"x": pytest.approx(0.6), "y": pytest.approx(0.8), "z": MIN_LIMIT},
    }
    with pytest.raises(ValueError, match="finite"):
        fit_bias(np.array([[np.nan, 0.0]]), factor=2.0, threshold=0.5)
    with pytest.raises(ValueError, match="above 1"):
        fit_bias(bias, factor=1.0, threshold=0.5)


@pytest.mark.parametrize("family", ["dense", "pca"])
def test_the_graph_adds_the_squared_ratio_beyond_the_limit(family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    scaler = StandardScaler(mean=np.array([1.0, -2.0, 0.5]), scale=np.array([2.0, 0.5, 1.0]))
    windows = np.random.default_rng(1).standard_normal((64, 8, 3)).astype(np.float32)
    model = build_model(family, 8, 3, **({"hidden": (16, 4)} if family == "dense" else {}))
    if family == "pca":
        model.fit_closed_form(scaler.transform(windows))  # type: ignore[operator]
    model.eval()
    plain = ScoringGraph(model, scaler)
    bias = window_bias(model, scaler.transform(windows))
    # Limits that a fifth of the windows exceed, per sensor.
    limit = np.quantile(np.abs(bias), 0.8, axis=0)
    check = BiasCheck(limit=limit, factor=1.0, unit=4.5)
    graph = ScoringGraph(model, scaler, bias=check)
    _, want = score_windows(plain, windows)
    ratio = np.abs(bias) / limit
    want = want + np.where(ratio > 1, ratio**2 * 4.5, 0.0)
    assert (ratio > 1).any(axis=1).sum() >= 12
    score, error = score_windows(graph, windows)
    np.testing.assert_allclose(error, want, rtol=1e-4)
    np.testing.assert_allclose(score, want.mean(axis=1), rtol=1e-4)
    # Off the limits' edge, so float differences between torch and ONNX Runtime cannot flip one.
    clear = np.abs(ratio - 1).min(axis=1) > 1e-3
    assert_onnx_matches_torch(graph, windows[clear], tmp_path)


def test_an_offset_sensor_alerts_and_is_named(tmp_path: Path) -> None:
    from training.pipeline import TrainConfig, train_bundle

    data = tmp_path / "normal.csv"
    sine_frame(3000).to_csv(data, index=False)
    checked = small_scorer(data, tmp_path / "checked", epochs=40, bias_factor=1.5)
    unchecked = small_scorer(data, tmp_path / "unchecked", epochs=40, bias_factor=0.0)
    m = checked.bundle.manifest
    assert set(m.model.hyperparameters["bias_limits"]) == {"a", "b", "c"}
    assert m.model.hyperparameters["bias_factor"] == 1.5
    assert "bias_limits" not in unchecked.bundle.manifest.model.hyperparameters
    assert "bias        mean residual beyond 1.5 ×" in describe(checked.bundle)
    windows = sliding(sine_frame(400, seed=3)[list(m.features)].to_numpy(np.float32), 16)
    # Normal windows: the check adds nothing to almost all of them.
    normal = checked.score(windows)
    same = np.isclose(normal.score, unchecked.score(windows).score, rtol=1e-5)
    assert same.mean() > 0.95
    assert np.mean(normal.score >= m.threshold.value) < 0.05
    # Sensor b reads 0.25 too high (a fifth of its standard deviation): a calibration offset.
    b = list(m.features).index("b")
    offset = windows.copy()
    offset[:, :, b] += np.float32(0.25)
    got = checked.score(offset)
    assert np.mean(got.score >= m.threshold.value) > 0.9
    assert np.mean(got.sensor_error.argmax(axis=1) == b) > 0.8
    # Without the check the squared error hardly notices it.
    assert np.mean(unchecked.score(offset).score >= m.threshold.value) < 0.5
    with pytest.raises(ConfigError, match="--bias-factor"):
        train_bundle(TrainConfig(data=data, out=tmp_path / "bad", bias_factor=0.5))
