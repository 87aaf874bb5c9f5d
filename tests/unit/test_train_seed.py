"""``--seed`` makes training reproducible whatever ran before in the process."""

from __future__ import annotations

from pathlib import Path

import torch

from monitor.bundle import load_bundle
from training.fit import FitConfig
from training.pipeline import TrainConfig, train_bundle


def _train(data: Path, out: Path, seed: int) -> tuple[float, str]:
    result = train_bundle(
        TrainConfig(
            data=data,
            out=out,
            family="dense",
            window=8,
            fit=FitConfig(epochs=2, progress=False, seed=seed),
            report=False,
        )
    )
    m = load_bundle(result.bundle.path).manifest
    return m.threshold.value, m.onnx.sha256


def test_same_seed_same_bundle_despite_earlier_random_draws(tmp_path: Path) -> None:
    from tests.conftest import sine_frame

    data = tmp_path / "normal.csv"
    sine_frame(600).to_csv(data, index=False)
    torch.manual_seed(1)
    first = _train(data, tmp_path / "a", seed=3)
    torch.rand(1000)  # the global RNG moves on, as it does between runs in one process
    second = _train(data, tmp_path / "b", seed=3)
    other = _train(data, tmp_path / "c", seed=4)
    assert second == first
    assert other != first
