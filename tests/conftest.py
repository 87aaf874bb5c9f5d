"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from tests.plant import PLANT, PLANT_WINDOW

if TYPE_CHECKING:
    from monitor.scoring import Scorer
    from training.export import ScoringGraph

SENSORS = ("a", "b", "c")


def assert_onnx_matches_torch(graph: ScoringGraph, windows: np.ndarray, directory: Path) -> None:
    """Export a scoring graph to ONNX in ``directory``; ONNX Runtime must agree with torch on
    ``windows`` (everything a graph computes travels in the exported file)."""
    from training.export import check_parity, export_onnx

    path = directory / "graph.onnx"
    export_onnx(graph, path, windows.shape[1], windows.shape[2])
    assert check_parity(path, graph, windows) < 1e-4


def small_scorer(data: Path, out: Path, epochs: int, **options: Any) -> Scorer:
    """A small dense bundle (window 16, stride 2) trained on ``data`` into ``out``, loaded for
    CPU scoring; ``options`` go to ``TrainConfig`` (the check a test compares on and off)."""
    from monitor.scoring import Scorer
    from training.fit import FitConfig
    from training.pipeline import TrainConfig, train_bundle

    config = TrainConfig(
        data=data,
        out=out,
        window=16,
        stride=2,
        hyperparameters={"hidden": (32, 8)},
        fit=FitConfig(epochs=epochs, progress=False),
        report=False,
        **options,
    )
    return Scorer(train_bundle(config).bundle, device="cpu")


def sliding(values: np.ndarray, length: int) -> np.ndarray:
    """Every window of ``length`` consecutive rows of ``values`` (rows × sensors), contiguous."""
    return np.ascontiguousarray(
        np.lib.stride_tricks.sliding_window_view(values, length, axis=0).transpose(0, 2, 1)
    )


def sine_frame(rows: int, seed: int = 0, start: str = "2026-01-01") -> pd.DataFrame:
    """Three correlated noisy sinusoids at 1 s: learnable normal data for small bundles."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    base = np.sin(2 * np.pi * t / 50.0)
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=rows, freq="s", tz="UTC"),
            "asset": "unit-1",
            "a": base + 0.05 * rng.standard_normal(rows),
            "b": 2.0 * base + 10.0 + 0.05 * rng.standard_normal(rows),
            "c": np.cos(2 * np.pi * t / 50.0) + 0.05 * rng.standard_normal(rows),
        }
    )


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle trained for a few epochs on sine data (window 16, 3 sensors)."""
    from training.fit import FitConfig
    from training.pipeline import TrainConfig, train_bundle

    root = tmp_path_factory.mktemp("tiny")
    data = root / "normal.csv"
    sine_frame(3000).to_csv(data, index=False)
    config = TrainConfig(
        data=data,
        out=root / "bundle",
        family="dense",
        window=16,
        stride=2,
        hyperparameters={"hidden": (32, 8)},
        fit=FitConfig(epochs=8, patience=3, progress=False),
        name="tiny",
    )
    return train_bundle(config).bundle.path


@pytest.fixture(scope="session")
def plant_normal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 h (day 1, 00:00-12:00) of the simulated plant's normal data."""
    from training.simulator import PlantConfig, write

    path = tmp_path_factory.mktemp("plant") / "normal.parquet"
    write(PlantConfig(**PLANT, duration_s=12 * 3600, n_faults=0, seed=11), path)
    return path


def _train_plant(data: Path, out: Path, **options: Any) -> Path:
    from training.fit import FitConfig
    from training.pipeline import TrainConfig, train_bundle

    config = TrainConfig(
        data=data,
        out=out,
        family="dense",
        window=PLANT_WINDOW,
        fit=FitConfig(epochs=30, progress=False),
        name="plant",
        **options,
    )
    return train_bundle(config).bundle.path


@pytest.fixture(scope="session")
def plant_bundle(plant_normal: Path) -> Path:
    """A dense AE trained on ``plant_normal`` with the defaults."""
    return _train_plant(plant_normal, plant_normal.parent / "bundle")


#: One bundle per kind of machine in the plant (``train --assets``), first match wins.
PLANT_GROUPS = ("pump-*", "compressor-*")


@pytest.fixture(scope="session")
def plant_bundles_by_group(plant_normal: Path) -> dict[str, Path]:
    """The same model and settings as ``plant_bundle``, trained once per group of
    :data:`PLANT_GROUPS` on that group's assets only."""
    return {
        group: _train_plant(plant_normal, plant_normal.parent / f"bundle-{i}", assets=group)
        for i, group in enumerate(PLANT_GROUPS)
    }


@pytest.fixture(scope="session")
def plant_bundle_bias(plant_normal: Path) -> Path:
    """The same model (same seed) with the residual bias check at ``--bias-factor 1.25``
    (training.bias), the factor chosen in bench/results/detection.md (session 13)."""
    return _train_plant(plant_normal, plant_normal.parent / "bundle-bias", bias_factor=1.25)
