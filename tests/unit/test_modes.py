"""Operating-mode thresholds: k-means on operating points, a threshold per mode, in the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from monitor.bundle import describe
from monitor.errors import ConfigError
from monitor.scoring import Scorer
from tests.conftest import assert_onnx_matches_torch
from training.calibrate import QuantileRule
from training.export import ScoringGraph, score_windows
from training.models import build_model
from training.modes import MIN_MODE_WINDOWS, ModeThresholds, assign, fit_modes, kmeans
from training.windows import StandardScaler


def _blobs(centres: list[list[float]], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.array(c) + 0.1 * rng.standard_normal((n, len(c))) for c in centres])


def test_kmeans_finds_separated_modes_and_is_seeded() -> None:
    centres = [[0.0, 0.0], [5.0, 0.0], [0.0, -4.0]]
    points = _blobs(centres, 200, seed=1)
    got = kmeans(points, 3, seed=7)
    nearest = assign(np.array(centres), got)
    assert sorted(nearest.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(got[nearest], centres, atol=0.05)
    np.testing.assert_array_equal(got, kmeans(points, 3, seed=7))
    labels = assign(points, got)
    assert sorted(np.bincount(labels).tolist()) == [200, 200, 200]
    with pytest.raises(ValueError, match="at least 3 points"):
        kmeans(points[:2], 3)


def test_each_mode_is_calibrated_on_its_own_validation_windows() -> None:
    rng = np.random.default_rng(2)
    train = _blobs([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]], 300, seed=3)
    # Validation: 400 quiet windows in mode 0, 300 noisy ones in mode 1, too few in mode 2.
    quiet, noisy, rare = 400, 300, MIN_MODE_WINDOWS - 1
    val = _blobs([[0.0, 0.0]], quiet, 4)
    val = np.concatenate([val, _blobs([[5.0, 5.0]], noisy, 5), _blobs([[-5.0, 5.0]], rare, 6)])
    scores = np.concatenate(
        [rng.uniform(0, 1, quiet), rng.uniform(0, 4, noisy), rng.uniform(0, 9, rare)]
    )
    rule = QuantileRule(q=0.99, factor=1.5)
    modes = fit_modes(train, val, scores, 3, rule, seed=0)
    mode_of = assign(val, modes.centroids)
    common = 1.5 * np.quantile(scores, 0.99)
    for mode in range(3):
        mine = scores[mode_of == mode]
        own = 1.5 * np.quantile(mine, 0.99) if len(mine) >= MIN_MODE_WINDOWS else common
        assert modes.thresholds[mode] == pytest.approx(own)
        assert modes.scale[mode] == pytest.approx(common / own)
    assert sorted(modes.validation_windows.tolist()) == [rare, noisy, quiet]
    # After scaling, each calibrated mode's rule lands on the common threshold.
    scaled = scores * modes.scale_of(val)
    for mode in range(3):
        if modes.validation_windows[mode] >= MIN_MODE_WINDOWS:
            mine = scaled[mode_of == mode]
            assert 1.5 * np.quantile(mine, 0.99) == pytest.approx(common)
    assert modes.to_json()["mode_validation_windows"] == modes.validation_windows.tolist()


def test_the_graph_scales_each_window_by_its_modes_factor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    scaler = StandardScaler(mean=np.zeros(3), scale=np.ones(3))
    model = build_model("dense", 8, 3, hidden=(16, 4)).eval()
    plain = ScoringGraph(model, scaler)
    modes = ModeThresholds(
        centroids=np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]]),
        scale=np.array([2.0, 0.25]),
        thresholds=np.array([1.0, 8.0]),
        validation_windows=np.array([50, 50]),
        training_windows=np.array([100, 100]),
    )
    graph = ScoringGraph(model, scaler, modes=modes)
    rng = np.random.default_rng(8)
    windows = rng.standard_normal((40, 8, 3)).astype(np.float32)
    windows[20:] += 3.0  # the second half runs in mode 1
    want_score, want_error = score_windows(plain, windows)
    score, error = score_windows(graph, windows)
    factor = np.r_[np.full(20, 2.0), np.full(20, 0.25)]
    np.testing.assert_allclose(score, want_score * factor, rtol=1e-5)
    np.testing.assert_allclose(error, want_error * factor[:, None], rtol=1e-5)
    assert_onnx_matches_torch(graph, windows, tmp_path)


def _two_units(rows: int, seed: int) -> pd.DataFrame:
    """Sine data of two units: ``quiet`` and ``noisy``, which runs 10 units higher with ten times
    the noise (one plant, two operating modes)."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    frames = []
    for asset, offset, noise in (("quiet", 0.0, 0.05), ("noisy", 10.0, 0.5)):
        base = np.sin(2 * np.pi * t / 50.0) + offset
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": pd.date_range("2026-01-01", periods=rows, freq="s", tz="UTC"),
                    "asset": asset,
                    "a": base + noise * rng.standard_normal(rows),
                    "b": 2.0 * base + noise * rng.standard_normal(rows),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_a_bundle_with_modes_alerts_as_often_in_each_mode(tmp_path: Path) -> None:
    from training.pipeline import TrainConfig, train_bundle

    data = tmp_path / "normal.csv"
    frame = _two_units(3000, seed=9)
    frame.to_csv(data, index=False)

    def bundle(modes: int) -> Scorer:
        config = TrainConfig(
            data=data,
            out=tmp_path / f"m{modes}",
            # PCA: deterministic and fast; its error is the noise it cannot explain.
            family="pca",
            window=16,
            report=False,
            modes=modes,
        )
        return Scorer(train_bundle(config).bundle, device="cpu")

    # Fresh data of both modes (other noise).
    fresh = _two_units(1500, seed=10)

    def windows(asset: str) -> np.ndarray:
        values = fresh.loc[fresh["asset"] == asset, ["a", "b"]].to_numpy(np.float32)
        w = np.lib.stride_tricks.sliding_window_view(values, 16, axis=0)
        return np.ascontiguousarray(w.transpose(0, 2, 1))

    quiet, noisy = windows("quiet"), windows("noisy")

    def relative(scorer: Scorer, w: np.ndarray) -> np.ndarray:
        return scorer.score(w).score / scorer.bundle.manifest.threshold.value

    one = bundle(0)
    two = bundle(2)
    hyper = two.bundle.manifest.model.hyperparameters
    assert hyper["modes"] == 2
    assert min(hyper["mode_validation_windows"]) >= MIN_MODE_WINDOWS
    assert "modes" not in one.bundle.manifest.model.hyperparameters
    # plantwatch inspect: one line for the modes, no centroid lists in the hyperparameters.
    text = describe(two.bundle)
    assert "\nmodes       2: score × " in text
    assert "mode_centroids" not in text
    assert "\nmodes" not in describe(one.bundle)
    # Both bundles keep normal windows of both modes below the threshold (about 1 % reach the
    # 0.99 quantile, and the threshold is 1.5 times that).
    for scorer in (one, two):
        for w in (quiet, noisy):
            assert np.mean(relative(scorer, w) >= 1.0) <= 0.05
    # One threshold is set by the noisy mode: the quiet mode's scores sit far below it, so a
    # departure there must be several times its normal error to alert. Per mode, the quiet
    # mode's normal scores come up to its own threshold's scale.
    q_one = np.quantile(relative(one, quiet), 0.99)
    q_two = np.quantile(relative(two, quiet), 0.99)
    assert q_two > 2.5 * q_one, (q_one, q_two)
    assert 0.3 < q_two < 1.0, q_two
    with pytest.raises(ConfigError, match="--modes"):
        train_bundle(TrainConfig(data=data, out=tmp_path / "bad", modes=-1))
