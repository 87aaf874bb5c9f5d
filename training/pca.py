"""The PCA T²/Q baseline: the non-deep reference model, exported as a linear ONNX graph.

PCA is fitted per time step over sensors (``per_step=True``, the default): every reading of every
training window is a sample of the sensor vector, so the model learns the static correlations
between sensors (the plant's operating envelope) and nothing about dynamics. ``per_step=False``
fits PCA on the flattened window instead (``length × n_features`` variables, "dynamic PCA" with
lags up to the window length), which also captures short-term temporal correlation.

On a normalised reading ``d = z - center`` with ``P`` the retained principal axes and ``Λ`` their
variances:

* the residual ``r = (I - P Pᵀ) d`` gives Q (SPE) = ``Σ_f r_f²``, sensor ``f``'s share ``r_f²``;
* T² = ``dᵀ P Λ⁻¹ Pᵀ d``; its complete decomposition contributions (Alcala & Qin, 2009)
  ``c = (P Λ^-½ Pᵀ d)²`` are non-negative and sum to T².

The per-reading error is ``r² + t2_weight · c``; averaged over the window it is the bundle's
``sensor_error`` and its mean over sensors the ``score``, as for the autoencoders (with the
default ``t2_weight = 0`` the score is the window's mean Q per sensor). Fitting is one
eigendecomposition of the covariance (numpy); torch only carries the fixed matrices to ONNX.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from monitor.errors import ConfigError

#: Eigenvalues below this fraction of the largest are floored to it, so T² stays finite.
_EIGEN_FLOOR = 1e-6
#: Samples per chunk when accumulating the covariance (bounds the float64 copies).
_CHUNK = 1 << 16


class PCAModel(nn.Module):
    """PCA reconstruction with Q (and optionally T²) per-reading errors; see the module doc."""

    def __init__(
        self,
        length: int,
        n_features: int,
        n_components: int | None = None,
        explained_variance: float = 0.99,
        t2_weight: float = 0.0,
        per_step: bool = True,
    ) -> None:
        super().__init__()
        dim = n_features if per_step else length * n_features
        if n_components is not None and not 1 <= n_components < dim:
            raise ConfigError(f"pca n_components must be in 1..{dim - 1}, got {n_components}")
        if not 0.0 < explained_variance < 1.0:
            raise ConfigError(f"pca explained_variance must be in (0, 1), got {explained_variance}")
        if t2_weight < 0:
            raise ConfigError(f"pca t2_weight must be >= 0, got {t2_weight}")
        self.length, self.n_features, self.per_step = length, n_features, per_step
        self.n_components, self.explained_variance = n_components, explained_variance
        self.t2_weight = t2_weight
        #: Set by :meth:`fit_closed_form`: components kept and the variance share they explain.
        self.fitted_components = 0
        self.fitted_explained = 0.0
        self.center: torch.Tensor
        self.projector: torch.Tensor
        self.residual: torch.Tensor
        self.whitener: torch.Tensor
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("projector", torch.zeros(dim, dim))
        self.register_buffer("residual", torch.eye(dim))
        self.register_buffer("whitener", torch.zeros(dim, dim))

    def fit_closed_form(self, windows: npt.NDArray[np.float32]) -> None:
        """Fit on normalised training windows ``[n, length, n_features]``."""
        dim = self.center.numel()
        x = windows.reshape(-1, dim)  # per step: one sample per reading; else one per window
        n = len(x)
        if n <= dim:
            raise ConfigError(f"pca needs more than {dim} training samples, got {n}")
        center = x.mean(axis=0, dtype=np.float64)
        cov = np.zeros((dim, dim))
        for start in range(0, n, _CHUNK):
            d = x[start : start + _CHUNK].astype(np.float64) - center
            cov += d.T @ d
        cov /= n - 1
        eigval, eigvec = np.linalg.eigh(cov)
        eigval, eigvec = eigval[::-1].clip(min=0.0), eigvec[:, ::-1]
        share = np.cumsum(eigval) / max(float(eigval.sum()), np.finfo(float).tiny)
        k = self.n_components or int(np.searchsorted(share, self.explained_variance) + 1)
        k = min(k, dim - 1)  # all components would reconstruct everything: Q ≡ 0
        p = eigvec[:, :k]
        lam = np.maximum(eigval[:k], _EIGEN_FLOOR * max(float(eigval[0]), 1e-12))
        projector = p @ p.T
        self.fitted_components, self.fitted_explained = k, float(share[k - 1])
        with torch.no_grad():
            self.center.copy_(torch.from_numpy(center))
            self.projector.copy_(torch.from_numpy(projector))
            self.residual.copy_(torch.from_numpy(np.eye(dim) - projector))
            self.whitener.copy_(torch.from_numpy((p / np.sqrt(lam)) @ p.T))

    def fitted_hyperparameters(self) -> dict[str, Any]:
        """The components :meth:`fit_closed_form` kept and the variance share they explain."""
        return {
            "components_fitted": self.fitted_components,
            "explained_variance_fitted": self.fitted_explained,
        }

    def _centered(self, z: torch.Tensor) -> torch.Tensor:
        return z - self.center.view(-1, self.n_features)

    def _map(self, d: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        # Per step the matrix acts on the sensor axis of [b, L, F] directly, no reshape needed.
        if self.per_step:
            return d @ matrix
        return (d.flatten(1) @ matrix).view(-1, self.length, self.n_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z - self._map(self._centered(z), self.residual)

    def pointwise_error(self, z: torch.Tensor) -> torch.Tensor:
        """Squared residual (Q contributions) plus ``t2_weight`` × T² contributions."""
        d = self._centered(z)
        error = self._map(d, self.residual) ** 2
        if self.t2_weight:
            error = error + self.t2_weight * self._map(d, self.whitener) ** 2
        return error
