"""ONNX export: the graph carries the preprocessing and matches torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from monitor.bundle import load_bundle
from monitor.errors import BundleError, ConfigError
from monitor.scoring import Scorer
from tests.conftest import assert_onnx_matches_torch
from training.export import (
    ScoringGraph,
    balanced_weights,
    check_parity,
    export_onnx,
    score_windows,
)
from training.models import build_model
from training.windows import StandardScaler


def _scaler() -> StandardScaler:
    return StandardScaler(
        mean=np.array([1.0, -2.0, 10.0, 0.0]), scale=np.array([2.0, 0.5, 3.0, 1.0])
    )


@pytest.fixture(scope="module")
def conv_graph() -> ScoringGraph:
    torch.manual_seed(0)
    model = build_model("conv", 32, 4).eval()
    return ScoringGraph(model, _scaler())


def test_graph_normalises_inside(conv_graph: ScoringGraph) -> None:
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((5, 32, 4)).astype(np.float32) * 3 + 10
    score, err = score_windows(conv_graph, raw)
    z = (raw - np.array([1.0, -2.0, 10.0, 0.0])) / np.array([2.0, 0.5, 3.0, 1.0])
    with torch.no_grad():
        recon = conv_graph.autoencoder(torch.from_numpy(z.astype(np.float32))).numpy()
    want = ((recon - z) ** 2).mean(axis=1)
    np.testing.assert_allclose(err, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(score, want.mean(axis=1), rtol=1e-4, atol=1e-6)


def _correlated(n: int, length: int, seed: int) -> np.ndarray:
    """Windows of 4 sensors driven by 2 latent signals (so PCA has structure to find)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, length, 2))
    mix = np.array([[1.0, 0.5, -1.0, 0.2], [0.0, 1.0, 0.5, -1.0]])
    return (latent @ mix + 0.1 * rng.standard_normal((n, length, 4))).astype(np.float32)


