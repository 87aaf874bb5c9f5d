"""``plantwatch train``: data → windows → autoencoder → threshold → verified ONNX bundle."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
import torch

import monitor
from monitor.bundle import (
    MODEL_FILE,
    SCHEMA_VERSION,
    Bundle,
    Manifest,
    ModelSpec,
    OnnxSpec,
    ScalerSpec,
    TrainingData,
    WindowSpec,
    load_bundle,
    sha256_file,
    write_manifest,
)
from monitor.errors import ConfigError, DataError
from training.bias import BiasCheck, fit_bias, window_bias
from training.calibrate import SENSOR_WEIGHTINGS, QuantileRule, ThresholdRule, summarize
from training.data import Dataset, load_training_data
from training.export import (
    OPSET,
    ScoringGraph,
    balanced_weights,
    check_parity,
    export_onnx,
    score_windows,
)
from training.fit import FitConfig, fit, seed_everything
from training.flatline import FLATLINE_MODES, Flatline, fit_flatline
from training.models import build_model, fitted_in_closed_form, reconstructs
from training.modes import ModeThresholds, fit_modes, operating_points
from training.report import write_report
from training.windows import StandardScaler, time_split, windows_from_segments

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
#: Validation windows used for the ONNX parity check (all of them would only cost time).
PARITY_WINDOWS = 2048


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    family: str = "dense"
    window: int = 32
    stride: int = 1
    columns: tuple[str, ...] | None = None
    timestamp_column: str | None = "timestamp"
    asset_column: str | None = "asset"
    label_column: str = "label"
    interval_s: float | None = None
    assets: str | None = None
    validation_fraction: float = 0.2
    #: :class:`~training.calibrate.QuantileRule` (default) or :class:`~training.calibrate.PotRule`
    #: (see :func:`training.calibrate.build_rule`); recorded in the manifest's ``threshold``.
    threshold: ThresholdRule = field(default_factory=QuantileRule)
    fit: FitConfig = field(default_factory=FitConfig)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    #: Cap on training windows (an even subsample beyond it) to bound time and memory.
    max_train_windows: int = 100_000
    #: Write the training report (PNG plots, summary) beside the model.
    report: bool = True
    #: ``"none"`` (default): the score is the plain mean of the sensors' errors;
    #: ``"balanced"``: each sensor's error is first divided by its mean on the validation
    #: windows (relative to the mean over sensors: :func:`training.export.balanced_weights`),
    #: the weights baked into the graph. Measured in bench/results/detection.md (session 9).
    sensor_weighting: str = "none"
    #: Operating modes with a threshold each (:mod:`training.modes`); 0 or 1: one threshold.
    modes: int = 0
    #: ``"auto"``: a window in which a sensor that always varies in normal data is exactly
    #: constant scores at least twice the threshold (:mod:`training.flatline`); ``"off"``.
    flatline: str = "auto"
    #: Above 1: a window whose mean signed residual of a sensor exceeds this multiple of the
    #: largest one on the validation windows scores above the threshold (:mod:`training.bias`);
    #: 0: no such check.
    bias_factor: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    bundle: Bundle
    report: list[Path]


def train_bundle(config: TrainConfig) -> TrainResult:
    """Train on normal data and write a verified bundle to ``config.out``."""
    if config.window < 2:
        raise ConfigError(f"--window must be at least 2, got {config.window}")
    if config.stride < 1:
        raise ConfigError(f"--stride must be at least 1, got {config.stride}")
    if config.flatline not in FLATLINE_MODES:
        raise ConfigError(
            f"--flatline must be one of {', '.join(FLATLINE_MODES)}, got {config.flatline!r}"
        )
    if not (config.bias_factor == 0 or config.bias_factor > 1):
        raise ConfigError(f"--bias-factor must be 0 (off) or above 1, got {config.bias_factor}")
    if config.bias_factor and not reconstructs(config.family):
        raise ConfigError(
            f"--bias-factor checks a reconstruction residual; --model {config.family} "
            "reconstructs nothing (leave it out)"
        )
    if config.modes < 0:
        raise ConfigError(f"--modes must be 0 (one threshold) or more, got {config.modes}")
    if fitted_in_closed_form(config.family) and (config.fit.noise_std or config.fit.mask_fraction):
        raise ConfigError(
            "--noise-std and --mask-fraction corrupt the input of a model trained by gradient "
            f"descent; --model {config.family} is fitted in closed form (leave them out)"
        )
    if config.sensor_weighting not in SENSOR_WEIGHTINGS:
        raise ConfigError(
            f"--sensor-weighting must be one of {', '.join(SENSOR_WEIGHTINGS)}, "
            f"got {config.sensor_weighting!r}"
        )
    dataset = load_training_data(
        config.data,
        columns=config.columns,
        timestamp_column=config.timestamp_column,
        asset_column=config.asset_column,
        label_column=config.label_column,
        interval_s=config.interval_s,
        min_rows=config.window,
        assets=config.assets,
    )
    features = dataset.features
    train_segs, val_segs = time_split(dataset.segments, config.validation_fraction)
    train_raw = _subsample(
        windows_from_segments(train_segs, config.window, config.stride), config.max_train_windows
    )
    # Validation windows at stride 1: the service scores every reading, so calibrate on that.
    val_raw = windows_from_segments(val_segs, config.window, 1)
    for what, arr in (("training", train_raw), ("validation", val_raw)):
        if len(arr) < 16:
            raise DataError(
                f"{config.data}: only {len(arr)} {what} windows of {config.window} readings; "
                f"need more normal data or a shorter --window"
            )
    scaler = StandardScaler.fit(train_segs, features)
    logger.info(
        "%d features, %d training windows, %d validation windows",
        len(features),
        len(train_raw),
        len(val_raw),
    )

    # Seed before the model exists: its initial weights come from the global RNG, which torch
    # seeds randomly per process, so seeding only inside fit() left --seed without effect on them.
    seed_everything(config.fit.seed)
    model = build_model(config.family, config.window, len(features), **config.hyperparameters)
    train_z, val_z = scaler.transform(train_raw), scaler.transform(val_raw)
    result = fit(model, train_z, val_z, config.fit)
    graph = ScoringGraph(result.model, scaler)
    val_scores, val_errors = score_windows(graph, val_raw)
    weights = None
    if config.sensor_weighting == "balanced":
        weights = balanced_weights(val_errors)
        # What the weighted graph computes (sensor_error × weight, mean over sensors), from the
        # errors already at hand instead of scoring the validation windows again.
        val_scores = (val_errors * weights.astype(np.float32)).mean(axis=1)
    modes = None
    if config.modes > 1:
        val_points = operating_points(val_z)
        try:
            modes = fit_modes(
                operating_points(train_z),
                val_points,
                val_scores,
                config.modes,
                config.threshold,
                seed=config.fit.seed,
            )
        except ValueError as exc:
            raise DataError(f"{config.data}: cannot calibrate per-mode thresholds: {exc}") from None
        # What the graph with modes computes: each window's score times its mode's scale.
        val_scores = (val_scores * modes.scale_of(val_points)).astype(np.float32)
    try:
        threshold = config.threshold.calibrate(val_scores)
    except ValueError as exc:
        raise DataError(f"{config.data}: cannot calibrate the threshold: {exc}") from None

    flatline = None
    if config.flatline == "auto":
        # Every normal reading at stride 1, training and validation rows alike.
        flatline = fit_flatline(
            [s.values for s in dataset.segments], config.window, threshold.value
        )
    bias = None
    if config.bias_factor > 0:
        bias = fit_bias(window_bias(result.model, val_z), config.bias_factor, threshold.value)
    # The exported graph: the plain one above scored the validation windows, and the scores
    # calibrated on were derived from its outputs as this one computes them.
    graph = ScoringGraph(
        result.model, scaler, sensor_weight=weights, modes=modes, flatline=flatline, bias=bias
    )

    out = config.out
    staging = _staging_dir(out)
    try:
        onnx_path = staging / MODEL_FILE
        export_onnx(graph, onnx_path, config.window, len(features))
        parity_windows = val_raw[_spread(len(val_raw), PARITY_WINDOWS)]
        if flatline is not None:
            parity_windows = np.concatenate([parity_windows, _frozen(parity_windows[:8])])
        if bias is not None:
            parity_windows = np.concatenate(
                [parity_windows, _offset(parity_windows[:8], bias.limit * scaler.scale)]
            )
        parity = check_parity(onnx_path, graph, parity_windows)
        manifest = _manifest(
            config,
            dataset,
            scaler,
            threshold,
            val_scores,
            onnx_path,
            parity,
            result.model,
            weights,
            modes,
            flatline,
            bias,
        )
        write_manifest(staging, manifest)
        report = (
            write_report(
                staging / REPORT_DIR,
                manifest,
                train_loss=result.train_loss,
                val_loss=result.val_loss,
                best_epoch=result.best_epoch,
                val_scores=val_scores,
            )
            if config.report
            else []
        )
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bundle = load_bundle(out, expected_features=features)
    return TrainResult(bundle=bundle, report=[out / REPORT_DIR / p.name for p in report])


def _manifest(
    config: TrainConfig,
    dataset: Dataset,
    scaler: StandardScaler,
    threshold: Any,
    val_scores: npt.NDArray[np.float32],
    onnx_path: Path,
    parity: float,
    model: torch.nn.Module | None = None,
    sensor_weights: npt.NDArray[np.float64] | None = None,
    modes: ModeThresholds | None = None,
    flatline: Flatline | None = None,
    bias: BiasCheck | None = None,
) -> Manifest:
    now = dt.datetime.now(dt.UTC)
    fp = dataset.fingerprint
    hyper = {
        **config.hyperparameters,
        "epochs_max": config.fit.epochs,
        "batch_size": config.fit.batch_size,
        "learning_rate": config.fit.learning_rate,
        "patience": config.fit.patience,
        "seed": config.fit.seed,
        "validation_fraction": config.validation_fraction,
    }
    # Training options are recorded only when used, so default manifests stay as they were.
    if config.fit.noise_std:
        hyper["noise_std"] = config.fit.noise_std
    if config.fit.mask_fraction:
        hyper["mask_fraction"] = config.fit.mask_fraction
        hyper["mask_unit"] = config.fit.mask_unit
    if sensor_weights is not None:
        hyper["sensor_weighting"] = config.sensor_weighting
        hyper["sensor_weights"] = [float(w) for w in sensor_weights.astype(np.float32)]
    if modes is not None:
        hyper.update(modes.to_json())
    if flatline is not None:
        hyper.update(flatline.to_json(dataset.features))
    if bias is not None:
        hyper.update(bias.to_json(dataset.features))
    fitted = getattr(model, "fitted_hyperparameters", None)
    if fitted is not None:
        hyper.update(fitted())
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model=ModelSpec(
            name=config.name or f"{Path(config.data).stem}-{config.family}",
            version=now.strftime("%Y%m%dT%H%M%SZ"),
            family=config.family,
            hyperparameters=hyper,
        ),
        features=dataset.features,
        window=WindowSpec(length=config.window, stride=config.stride),
        sampling_interval_s=dataset.sampling_interval_s,
        scaler=ScalerSpec(mean=tuple(scaler.mean.tolist()), scale=tuple(scaler.scale.tolist())),
        threshold=threshold,
        validation=summarize(val_scores, threshold.value),
        training_data=TrainingData(
            sha256=fp.sha256,
            rows=fp.rows,
            start=fp.start,
            end=fp.end,
            files=fp.files,
            assets=tuple(sorted({s.asset for s in dataset.segments})),
        ),
        onnx=OnnxSpec(
            file=MODEL_FILE, sha256=sha256_file(onnx_path), opset=OPSET, parity_max_abs_diff=parity
        ),
        created=now.isoformat(timespec="seconds"),
        versions={
            "plantwatch": monitor.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
    )


def _frozen(windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Copies of ``windows`` with sensor ``i % n_features`` of window ``i`` stuck at its first
    reading: the parity check then covers the flatline penalty too."""
    out = windows.copy()
    for i in range(len(out)):
        f = i % out.shape[2]
        out[i, :, f] = out[i, 0, f]
    return out


def _offset(
    windows: npt.NDArray[np.float32], limit: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """Copies of ``windows`` with sensor ``i % n_features`` of window ``i`` shifted by 4 ×
    its bias limit ``limit`` (raw units): the parity check then covers the bias penalty too."""
    out = windows.copy()
    for i in range(len(out)):
        f = i % out.shape[2]
        out[i, :, f] += np.float32(4.0 * limit[f])
    return out


def _spread(n: int, k: int) -> npt.NDArray[np.intp]:
    """Up to ``k`` indices spread evenly over ``range(n)`` (deterministic subsample)."""
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).astype(np.intp))


def _subsample(windows: npt.NDArray[np.float32], cap: int) -> npt.NDArray[np.float32]:
    return windows if len(windows) <= cap else windows[_spread(len(windows), cap)]


def _staging_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ConfigError(f"--out {out} is a non-empty directory that is not a model bundle")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace ``out`` with the finished bundle so no reader sees a half-written one."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
