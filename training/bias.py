"""Residual bias check, calibrated on normal data and baked into the scoring graph.

A reconstruction model's score is the mean *squared* error over a window: a small, steady
offset between what a sensor reads and what the other sensors say it should read (a leak
between the machine and its flow meter, a throttled valve moving the pump along its curve, a
transmitter drifting) adds ``offset²`` to a sensor whose normal error is mostly noise, and hides
in it. The *signed* residual averaged over the window cancels that noise, while the offset stays:
``residual = z − reconstruction`` (normalised units), its mean over the window per sensor is the
window's bias.

With ``TrainConfig.bias_factor = F > 1``, ``plantwatch train`` sets each sensor's limit to
``F`` × the largest absolute bias of that sensor over the normal validation windows (at least
:data:`MIN_LIMIT`; F above 1 keeps every validation window, on which the threshold was
calibrated, clear of the penalty), and the graph adds ``(bias / limit)²`` × ``n_features`` ×
threshold to the error of each sensor whose bias exceeds its limit: one such sensor alone puts
the window's score above the threshold, by the square of how far it is over its limit, and
attribution names it. The manifest records the limits; nothing in the service changes. Measured in
``bench/results/detection.md`` (session 13).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

#: Smallest limit (normalised units, i.e. standard deviations of the sensor in training): a
#: sensor the model reconstructs without any bias in validation is not flagged for noise.
MIN_LIMIT = 1e-3


@dataclass(frozen=True)
class BiasCheck:
    """Per-sensor limits on the window's mean signed residual, and what exceeding one costs."""

    #: Per sensor, in feature order, normalised units.
    limit: npt.NDArray[np.float64]
    #: The multiple of the largest validation bias the limits were set at.
    factor: float
    #: ``n_features`` × threshold: a sensor at ``ratio`` = bias / limit > 1 adds
    #: ``ratio²`` × this to its error.
    unit: float

    def to_json(self, features: Sequence[str]) -> dict[str, object]:
        return {
            "bias_factor": self.factor,
            "bias_limits": {f: float(v) for f, v in zip(features, self.limit, strict=True)},
        }


@torch.no_grad()
def window_bias(
    model: nn.Module, z: npt.NDArray[np.float32], batch_size: int = 4096
) -> npt.NDArray[np.float32]:
    """Mean signed residual ``z − model(z)`` per window and sensor, for normalised windows
    ``[n, length, n_features]``: ``[n, n_features]``."""
    model.eval()
    out = []
    for start in range(0, len(z), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(z[start : start + batch_size]))
        out.append((batch - model(batch)).mean(dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, z.shape[2]), np.float32)


def fit_bias(bias: npt.NDArray[np.floating], factor: float, threshold: float) -> BiasCheck:
    """The check for the validation windows' biases ``bias`` ([windows, sensors]) at
    ``factor`` × their largest absolute value per sensor."""
    b = np.abs(np.asarray(bias, np.float64))
    if b.ndim != 2 or not len(b) or not np.all(np.isfinite(b)):
        raise ValueError("need finite validation biases, windows × sensors")
    if not factor > 1:
        # At most 1, some validation windows would be penalised, and the threshold calibrated on
        # their unpenalised scores would no longer describe the graph's.
        raise ValueError(f"the bias factor must be above 1, got {factor}")
    limit = np.maximum(factor * b.max(axis=0), MIN_LIMIT)
    return BiasCheck(limit=limit, factor=float(factor), unit=b.shape[1] * float(threshold))