@pytest.mark.parametrize(
    ("family", "hyper"),
    [
        ("dense", {}),
        ("conv", {}),
        ("lstm", {"hidden": 16, "latent": 8}),
        ("vae", {}),
        ("pca", {"n_components": 2, "t2_weight": 0.5}),
        ("pca", {"n_components": 3, "per_step": False}),
        ("hotelling", {}),
        ("hotelling", {"roughness": False}),
    ],
    ids=["dense", "conv", "lstm", "vae", "pca-step-t2", "pca-window", "hotelling", "t2-level"],
)
def test_onnx_matches_torch_with_dynamic_batch(
    family: str, hyper: dict[str, Any], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    scaler = StandardScaler(mean=np.array([1.0, -2.0, 10.0, 0.0]), scale=np.array([2, 0.5, 3, 1]))
    model = build_model(family, 32, 4, **hyper)
    fit_closed_form = getattr(model, "fit_closed_form", None)
    if fit_closed_form is not None:
        fit_closed_form(_correlated(200, 32, 0))
    graph = ScoringGraph(model.eval(), scaler)
    path = tmp_path / "m.onnx"
    export_onnx(graph, path, 32, 4)
    z = _correlated(257, 32, 2)
    z[:10, 5:, 1] += 3.0  # some anomalous windows too
    windows = (z * np.array([2, 0.5, 3, 1]) + np.array([1.0, -2.0, 10.0, 0.0])).astype(np.float32)
    # check_parity raises beyond 1e-5 + 1e-4 × |value|; the anomalous windows' T² runs into the
    # hundreds, where float32 keeps about 1e-5 absolute.
    for some in (windows, windows[:1]):
        largest = float(score_windows(graph, some)[0].max())
        assert check_parity(path, graph, some) < 1e-4 * max(1.0, largest / 100)
    # The contract every family keeps: score is the mean over sensors of sensor_error.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, sensor_error = session.run(None, {"window": windows})
    assert score.shape == (257,)
    assert sensor_error.shape == (257, 4)
    assert np.all(sensor_error >= 0)
    np.testing.assert_allclose(sensor_error.mean(axis=1), score, rtol=1e-5, atol=1e-7)


def test_parity_check_refuses_a_graph_that_drifted(
    conv_graph: ScoringGraph, tmp_path: Path
) -> None:
    path = tmp_path / "m.onnx"
    export_onnx(conv_graph, path, 32, 4)
    windows = np.random.default_rng(3).standard_normal((64, 32, 4)).astype(np.float32)
    with torch.no_grad():
        conv_graph.autoencoder.decoder[-1].bias.add_(0.5)  # type: ignore[operator]
    try:
        with pytest.raises(BundleError, match="differs from torch"):
            check_parity(path, conv_graph, windows)
    finally:
        with torch.no_grad():
            conv_graph.autoencoder.decoder[-1].bias.sub_(0.5)  # type: ignore[operator]


def test_bundle_onnx_matches_recorded_validation(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    m = bundle.manifest
    assert m.onnx.parity_max_abs_diff < 1e-4
    assert m.onnx.opset >= 17
    # Scores of the training data's own windows sit in the calibrated range.
    frame = pd.read_csv(tiny_bundle.parent / "normal.csv")
    values = frame[list(m.features)].to_numpy(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(values, 16, axis=0).transpose(0, 2, 1)
    scores = Scorer(bundle, device="cpu").score(np.ascontiguousarray(windows[-500:])).score
    assert np.mean(scores < m.threshold.value) > 0.95


def test_balanced_weights_level_every_sensor_to_the_mean() -> None:
    errors = np.array([[1.0, 10.0, 0.1, 0.0], [3.0, 30.0, 0.3, 0.0]])  # means 2, 20, 0.2, 0
    weights = balanced_weights(errors)
    # The zero level is raised to 1e-6 of the largest (2e-5); the mean over sensors of the
    # levels is then (2 + 20 + 0.2 + 2e-5) / 4, and every weighted level equals it.
    mean = (2 + 20 + 0.2 + 2e-5) / 4
    np.testing.assert_allclose(weights, [mean / 2, mean / 20, mean / 0.2, mean / 2e-5])
    np.testing.assert_allclose((errors.mean(axis=0) * weights)[:3], mean)
    with pytest.raises(ValueError, match="finite"):
        balanced_weights(np.array([[np.nan, 1.0]]))


def test_a_weighted_graph_scores_each_sensor_in_its_own_units(
    conv_graph: ScoringGraph, tmp_path: Path
) -> None:
    weights = np.array([1.0, 4.0, 0.25, 2.0])
    weighted = ScoringGraph(conv_graph.autoencoder, _scaler(), sensor_weight=weights)
    raw = np.random.default_rng(4).standard_normal((33, 32, 4)).astype(np.float32)
    _, plain = score_windows(conv_graph, raw)
    score, err = score_windows(weighted, raw)
    np.testing.assert_allclose(err, plain * weights, rtol=1e-5)
    np.testing.assert_allclose(score, (plain * weights).mean(axis=1), rtol=1e-5)
    # The weights travel in the ONNX graph.
    assert_onnx_matches_torch(weighted, raw, tmp_path)


def test_a_balanced_bundle_records_its_weights(tmp_path: Path) -> None:
    from tests.conftest import sine_frame
    from training.fit import FitConfig
    from training.pipeline import TrainConfig, train_bundle

    data = tmp_path / "normal.csv"
    frame = sine_frame(3000)
    frame["c"] += np.random.default_rng(5).standard_normal(len(frame)) * 2.0  # unpredictable
    frame.to_csv(data, index=False)
    config = TrainConfig(
        data=data,
        out=tmp_path / "bundle",
        family="dense",
        window=16,
        stride=2,
        hyperparameters={"hidden": (32, 8)},
        fit=FitConfig(epochs=10, progress=False),
        report=False,
        sensor_weighting="balanced",
    )
    bundle = train_bundle(config).bundle
    hyper = bundle.manifest.model.hyperparameters
    assert hyper["sensor_weighting"] == "balanced"
    weights = np.array(hyper["sensor_weights"])
    assert weights.shape == (bundle.manifest.n_features,)
    # On the validation windows every sensor's weighted error has about the same mean.
    values = pd.read_csv(data)[list(bundle.manifest.features)].to_numpy(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(values[-600:], 16, axis=0)
    got = Scorer(bundle, device="cpu").score(np.ascontiguousarray(windows.transpose(0, 2, 1)))
    level = got.sensor_error.mean(axis=0)
    assert level.max() / level.min() < 1.5, level
    # The noisy sensor weighs least: unweighted, it would make most of the score.
    assert bundle.manifest.features[int(np.argmin(weights))] == "c", weights
    with pytest.raises(ConfigError, match="sensor-weighting"):
        train_bundle(TrainConfig(data=data, out=tmp_path / "other", sensor_weighting="loudest"))
