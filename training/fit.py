"""The training loop: mini-batch Adam on reconstruction loss with early stopping."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

TrainDevice = Literal["auto", "cpu", "cuda"]


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
            loss = nn.functional.mse_loss(model(batch), batch)
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


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        total += float(nn.functional.mse_loss(model(batch), batch)) * len(batch)
    return total / max(len(x), 1)
