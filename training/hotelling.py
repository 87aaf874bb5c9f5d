"""Hotelling T² on window statistics: a closed-form model of where normal windows sit.

A reconstruction model compares each reading with what the other readings say it should be; a
window whose sensors keep their relations but move together (a throttled valve moving the
pump along its curve, a slow leak) reconstructs well and scores low. This family scores where
the window *as a whole* sits instead: per sensor, its mean over the window (level) and, with
``roughness`` (the default), its mean absolute change from one reading to the next (how much it
fluctuates, which a change in vibration or flow regime moves). On those ``s`` (``2 ×
n_features`` values for a window of normalised readings), fitted on training windows:

* ``d = s − center``, ``C`` their covariance shrunk toward its mean variance,
  ``C_α = (1 − α) C + α (tr C / p) I`` with ``α = shrinkage``, so a few hundred overlapping
  windows still give a well-conditioned estimate;
* T² = ``dᵀ C_α⁻¹ d``; its complete decomposition contributions (Alcala & Qin, 2009)
  ``c = (C_α^-½ d)²`` are non-negative and sum to T², and sensor ``f``'s error is the sum of the
  contributions of its statistics, so attribution names the sensor whose level or fluctuation
  moved.

The bundle's ``sensor_error`` is that per-sensor share and its ``score`` the mean over sensors,
``T² / n_features``, as for every family. Nothing is reconstructed (``RECONSTRUCTS = False``),
so checks built on a reconstruction residual (``--bias-factor``) do not apply. Measured on SKAB
and the simulator in ``bench/results/detection.md`` (session 18).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from monitor.errors import ConfigError

#: Eigenvalues of the shrunk covariance below this fraction of the largest are floored to it.
_EIGEN_FLOOR = 1e-9


class HotellingModel(nn.Module):
    """T² of each window's per-sensor mean (and mean absolute change); see the module doc."""

    #: The model scores window statistics and has no reconstruction of the readings.
    RECONSTRUCTS = False

    def __init__(
        self,
        length: int,
        n_features: int,
        shrinkage: float = 0.1,
        roughness: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= shrinkage <= 1.0:
            raise ConfigError(f"hotelling shrinkage must be in [0, 1], got {shrinkage}")
        if roughness and length < 2:
            raise ConfigError(f"hotelling roughness needs a window of 2 or more, got {length}")
        self.length, self.n_features = length, n_features
        self.shrinkage, self.roughness = float(shrinkage), bool(roughness)
        dim = n_features * (2 if roughness else 1)
        self.center: torch.Tensor
        self.whitener: torch.Tensor
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("whitener", torch.eye(dim))

    def statistics(self, z: torch.Tensor) -> torch.Tensor:
        """``[batch, length, n_features]`` normalised windows → ``[batch, p]`` statistics."""
        level = z.mean(dim=1)
        if not self.roughness:
            return level
        change = (z[:, 1:] - z[:, :-1]).abs().mean(dim=1)
        return torch.cat([level, change], dim=1)

    @torch.no_grad()
    def fit_closed_form(self, windows: npt.NDArray[np.float32]) -> None:
        """Fit on normalised training windows ``[n, length, n_features]``."""
        s = self.statistics(torch.from_numpy(np.ascontiguousarray(windows))).double().numpy()
        n, p = s.shape
        if n < 2:
            raise ConfigError(f"hotelling needs at least 2 training windows, got {n}")
        center = s.mean(axis=0)
        cov = np.cov(s, rowvar=False).reshape(p, p)
        mean_variance = float(np.trace(cov)) / p
        if not mean_variance > 0:
            raise ConfigError("hotelling: the training windows' statistics do not vary")
        cov = (1.0 - self.shrinkage) * cov + self.shrinkage * mean_variance * np.eye(p)
        eigval, eigvec = np.linalg.eigh(cov)
        eigval = np.maximum(eigval, _EIGEN_FLOOR * float(eigval.max()))
        whitener = (eigvec / np.sqrt(eigval)) @ eigvec.T  # symmetric C^-½
        self.center.copy_(torch.from_numpy(center))
        self.whitener.copy_(torch.from_numpy(whitener))

    def fitted_hyperparameters(self) -> dict[str, Any]:
        """The shrinkage and statistics in effect, defaults included."""
        return {"shrinkage": self.shrinkage, "roughness": self.roughness}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """No reconstruction: the window itself (see ``RECONSTRUCTS``)."""
        return z

    def pointwise_error(self, z: torch.Tensor) -> torch.Tensor:
        """``[batch, 1, n_features]``: each sensor's share of the window's T²."""
        contribution = ((self.statistics(z) - self.center) @ self.whitener).square()
        per_sensor = contribution.view(
            -1, contribution.shape[1] // self.n_features, self.n_features
        )
        return per_sensor.sum(dim=1, keepdim=True)
