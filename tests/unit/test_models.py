"""Model families, training options, the PCA baseline and Hotelling T² (export parity:
test_export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monitor.bundle import Manifest, load_bundle
from monitor.errors import ConfigError
from training.calibrate import PotRule
from training.export import ScoringGraph, score_windows
from training.fit import FitConfig, fit
from training.hotelling import HotellingModel
from training.models import (
    FAMILIES,
    DenseVAE,
    build_model,
    fitted_in_closed_form,
    pointwise_error,
    reconstructs,
)
from training.pca import PCAModel
from training.windows import StandardScaler

FAST = FitConfig(epochs=2, batch_size=32, progress=False, device="cpu")


def correlated(n: int, length: int = 16, seed: int = 0) -> np.ndarray:
    """Normalised-scale windows of 4 sensors driven by 2 smooth latent signals."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None] + rng.uniform(0, 100, size=(n, 1, 1))
    latent = np.concatenate([np.sin(t / 5.0), np.cos(t / 7.0)], axis=2)
    mix = np.array([[1.0, 0.5, -1.0, 0.2], [0.0, 1.0, 0.5, -1.0]])
    return (latent @ mix + 0.05 * rng.standard_normal((n, length, 4))).astype(np.float32)


def test_families() -> None:
    assert FAMILIES == ("dense", "conv", "lstm", "vae", "pca", "hotelling")
    with pytest.raises(ConfigError, match="unknown model family 'gru'"):
        build_model("gru", 16, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_and_reconstructs(family: str) -> None:
    train, val = correlated(96, seed=1), correlated(32, seed=2)
    result = fit(build_model(family, 16, 4), train, val, FAST)
    model = result.model
    assert not model.training
    assert all(np.isfinite(result.train_loss))
    assert all(np.isfinite(result.val_loss))
    assert len(result.val_loss) == (1 if fitted_in_closed_form(family) else 2)
    x = torch.from_numpy(val)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
        err = pointwise_error(model, x)
    assert y1.shape == x.shape
    # A family that scores the window as a whole gives one error per sensor and window.
    assert err.shape == (x.shape if reconstructs(family) else (32, 1, 4))
    torch.testing.assert_close(y1, y2)  # eval is deterministic (the VAE reads its mean)


def test_vae_samples_in_training_and_adds_its_kl() -> None:
    torch.manual_seed(0)
    vae = DenseVAE(16, 4, hidden=(32,), latent=4, beta=0.5)
    x = torch.from_numpy(correlated(8))
    vae.train()
    a, b = vae(x), vae(x)
    assert not torch.equal(a, b)
    assert float(vae.auxiliary_loss().detach()) > 0
    vae.eval()
    torch.testing.assert_close(vae(x), vae(x))


def _fit(config: FitConfig) -> list[float]:
    train, val = correlated(96, seed=1), correlated(32, seed=2)
    return fit(build_model("dense", 16, 4, hidden=(16, 4)), train, val, config).train_loss


@pytest.mark.parametrize(
    "options",
    [
        {"noise_std": 0.3},
        {"mask_fraction": 0.25},
        {"mask_fraction": 0.25, "mask_unit": "sensor"},
        {"mask_fraction": 0.25, "mask_unit": "time"},
    ],
    ids=["denoise", "mask-reading", "mask-sensor", "mask-time"],
)
def test_corruption_changes_training_and_is_seeded(options: dict[str, Any]) -> None:
    base = _fit(FAST)
    config = FitConfig(**{**FAST.__dict__, **options})
    corrupted = _fit(config)
    assert corrupted != base
    assert _fit(config) == corrupted


def test_corruption_options_validate() -> None:
    with pytest.raises(ConfigError, match="mask fraction"):
        FitConfig(mask_fraction=1.0)
    with pytest.raises(ConfigError, match="noise std"):
        FitConfig(noise_std=-0.1)
    with pytest.raises(ConfigError, match="mask unit"):
        FitConfig(mask_unit="block")  # type: ignore[arg-type]


def _break_correlation(windows: np.ndarray) -> np.ndarray:
    """Sensor 2 loses its relation to the others; its own range and variance stay the same."""
    broken = windows.copy()
    broken[:, :, 2] = -broken[:, :, 2]
    return broken


def _auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Probability that an anomalous window outscores a normal one."""
    return float((anomalous[:, None] > normal[None, :]).mean())


@pytest.mark.parametrize("hyper", [{}, {"per_step": False, "n_components": 6}])
def test_pca_detects_a_correlation_break(hyper: dict[str, Any]) -> None:
    model = PCAModel(16, 4, **hyper)
    model.fit_closed_form(correlated(400, seed=3))
    assert model.fitted_components >= 2
    graph = ScoringGraph(model.eval(), StandardScaler(mean=np.zeros(4), scale=np.ones(4)))
    test = correlated(200, seed=4)
    normal, _ = score_windows(graph, test)
    broken, errors = score_windows(graph, _break_correlation(test))
    assert _auc(normal, broken) > 0.95
    # Attribution: the broken sensor carries the largest share in most windows.
    assert np.mean(errors.argmax(axis=1) == 2) > 0.5


def test_pca_t2_contributions_sum_to_hotelling_t2() -> None:
    train = correlated(400, seed=3)
    model = PCAModel(16, 4, n_components=2, t2_weight=1.0)
    model.fit_closed_form(train)
    samples = train.reshape(-1, 4).astype(np.float64)
    center = samples.mean(axis=0)
    lam, vec = np.linalg.eigh(np.cov(samples, rowvar=False))
    p, lam = vec[:, ::-1][:, :2], lam[::-1][:2]
    x = correlated(5, seed=9)
    d = x.reshape(-1, 4) - center
    t2 = (((d @ p) ** 2) / lam).sum(axis=1)
    q = ((d - d @ p @ p.T) ** 2).sum(axis=1)
    with torch.no_grad():
        err = model.pointwise_error(torch.from_numpy(x)).numpy().reshape(-1, 4)
    np.testing.assert_allclose(err.sum(axis=1), q + t2, rtol=1e-3, atol=1e-4)


def test_pca_validates_hyperparameters() -> None:
    with pytest.raises(ConfigError, match="n_components"):
        PCAModel(16, 4, n_components=4)
    with pytest.raises(ConfigError, match="explained_variance"):
        PCAModel(16, 4, explained_variance=1.0)


def train_on_sines(tmp_path: Path, family: str, **config: Any) -> Manifest:
    """The manifest of a ``family`` bundle trained by the pipeline on 3,000 rows of sines."""
    from tests.conftest import sine_frame
    from training.pipeline import TrainConfig, train_bundle

    data = tmp_path / "normal.csv"
    sine_frame(3000).to_csv(data, index=False)
    result = train_bundle(
        TrainConfig(
            data=data,
            out=tmp_path / "bundle",
            family=family,
            window=16,
            fit=FitConfig(progress=False),
            **config,
        )
    )
    return load_bundle(result.bundle.path).manifest


def test_pipeline_trains_a_pca_bundle_with_pot(tmp_path: Path) -> None:
    m = train_on_sines(
        tmp_path,
        "pca",
        threshold=PotRule(level=0.95, risk=1e-3),
        hyperparameters={"n_components": 1},
    )
    assert m.model.family == "pca"
    assert m.model.hyperparameters["components_fitted"] == 1
    assert "noise_std" not in m.model.hyperparameters
    assert m.threshold.rule == "pot"
    assert set(m.threshold.params) >= {"level", "risk", "shape", "scale", "initial"}
    assert m.onnx.parity_max_abs_diff < 1e-4
    # Risk 1e-3 on 600 validation windows: the threshold lies beyond all but a few of them.
    assert m.validation.above_threshold < 0.01


def test_hotelling_contributions_sum_to_the_shrunk_t2_of_window_statistics() -> None:
    train = correlated(300, seed=3)
    model = HotellingModel(16, 4, shrinkage=0.2)
    model.fit_closed_form(train)

    def stats(w: np.ndarray) -> np.ndarray:
        w = w.astype(np.float64)
        return np.concatenate([w.mean(axis=1), np.abs(np.diff(w, axis=1)).mean(axis=1)], axis=1)

    s = stats(train)
    cov = np.cov(s, rowvar=False)
    cov = 0.8 * cov + 0.2 * np.trace(cov) / 8 * np.eye(8)
    x = correlated(7, seed=9)
    d = stats(x) - s.mean(axis=0)
    t2 = np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)
    with torch.no_grad():
        err = model.pointwise_error(torch.from_numpy(x)).numpy()
    assert err.shape == (7, 1, 4)
    assert np.all(err >= 0)
    np.testing.assert_allclose(err.sum(axis=(1, 2)), t2, rtol=1e-4)
    # Sensor f's share is the contribution of its level plus that of its fluctuation.
    whitened = d @ np.real(_inverse_sqrt(cov))
    np.testing.assert_allclose(err[:, 0], whitened[:, :4] ** 2 + whitened[:, 4:] ** 2, rtol=1e-4)


def _inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    val, vec = np.linalg.eigh(cov)
    return (vec / np.sqrt(val)) @ vec.T


def test_hotelling_sees_what_reconstruction_misses_and_names_the_sensor() -> None:
    """All four sensors move together along their normal relation (a throttled valve moves a
    pump along its curve): every reading is one the PCA model reconstructs, but the level is
    one the training windows never held. And sensor 1 fluctuating far more at the same level:
    the fluctuation statistic sees it, the level alone does not."""
    train = correlated(400, seed=3)
    test = correlated(200, seed=4)
    identity = StandardScaler(mean=np.zeros(4), scale=np.ones(4))
    mix = np.array([1.0, 0.5, -1.0, 0.2], np.float32)
    # An offset of the first latent signal: a move along the normal relation, at 1.5 × its
    # typical level, held for the whole window.
    moved = test + 1.5 * mix
    rough = test.copy()
    rough[:, :, 1] += 0.5 * np.random.default_rng(5).standard_normal((200, 16))
    scores = {}
    for name, model in (
        ("hotelling", HotellingModel(16, 4)),
        ("level only", HotellingModel(16, 4, roughness=False)),
        ("pca", PCAModel(16, 4, n_components=2)),
    ):
        model.fit_closed_form(train)
        graph = ScoringGraph(model.eval(), identity)
        normal, _ = score_windows(graph, test)
        shifted, _ = score_windows(graph, moved)
        noisy, noisy_err = score_windows(graph, rough)
        scores[name] = (_auc(normal, shifted), _auc(normal, noisy))
        if name == "hotelling":
            assert np.mean(noisy_err.argmax(axis=1) == 1) > 0.9
    assert scores["hotelling"][0] > 0.95
    assert scores["hotelling"][1] > 0.95
    assert scores["pca"][0] < 0.7  # the move along the relation reconstructs
    assert scores["level only"][1] < 0.7  # fluctuation at the same level is no new level


def test_hotelling_validates_and_refuses_the_bias_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shrinkage"):
        HotellingModel(16, 4, shrinkage=1.5)
    with pytest.raises(ConfigError, match="do not vary"):
        HotellingModel(16, 4).fit_closed_form(np.ones((20, 16, 4), np.float32))
    assert not reconstructs("hotelling")
    assert reconstructs("pca")
    assert reconstructs("dense")
    from training.pipeline import TrainConfig, train_bundle

    with pytest.raises(ConfigError, match="--model hotelling reconstructs nothing"):
        train_bundle(
            TrainConfig(
                data=tmp_path / "absent.csv",
                out=tmp_path / "b",
                family="hotelling",
                bias_factor=2.0,
            )
        )


def test_pipeline_trains_a_hotelling_bundle(tmp_path: Path) -> None:
    m = train_on_sines(tmp_path, "hotelling")
    assert m.model.family == "hotelling"
    assert m.model.hyperparameters["shrinkage"] == 0.1
    assert m.model.hyperparameters["roughness"] is True
    assert m.onnx.parity_max_abs_diff < 1e-4
    # Calibrated like every family: the 0.99 quantile of the validation windows × 1.5.
    assert m.validation.above_threshold < 0.01
