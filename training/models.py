"""Model families: bare ``nn.Module`` s over windows ``[batch, length, n_features]``.

Each takes normalised windows and returns their reconstruction of the same shape. Training and
export live elsewhere (:mod:`training.fit`, :mod:`training.export`). Two optional hooks let a
family depart from plain gradient-trained reconstruction without the trainer or exporter knowing
it by name:

* ``pointwise_error(z) -> [batch, length, n_features]``: the per-reading error the score is built
  from (default: squared reconstruction error; the PCA baseline adds its T² contributions), or
  ``[batch, 1, n_features]`` for a family that scores the window as a whole (Hotelling T² on
  window statistics, which sets ``RECONSTRUCTS = False``);
* ``auxiliary_loss() -> scalar``: a term added to the training loss after each forward pass
  (the VAE's KL divergence);
* ``fit_closed_form(windows)``: fitted in one step instead of by gradient descent (PCA,
  Hotelling);
* ``fitted_hyperparameters() -> dict``: what the fit chose or used, recorded in the manifest's
  hyperparameters (PCA's components kept, Hotelling's shrinkage and statistics).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from monitor.errors import ConfigError
from training.hotelling import HotellingModel
from training.pca import PCAModel


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them; the last layer stays linear."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DenseAE(nn.Module):
    """Fully connected autoencoder over the flattened window, linear bottleneck."""

    def __init__(
        self,
        length: int,
        n_features: int,
        hidden: Sequence[int] = (128, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.length, self.n_features = length, n_features
        sizes = [length * n_features, *hidden]
        self.encoder = _mlp(sizes, dropout)
        self.decoder = _mlp(sizes[::-1], dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.decoder(self.encoder(x.flatten(1)))
        return y.view(-1, self.length, self.n_features)


class ConvAE(nn.Module):
    """1-D convolutional autoencoder over time (the SKAB Conv-AE reference architecture).

    Each encoder layer halves the time axis; the decoder mirrors it with transposed convolutions
    and ends in a same-length convolution back to ``n_features`` channels.
    """

    def __init__(
        self,
        length: int,
        n_features: int,
        channels: Sequence[int] = (32, 16),
        kernel_size: int = 7,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        down = 2 ** len(channels)
        if length % down:
            raise ConfigError(
                f"conv model needs a window length divisible by {down}, got --window {length}"
            )
        pad = kernel_size // 2
        enc: list[nn.Module] = []
        c_in = n_features
        for i, c in enumerate(channels):
            enc += [nn.Conv1d(c_in, c, kernel_size, stride=2, padding=pad), nn.ReLU()]
            if i == 0 and dropout:
                enc.append(nn.Dropout(dropout))
            c_in = c
        dec: list[nn.Module] = []
        for i, c in enumerate(reversed(channels)):
            dec += [
                nn.ConvTranspose1d(c_in, c, kernel_size, stride=2, padding=pad, output_padding=1),
                nn.ReLU(),
            ]
            if i == 0 and dropout:
                dec.append(nn.Dropout(dropout))
            c_in = c
        dec.append(nn.Conv1d(c_in, n_features, kernel_size, padding=pad))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Conv1d wants channels (sensors) before time.
        y: torch.Tensor = self.decoder(self.encoder(x.transpose(1, 2)))
        return y.transpose(1, 2)


class LSTMAE(nn.Module):
    """Sequence-to-sequence LSTM autoencoder.

    The encoder LSTM's last hidden state is projected to a latent code, repeated once per time
    step as the decoder LSTM's input, and a linear layer maps the decoder states back to sensors.
    Exports with the dynamo exporter (ONNX ``LSTM`` op) with a dynamic batch axis.
    """

    def __init__(
        self,
        length: int,
        n_features: int,
        hidden: int = 64,
        latent: int = 32,
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.length = length
        # nn.LSTM applies dropout only between stacked layers (and warns otherwise).
        between = dropout if num_layers > 1 else 0.0
        self.encoder = nn.LSTM(n_features, hidden, num_layers, batch_first=True, dropout=between)
        self.to_latent = nn.Linear(hidden, latent)
        self.decoder = nn.LSTM(latent, hidden, num_layers, batch_first=True, dropout=between)
        self.output = nn.Linear(hidden, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(x)
        code = self.to_latent(h[-1])
        y, _ = self.decoder(code.unsqueeze(1).expand(-1, self.length, -1))
        out: torch.Tensor = self.output(y)
        return out


class DenseVAE(nn.Module):
    """Variational autoencoder over the flattened window (Gaussian latent, dense layers).

    Training samples the latent code with the reparameterisation trick and exposes the KL term
    through :meth:`auxiliary_loss`; in eval mode (and so in the exported graph) the decoder reads
    the posterior mean, so scoring is deterministic. The loss is
    ``MSE + beta · KL / (length · n_features)``: KL per reconstructed value, matching the
    per-value MSE (``beta = 0.5`` is the ELBO of a unit-variance Gaussian decoder).
    """

    def __init__(
        self,
        length: int,
        n_features: int,
        hidden: Sequence[int] = (128,),
        latent: int = 16,
        beta: float = 0.1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ConfigError("vae model needs at least one hidden layer")
        self.length, self.n_features, self.beta = length, n_features, beta
        sizes = [length * n_features, *hidden]
        self.encoder = nn.Sequential(_mlp(sizes, dropout), nn.ReLU())
        self.mu = nn.Linear(sizes[-1], latent)
        self.logvar = nn.Linear(sizes[-1], latent)
        self.decoder = _mlp([latent, *sizes[::-1]], dropout)
        self._kl: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x.flatten(1))
        mu: torch.Tensor = self.mu(h)
        if self.training:
            logvar: torch.Tensor = self.logvar(h).clamp(-10.0, 10.0)
            code = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean()
            self._kl = kl / (self.length * self.n_features)
        else:
            code = mu
        y: torch.Tensor = self.decoder(code)
        return y.view(-1, self.length, self.n_features)

    def auxiliary_loss(self) -> torch.Tensor:
        """``beta`` × the KL term of the last training forward pass."""
        if self._kl is None:
            raise RuntimeError("auxiliary_loss() before a training forward pass")
        return self.beta * self._kl


@runtime_checkable
class PointwiseError(Protocol):
    def pointwise_error(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AuxiliaryLoss(Protocol):
    def auxiliary_loss(self) -> torch.Tensor: ...


def pointwise_error(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Per-reading error ``[batch, length, n_features]`` of ``model`` on normalised windows."""
    if isinstance(model, PointwiseError):
        return model.pointwise_error(z)
    error: torch.Tensor = (model(z) - z) ** 2
    return error


_FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "dense": DenseAE,
    "conv": ConvAE,
    "lstm": LSTMAE,
    "vae": DenseVAE,
    "pca": PCAModel,
    "hotelling": HotellingModel,
}
FAMILIES = tuple(_FAMILIES)


def fitted_in_closed_form(family: str) -> bool:
    """Whether ``family`` is fitted in one step (``fit_closed_form``) instead of by gradient
    descent, so that training options of the descent (input corruption) do not apply."""
    return hasattr(_FAMILIES.get(family), "fit_closed_form")


def reconstructs(family: str) -> bool:
    """Whether ``family``'s forward pass reconstructs the window, so that checks on the
    reconstruction residual (``--bias-factor``) apply to it."""
    return bool(getattr(_FAMILIES.get(family), "RECONSTRUCTS", True))


def build_model(family: str, length: int, n_features: int, **hyper: Any) -> nn.Module:
    """Instantiate a model family by name (see :data:`FAMILIES`)."""
    try:
        factory = _FAMILIES[family]
    except KeyError:
        raise ConfigError(
            f"unknown model family {family!r} (choose from {', '.join(FAMILIES)})"
        ) from None
    return factory(length, n_features, **hyper)
