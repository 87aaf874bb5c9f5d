"""Autoencoder families: bare ``nn.Module`` s over windows ``[batch, length, n_features]``.

Each takes normalised windows and returns their reconstruction of the same shape. Training and
export live elsewhere (:mod:`training.fit`, :mod:`training.export`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from monitor.errors import ConfigError


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


_FAMILIES: dict[str, Callable[..., nn.Module]] = {"dense": DenseAE, "conv": ConvAE}
FAMILIES = tuple(_FAMILIES)


def build_model(family: str, length: int, n_features: int, **hyper: Any) -> nn.Module:
    """Instantiate a model family by name (see :data:`FAMILIES`)."""
    try:
        factory = _FAMILIES[family]
    except KeyError:
        raise ConfigError(
            f"unknown model family {family!r} (choose from {', '.join(FAMILIES)})"
        ) from None
    return factory(length, n_features, **hyper)
