"""Flatline check: which sensors are checked, the penalty in the graph, a stuck sensor alerts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.bundle import describe
from monitor.errors import ConfigError
from tests.conftest import assert_onnx_matches_torch, sine_frame, sliding, small_scorer
from training.export import ScoringGraph, score_windows
from training.flatline import FLAT_SCORE, Flatline, fit_flatline, longest_constant_runs
from training.models import build_model
from training.windows import StandardScaler


def test_longest_constant_runs_counts_identical_readings() -> None:
    values = np.array([[1, 5, 0], [1, 5, 1], [2, 5, 2], [2, 5, 3], [2, 6, 4], [3, 6, 5]], float)
    np.testing.assert_array_equal(longest_constant_runs(values), [3, 4, 1])
    np.testing.assert_array_equal(longest_constant_runs(np.zeros((0, 2))), [0, 0])


def test_sensors_constant_for_over_half_a_window_are_not_checked() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 3))
    b = rng.standard_normal((200, 3))
    a[50:55, 1] = 7.0  # 5 identical readings: more than half a window of 8, in one series
    b[10:14, 2] = 1.0  # 4 identical readings: half a window, still checked
    check = fit_flatline([a, b], length=8, threshold=0.5)
    assert check is not None
    np.testing.assert_array_equal(check.checked, [True, False, True])
    assert check.penalty == pytest.approx(FLAT_SCORE * 3 * 0.5)
    assert check.to_json(["x", "y", "z"])["flatline_sensors"] == ["x", "z"]
    a[:, [0, 2]] = 0.0
    assert fit_flatline([a], length=8, threshold=0.5) is None


def test_the_graph_adds_the_penalty_to_flat_checked_sensors_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    scaler = StandardScaler(mean=np.zeros(3), scale=np.ones(3))
    model = build_model("dense", 8, 3, hidden=(16, 4)).eval()
    plain = ScoringGraph(model, scaler)
    check = Flatline(checked=np.array([True, True, False]), penalty=6.0)
    graph = ScoringGraph(model, scaler, flatline=check)
    windows = np.random.default_rng(1).standard_normal((4, 8, 3)).astype(np.float32)
    windows[1, :, 0] = 0.25  # a checked sensor stuck
    windows[2, :, 2] = -1.0  # an unchecked one
    windows[3, :, :2] = 3.0  # both checked ones
    _, want = score_windows(plain, windows)
    score, error = score_windows(graph, windows)
    want[1, 0] += 6.0
    want[3, :2] += 6.0
    np.testing.assert_allclose(error, want, rtol=1e-5)
    np.testing.assert_allclose(score, want.mean(axis=1), rtol=1e-5)
    assert_onnx_matches_torch(graph, windows, tmp_path)


def test_a_stuck_sensor_alerts_and_is_named(tmp_path: Path) -> None:
    from training.pipeline import TrainConfig, train_bundle

    data = tmp_path / "normal.csv"
    frame = sine_frame(3000)
    # A setpoint: changed once, constant for long stretches in normal operation, so never checked.
    frame["setpoint"] = np.where(np.arange(len(frame)) < 1500, 50.0, 55.0)
    frame.to_csv(data, index=False)

    checked = small_scorer(data, tmp_path / "auto", epochs=10, flatline="auto")
    unchecked = small_scorer(data, tmp_path / "off", epochs=10, flatline="off")
    m = checked.bundle.manifest
    assert m.model.hyperparameters["flatline_sensors"] == ["a", "b", "c"]
    assert "flatline_sensors" not in unchecked.bundle.manifest.model.hyperparameters
    assert "flatline    a window of identical readings" in describe(checked.bundle)
    fresh = sine_frame(400, seed=3)
    fresh["setpoint"] = 50.0
    windows = sliding(fresh[list(m.features)].to_numpy(np.float32), 16)
    # Normal windows (the setpoint is constant in all of them): both bundles agree.
    normal = checked.score(windows)
    np.testing.assert_allclose(normal.score, unchecked.score(windows).score, rtol=1e-5)
    assert np.mean(normal.score >= m.threshold.value) < 0.05
    # Sensor b stuck at a value well inside its normal range.
    stuck = windows.copy()
    b = list(m.features).index("b")
    stuck[:, :, b] = np.float32(10.3)
    got = checked.score(stuck)
    assert np.all(got.score >= FLAT_SCORE * m.threshold.value)
    assert np.all(got.sensor_error.argmax(axis=1) == b)
    # Without the check the model hardly notices: b is 2 × a sine around 10 and sits in it.
    assert np.mean(unchecked.score(stuck).score >= m.threshold.value) < 0.5
    with pytest.raises(ConfigError, match="--flatline"):
        train_bundle(TrainConfig(data=data, out=tmp_path / "bad", flatline="sometimes"))
