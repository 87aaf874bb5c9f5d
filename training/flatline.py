"""Flatline (stuck sensor) check, calibrated on normal data and baked into the scoring graph.

A sensor that freezes at its last value (a stuck transmitter, a frozen PLC register, a historian
repeating its last sample) often stays inside its normal range, where a reconstruction model
barely notices it: the other sensors still explain it. Its readings, though, stop moving at all,
which normal data of a live measurement never does for a whole window.

With ``TrainConfig.flatline = "auto"`` (the default), ``plantwatch train`` checks every sensor
that never holds one value for more than half a window anywhere in the normal data, training and
validation rows alike (a setpoint, a switch or a quantised slow temperature is left
unchecked). The graph then adds :data:`FLAT_SCORE` × ``n_features`` ×
threshold to the error of a checked sensor whose readings are all identical within the window,
so that one such sensor alone puts the window's score at :data:`FLAT_SCORE` times the
threshold, and attribution names it. The manifest lists the checked sensors; nothing in the
service changes. Measured in ``bench/results/detection.md`` (session 12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: A window with one flat checked sensor scores this multiple of the threshold (at least).
FLAT_SCORE = 2.0
#: ``TrainConfig.flatline`` values.
FLATLINE_MODES = ("auto", "off")


def longest_constant_runs(values: npt.NDArray[np.floating]) -> npt.NDArray[np.intp]:
    """Per sensor, the most consecutive identical readings in ``values`` (rows × sensors)."""
    v = np.asarray(values)
    rows, n = v.shape
    if rows == 0:
        return np.zeros(n, dtype=np.intp)
    out = np.ones(n, dtype=np.intp)
    same = v[1:] == v[:-1]
    for f in range(n):
        # Runs of True in same[:, f]: a run of r equal steps is r + 1 identical readings.
        edges = np.flatnonzero(np.diff(np.r_[0, same[:, f].astype(np.int8), 0]))
        if edges.size:
            out[f] = int((edges[1::2] - edges[::2]).max()) + 1
    return out


@dataclass(frozen=True)
class Flatline:
    """The sensors checked and what a flat one adds to its error."""

    #: Per sensor, in feature order: checked or not.
    checked: npt.NDArray[np.bool_]
    #: Added to a flat checked sensor's error (normalised units², like the error).
    penalty: float

    def to_json(self, features: Sequence[str]) -> dict[str, object]:
        return {
            "flatline_sensors": [f for f, on in zip(features, self.checked, strict=True) if on],
            "flatline_penalty": float(np.float32(self.penalty)),
        }


def fit_flatline(
    series: Sequence[npt.NDArray[np.floating]], length: int, threshold: float
) -> Flatline | None:
    """The check for the sensors never constant for more than half of ``length`` readings in
    any of the normal ``series`` (each rows × sensors, one asset's contiguous readings); None
    when no sensor qualifies. The margin keeps out sensors that come close to a flat window in
    normal operation (a quantised, slowly moving value), which a longer run in service might
    otherwise turn into false alerts."""
    runs = np.max([longest_constant_runs(v) for v in series], axis=0)
    checked = 2 * runs <= length
    if not checked.any():
        return None
    return Flatline(checked=checked, penalty=FLAT_SCORE * len(checked) * threshold)
