"""Export a trained autoencoder as the bundle's self-contained ONNX scoring graph."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from monitor.bundle import INPUT_NAME, OUTPUT_SCORE, OUTPUT_SENSOR_ERROR
from monitor.errors import BundleError
from training.bias import BiasCheck
from training.flatline import Flatline
from training.models import PointwiseError, pointwise_error
from training.modes import ModeThresholds
from training.windows import StandardScaler

logger = logging.getLogger(__name__)

OPSET = 18


class ScoringGraph(nn.Module):
    """Raw window in, ``(score, sensor_error)`` out: the scaler and the error maths included.

    ``sensor_error[b, f]`` is the mean squared reconstruction error of sensor ``f`` over the
    window in normalised units (for a family with its own ``pointwise_error``, such as the PCA
    baseline, the mean of that error), times the sensor's weight when ``sensor_weight`` is given
    (see :func:`balanced_weights`), times the window's operating-mode scale when ``modes`` is
    given (see :mod:`training.modes`), plus the flatline penalty when a sensor checked by
    ``flatline`` has identical readings throughout the window (see :mod:`training.flatline`),
    plus the bias penalty when the window's mean signed residual of a sensor exceeds its limit
    in ``bias`` (see :mod:`training.bias`); ``score[b]`` is its mean over sensors, so each
    sensor's share of the score is ``sensor_error / (n_features * score)``, for every family.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        scaler: StandardScaler,
        sensor_weight: npt.NDArray[np.floating] | None = None,
        modes: ModeThresholds | None = None,
        flatline: Flatline | None = None,
        bias: BiasCheck | None = None,
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.mean: torch.Tensor
        self.inv_scale: torch.Tensor
        self.register_buffer("mean", torch.tensor(scaler.mean, dtype=torch.float32))
        self.register_buffer("inv_scale", torch.tensor(1.0 / scaler.scale, dtype=torch.float32))
        # Unweighted graphs keep no multiplication by ones (it would cost every window a pass).
        self.sensor_weight: torch.Tensor | None
        self.register_buffer(
            "sensor_weight",
            None
            if sensor_weight is None
            else torch.tensor(np.asarray(sensor_weight), dtype=torch.float32),
        )
        self.mode_centroids: torch.Tensor | None
        self.mode_scale: torch.Tensor | None
        self.register_buffer(
            "mode_centroids",
            None if modes is None else torch.tensor(modes.centroids, dtype=torch.float32),
        )
        self.register_buffer(
            "mode_scale", None if modes is None else torch.tensor(modes.scale, dtype=torch.float32)
        )
        # Penalty per sensor: flatline.penalty where checked, 0 elsewhere.
        self.flat_penalty: torch.Tensor | None
        self.register_buffer(
            "flat_penalty",
            None
            if flatline is None
            else torch.tensor(flatline.checked * flatline.penalty, dtype=torch.float32),
        )
        self.inv_bias_limit: torch.Tensor | None
        self.register_buffer(
            "inv_bias_limit",
            None if bias is None else torch.tensor(1.0 / bias.limit, dtype=torch.float32),
        )
        self.bias_unit = 0.0 if bias is None else float(bias.unit)

    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (window - self.mean) * self.inv_scale
        residual = None
        if self.inv_bias_limit is None or isinstance(self.autoencoder, PointwiseError):
            error = pointwise_error(self.autoencoder, z)
        else:
            # One reconstruction for both the error and the bias.
            residual = z - self.autoencoder(z)
            error = residual.square()
        sensor_error = error.mean(dim=1)
        if self.sensor_weight is not None:
            sensor_error = sensor_error * self.sensor_weight
        if self.mode_centroids is not None and self.mode_scale is not None:
            # The window's operating point (mean per sensor) picks the nearest mode's scale.
            point = z.mean(dim=1)
            distance = (point.unsqueeze(1) - self.mode_centroids).square().sum(dim=2)
            sensor_error = sensor_error * self.mode_scale[distance.argmin(dim=1)].unsqueeze(1)
        if self.flat_penalty is not None:
            flat = window.amax(dim=1) == window.amin(dim=1)
            sensor_error = sensor_error + flat.to(sensor_error.dtype) * self.flat_penalty
        if self.inv_bias_limit is not None:
            if residual is None:
                residual = z - self.autoencoder(z)
            ratio = residual.mean(dim=1).abs() * self.inv_bias_limit
            over = (ratio > 1.0).to(ratio.dtype)
            sensor_error = sensor_error + over * ratio.square() * self.bias_unit
        return sensor_error.mean(dim=1), sensor_error


