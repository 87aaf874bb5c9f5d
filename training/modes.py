"""Operating-mode thresholds: one alert threshold per operating mode of the plant.

A plant that runs at several load levels (or with a pump on or off) reconstructs less well in
some modes than in others; one threshold for all is then too loose in the quiet modes and too
tight in the noisy ones. With ``TrainConfig.modes = K``, ``plantwatch train`` clusters the
training windows by their *operating point*, the window's mean of every sensor in normalised
units, with k-means (K clusters), calibrates the threshold rule on each mode's validation
windows, and bakes the result into the ONNX graph: each window's score (and sensor errors) is
multiplied by ``threshold / threshold_of_its_mode``. The bundle keeps one threshold and the
service needs nothing new; a window of a mode whose errors are normally twice as large counts
half as much.

The operating point is used instead of the autoencoder's latent code because it exists for every
family (the PCA baseline and the recurrent models have no comparable code), its units are the
same in every bundle, and it is what an operator means by a mode (load, speed, flow). A mode
with fewer than :data:`MIN_MODE_WINDOWS` validation windows keeps the common threshold.
Measured in ``bench/results/detection.md`` (session 12).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.calibrate import ThresholdRule

logger = logging.getLogger(__name__)

#: Validation windows a mode needs for a threshold of its own.
MIN_MODE_WINDOWS = 20

FloatArray = npt.NDArray[np.floating]


def operating_points(normalised_windows: FloatArray) -> npt.NDArray[np.float32]:
    """Each window's mean per sensor (windows × length × sensors → windows × sensors)."""
    return np.asarray(np.asarray(normalised_windows, np.float32).mean(axis=1), np.float32)


def kmeans(
    points: FloatArray, k: int, *, seed: int = 0, restarts: int = 4, iterations: int = 100
) -> npt.NDArray[np.float64]:
    """Centroids of ``k`` clusters of ``points`` (k-means++ starts, the best of ``restarts``)."""
    x = np.asarray(points, np.float64)
    if x.ndim != 2 or len(x) < k or k < 1:
        raise ValueError(f"need at least {k} points (rows × features), got shape {x.shape}")
    rng = np.random.default_rng(seed)
    best: tuple[float, npt.NDArray[np.float64]] | None = None
    for _ in range(restarts):
        centroids = _plus_plus(x, k, rng)
        for _ in range(iterations):
            labels = assign(x, centroids)
            moved = np.array(
                [
                    x[labels == c].mean(axis=0) if np.any(labels == c) else centroids[c]
                    for c in range(k)
                ]
            )
            if np.allclose(moved, centroids):
                break
            centroids = moved
        inertia = float(_sq_distances(x, centroids).min(axis=1).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centroids)
    assert best is not None
    return best[1]


def assign(points: FloatArray, centroids: FloatArray) -> npt.NDArray[np.intp]:
    """The nearest centroid of each point (as the graph computes it: squared distances)."""
    return np.asarray(_sq_distances(np.asarray(points, np.float64), centroids).argmin(axis=1))


def _sq_distances(x: npt.NDArray[np.float64], centroids: FloatArray) -> npt.NDArray[np.float64]:
    c = np.asarray(centroids, np.float64)
    return np.asarray(((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2))


def _plus_plus(
    x: npt.NDArray[np.float64], k: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = _sq_distances(x, np.array(centroids)).min(axis=1)
        total = d.sum()
        pick = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=d / total)
        centroids.append(x[pick])
    return np.array(centroids)


@dataclass(frozen=True)
class ModeThresholds:
    """What the graph needs (``centroids``, ``scale``) and what the manifest records."""

    #: Mode centres, modes × sensors, in normalised units.
    centroids: npt.NDArray[np.float64]
    #: The common threshold divided by each mode's own (1 where a mode kept the common one).
    scale: npt.NDArray[np.float64]
    #: Each mode's own threshold on the unscaled score (the common one where it kept that).
    thresholds: npt.NDArray[np.float64]
    #: Validation windows per mode.
    validation_windows: npt.NDArray[np.intp]
    #: Training windows per mode.
    training_windows: npt.NDArray[np.intp]

    def scale_of(self, points: FloatArray) -> npt.NDArray[np.float64]:
        """The factor each window's score is multiplied by."""
        return self.scale[assign(points, self.centroids)]

    def to_json(self) -> dict[str, object]:
        return {
            "modes": len(self.centroids),
            "mode_centroids": [[float(v) for v in c] for c in self.centroids.astype(np.float32)],
            "mode_scale": [float(s) for s in self.scale.astype(np.float32)],
            "mode_thresholds": [float(t) for t in self.thresholds],
            "mode_validation_windows": [int(n) for n in self.validation_windows],
            "mode_training_windows": [int(n) for n in self.training_windows],
        }


def fit_modes(
    train_points: FloatArray,
    val_points: FloatArray,
    val_scores: FloatArray,
    k: int,
    rule: ThresholdRule,
    *,
    seed: int = 0,
) -> ModeThresholds:
    """Cluster ``train_points`` into ``k`` modes and calibrate ``rule`` per mode on the
    validation windows (``val_points``, ``val_scores``) that fall in it."""
    centroids = kmeans(train_points, k, seed=seed)
    common = rule.calibrate(np.asarray(val_scores)).value
    val_mode = assign(val_points, centroids)
    thresholds = np.full(k, common, np.float64)
    counts = np.bincount(val_mode, minlength=k)
    for mode in range(k):
        if counts[mode] < MIN_MODE_WINDOWS:
            continue
        try:
            own = rule.calibrate(np.asarray(val_scores)[val_mode == mode]).value
        except ValueError as exc:  # e.g. too few scores above POT's level
            logger.info("mode %d keeps the common threshold: %s", mode, exc)
            continue
        if own > 0:
            thresholds[mode] = own
    scale = common / thresholds
    logger.info(
        "%d operating modes: validation windows %s, threshold scale %s",
        k,
        counts.tolist(),
        np.round(scale, 3).tolist(),
    )
    return ModeThresholds(
        centroids=centroids,
        scale=scale,
        thresholds=thresholds,
        validation_windows=counts,
        training_windows=np.bincount(assign(train_points, centroids), minlength=k),
    )
