"""The training loop: mini-batch Adam on reconstruction loss with early stopping.

Two optional input corruptions regularise the autoencoders (both off by default). The loss is
always on the *clean* window, so the model learns to reconstruct normal behaviour from a
corrupted view of it rather than to copy its input:

* **denoising** (``noise_std``): Gaussian noise of that standard deviation is added to the
  normalised training windows;
* **masked reconstruction** (``mask_fraction``): that share of the input is set to 0 (the
  training mean): single readings (``mask_unit="reading"``), whole sensors of a window
  (``"sensor"``) or whole time steps (``"time"``), drawn independently per window.

Validation loss (early stopping) is always on clean input. Models with a ``fit_closed_form``
method (the PCA baseline) are fitted in one step; corruption does not apply to them
(``train_bundle`` refuses the options for them; called directly, this loop warns and ignores).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm.auto import tqdm

from monitor.errors import ConfigError
from training.models import AuxiliaryLoss, pointwise_error

logger = logging.getLogger(__name__)

TrainDevice = Literal["auto", "cpu", "cuda"]
MaskUnit = Literal["reading", "sensor", "time"]


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    #: Stop after this many epochs without a relative validation improvement of ``min_delta``.
    patience: int = 6
    min_delta: float = 1e-3
    seed: int = 0
    device: TrainDevice = "auto"
    progress: bool = True
    #: Denoising: std of Gaussian noise added to normalised training inputs (0 = off).
    noise_std: float = 0.0
    #: Masked reconstruction: share of the input zeroed per training window (0 = off).
    mask_fraction: float = 0.0
    mask_unit: MaskUnit = "reading"

    def __post_init__(self) -> None:
        if not self.noise_std >= 0.0:
            raise ConfigError(f"noise std must be >= 0, got {self.noise_std}")
        if not 0.0 <= self.mask_fraction < 1.0:
            raise ConfigError(f"mask fraction must be in [0, 1), got {self.mask_fraction}")
        if self.mask_unit not in ("reading", "sensor", "time"):
            raise ConfigError(f"mask unit must be reading, sensor or time, got {self.mask_unit!r}")


@dataclass
class FitResult:
    model: nn.Module  # best weights, eval mode, on CPU
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    device: str = "cpu"


def resolve_device(device: TrainDevice) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            logger.warning("CUDA requested but not available to torch; training on CPU")
            return torch.device("cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    # Third-party code may still draw from the global RNG.
    np.random.seed(seed)


def fit(
    model: nn.Module,
    train: npt.NDArray[np.float32],
    val: npt.NDArray[np.float32],
    config: FitConfig,
) -> FitResult:
    """Fit ``model`` to reconstruct normalised windows; keep the best validation epoch."""
    seed_everything(config.seed)
    closed_form = getattr(model, "fit_closed_form", None)
    if closed_form is not None:
        return _fit_closed_form(model, closed_form, train, val, config)
    device = resolve_device(config.device)
    model = model.to(device)
    x_train = torch.from_numpy(train).to(device)
    x_val = torch.from_numpy(val).to(device)
    optimiser = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    result = FitResult(model=model, device=str(device))
    best = math.inf
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    bar = tqdm(
        range(config.epochs),
        desc="training",
        unit="epoch",
        disable=not config.progress or None,
        leave=False,
    )
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = x_train[order[start : start + config.batch_size]]
            optimiser.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(_corrupt(batch, config, generator)), batch)
            if isinstance(model, AuxiliaryLoss):
                loss = loss + model.auxiliary_loss()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += loss.detach().item() * len(batch)
        result.train_loss.append(total / len(x_train))
        result.val_loss.append(_evaluate(model, x_val, config.batch_size))
        bar.set_postfix(train=f"{result.train_loss[-1]:.4f}", val=f"{result.val_loss[-1]:.4f}")
        if result.val_loss[-1] < best * (1.0 - config.min_delta):
            best, stale, result.best_epoch = result.val_loss[-1], 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                result.stopped_early = True
                break
    bar.close()
    model.load_state_dict(best_state)
    result.model = model.cpu().eval()
    logger.info(
        "trained %d epochs on %s; best validation loss %.5f at epoch %d",
        len(result.train_loss),
        device,
        best,
        result.best_epoch + 1,
    )
    return result


def _corrupt(batch: torch.Tensor, config: FitConfig, generator: torch.Generator) -> torch.Tensor:
    """The training input: ``batch`` with the configured noise and mask (or as is)."""
    if not config.noise_std and not config.mask_fraction:
        return batch
    # Draw on the CPU generator so a seed gives the same corruption on every device.
    x = batch
    if config.noise_std:
        noise = torch.randn(batch.shape, generator=generator) * config.noise_std
        x = x + noise.to(batch.device)
    if config.mask_fraction:
        b, length, n_features = batch.shape
        shape = {
            "reading": (b, length, n_features),
            "sensor": (b, 1, n_features),
            "time": (b, length, 1),
        }[config.mask_unit]
        keep = torch.rand(shape, generator=generator) >= config.mask_fraction
        x = x * keep.to(batch.device, batch.dtype)
    return x


def _fit_closed_form(
    model: nn.Module,
    fit_fn: Callable[[npt.NDArray[np.float32]], None],
    train: npt.NDArray[np.float32],
    val: npt.NDArray[np.float32],
    config: FitConfig,
) -> FitResult:
    if config.noise_std or config.mask_fraction:
        logger.warning("noise/mask options do not apply to a closed-form model; ignored")
    model = model.cpu()
    fit_fn(train)
    result = FitResult(model=model.eval(), device="cpu")
    # The loss of a closed-form model is its mean error as scored (for PCA without T², the
    # reconstruction MSE; Hotelling T² reconstructs nothing, its error is the T² share).
    for losses, x in ((result.train_loss, train), (result.val_loss, val)):
        losses.append(_evaluate(model, torch.from_numpy(x), config.batch_size, _mean_error))
    logger.info("fitted in closed form; validation loss %.5f", result.val_loss[0])
    return result


def _reconstruction_mse(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch), batch)


def _mean_error(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return pointwise_error(model, batch).mean()


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int,
    loss: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _reconstruction_mse,
) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        total += float(loss(model, batch)) * len(batch)
    return total / max(len(x), 1)