def balanced_weights(sensor_error: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Per-sensor weights under which every sensor's mean error on ``sensor_error`` (normal
    validation windows × sensors) is the same, the mean of the unweighted ones.

    Unweighted, the sensors the model reconstructs worst on normal data (e.g. vibration RMS)
    make most of the score and its noise, and a clear departure of a well-reconstructed
    sensor (a pressure, a flow) moves the score little. Weighted, each sensor's error counts in
    units of its own normal level. A sensor whose normal error is (near) zero gets at most
    ``1e6`` times the smallest weight, not an infinite one.
    """
    level = np.asarray(sensor_error, np.float64).mean(axis=0)
    if level.ndim != 1 or not len(level) or not np.all(np.isfinite(level)):
        raise ValueError("need finite validation errors, windows × sensors")
    floor = max(float(level.max()) * 1e-6, float(np.finfo(np.float32).tiny))
    level = np.maximum(level, floor)
    return np.asarray(level.mean() / level, np.float64)


@torch.no_grad()
def score_windows(
    graph: ScoringGraph, windows: npt.NDArray[np.float32], batch_size: int = 4096
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Score raw windows with the torch graph (used for calibration and parity)."""
    graph.eval()
    scores, errors = [], []
    for start in range(0, len(windows), batch_size):
        s, e = graph(torch.from_numpy(np.ascontiguousarray(windows[start : start + batch_size])))
        scores.append(s.numpy())
        errors.append(e.numpy())
    return np.concatenate(scores), np.concatenate(errors)


def export_onnx(graph: ScoringGraph, path: Path, length: int, n_features: int) -> None:
    """Write ``graph`` to ``path`` with a dynamic batch axis and opset :data:`OPSET`."""
    graph.eval()
    example = torch.zeros(2, length, n_features)
    batch = torch.export.Dim("batch", min=1)
    # The exporter narrates its progress on stdout and in its loggers, and warns about its own
    # internals (and that torchvision, which plantwatch does not use, is absent).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_SCORE, OUTPUT_SENSOR_ERROR],
            opset_version=OPSET,
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise BundleError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


@contextlib.contextmanager
def _quiet_loggers(
    names: tuple[str, ...] = ("torch.onnx", "onnxscript", "onnx_ir"),
) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_parity(
    onnx_path: Path,
    graph: ScoringGraph,
    windows: npt.NDArray[np.float32],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> float:
    """Compare ONNX Runtime with torch on real windows; return the max absolute difference.

    Raises :class:`BundleError` if any output differs by more than ``atol + rtol * |torch|``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want_score, want_error = score_windows(graph, windows)
    got_score, got_error = session.run(
        [OUTPUT_SCORE, OUTPUT_SENSOR_ERROR], {INPUT_NAME: np.ascontiguousarray(windows)}
    )
    worst = 0.0
    for name, want, got in (
        ("score", want_score, got_score),
        ("sensor_error", want_error, got_error),
    ):
        diff = np.abs(got - want)
        worst = max(worst, float(diff.max(initial=0.0)))
        limit = atol + rtol * np.abs(want)
        if np.any(diff > limit):
            raise BundleError(
                f"{onnx_path}: ONNX Runtime {name} differs from torch by up to "
                f"{float(diff.max()):.3g} (tolerance {atol:g} + {rtol:g}·|value|); export refused"
            )
    logger.info("onnx parity on %d windows: max abs diff %.3g", len(windows), worst)
    return worst
