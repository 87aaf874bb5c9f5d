"""Windowing, time-ordered splitting and scaling: the pure maths under the trainer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from monitor.errors import DataError
from training.data import Segment

FloatArray = npt.NDArray[np.float32]


def sliding_windows(values: FloatArray, length: int, stride: int = 1) -> FloatArray:
    """Windows ``[n, length, n_features]`` over ``values [rows, n_features]``, as a view.

    Window ``i`` covers rows ``i*stride .. i*stride + length - 1``; a tail shorter than a full
    stride is dropped. No data is copied.
    """
    if length < 1 or stride < 1:
        raise ValueError("length and stride must be >= 1")
    if values.shape[0] < length:
        return np.empty((0, length, values.shape[1]), dtype=values.dtype)
    view = np.lib.stride_tricks.sliding_window_view(values, length, axis=0)[::stride]
    # sliding_window_view puts the window axis last: [n, n_features, length].
    return view.transpose(0, 2, 1)


def windows_from_segments(segments: Sequence[Segment], length: int, stride: int) -> FloatArray:
    """All windows of all segments, stacked; a window never spans two segments."""
    parts = [sliding_windows(s.values, length, stride) for s in segments]
    parts = [p for p in parts if len(p)]
    if not parts:
        n_features = segments[0].values.shape[1] if segments else 0
        return np.empty((0, length, n_features), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def time_split(
    segments: Sequence[Segment], validation_fraction: float
) -> tuple[list[Segment], list[Segment]]:
    """Split segments at one global time cut: earlier rows train, later rows validate.

    One cut for all assets keeps validation strictly later than training, so no window of the
    validation set overlaps or precedes a training window in time (no leakage).
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError("validation_fraction must be in (0, 1)")
    stamps = np.concatenate([s.timestamps for s in segments])
    cut = np.quantile(stamps, 1.0 - validation_fraction, method="lower")
    train: list[Segment] = []
    val: list[Segment] = []
    for seg in segments:
        k = int(np.searchsorted(seg.timestamps, cut, side="right"))
        if k > 0:
            train.append(_slice(seg, 0, k))
        if k < len(seg.timestamps):
            val.append(_slice(seg, k, len(seg.timestamps)))
    return train, val


def _slice(seg: Segment, start: int, stop: int) -> Segment:
    return replace(
        seg,
        timestamps=seg.timestamps[start:stop],
        values=seg.values[start:stop],
        first_row=seg.first_row + start,
    )


@dataclass(frozen=True)
class StandardScaler:
    """Per-feature ``(x - mean) / scale`` with statistics from training rows only."""

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]

    @classmethod
    def fit(cls, segments: Sequence[Segment], features: Sequence[str]) -> StandardScaler:
        rows = np.concatenate([s.values for s in segments]).astype(np.float64)
        mean = rows.mean(axis=0)
        scale = rows.std(axis=0)
        # A constant training column would divide by zero inside the exported graph.
        flat = np.flatnonzero(~(scale > 1e-12 * np.maximum(1.0, np.abs(mean))))
        if flat.size:
            names = ", ".join(repr(features[int(i)]) for i in flat)
            raise DataError(
                f"column {names} is constant over the training rows; drop it with --columns"
            )
        return cls(mean=mean, scale=scale)

    def transform(self, values: FloatArray) -> FloatArray:
        return ((values - self.mean) / self.scale).astype(np.float32)
