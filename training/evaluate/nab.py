"""NAB changepoint scoring as SKAB computes it (``core/metrics.py`` of waico/SKAB, from tsad).

Inputs per series: timestamps, the true changepoints and the predicted changepoints (the points
where the binary prediction changes, the first point counting as a change when it is flagged —
see :func:`changepoints`). Scoring, per series and profile ``(A_tp, A_fp, A_fn)``:

* Each true changepoint ``c`` opens a detection window ``[c, c + width]`` to its right (both ends
  inclusive). Where two windows intersect, the right one is cut to start at the left one's end
  (SKAB's default ``"cut right window"``).
* A window with at least one predicted changepoint is a true positive; only the *first*
  prediction inside it counts and is scored by the scaled sigmoid
  ``y(x) = (A_tp - A_fp)/2 · (-tanh(x) / tanh(pi/2)) + (A_tp - A_fp)/2 + A_fp`` sampled at 1000
  points ``x`` from ``-pi/2`` (window start, ``y = A_tp``) to ``pi/2`` (window end,
  ``y = A_fp``); the sample is ``floor(1000 · (t - start) / (end - start))``, capped at 999.
  Further predictions inside a window cost nothing.
* A window without a prediction costs ``A_fn``; every prediction outside all windows costs
  ``A_fp``.
* ``S_perfect = windows · A_tp``, ``S_null = windows · A_fn``; scores are summed over series and
  normalised as ``100 · (S - S_null) / (S_perfect - S_null)``.

The profiles are NAB's: standard ``(1, -0.11, -1)``, reward-low-FP ``(1, -0.22, -1)``,
reward-low-FN ``(1, -0.11, -2)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Samples of the scoring sigmoid across a window, as in SKAB.
DETAIL = 1000


@dataclass(frozen=True)
class Profile:
    a_tp: float
    a_fp: float
    a_fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(1.0, -0.11, -1.0),
    "low_fp": Profile(1.0, -0.22, -1.0),
    "low_fn": Profile(1.0, -0.11, -2.0),
}


def changepoints(predicted: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Points where a binary prediction changes (``|diff|``); the first point is a change when
    it is flagged."""
    p = np.asarray(predicted, dtype=bool)
    out = np.zeros_like(p)
    if p.size:
        out[0] = p[0]
        out[1:] = p[1:] != p[:-1]
    return out


def sigmoid_position(offset: float, width: float) -> int:
    """Index into the sampled sigmoid of a detection ``offset`` after its window start."""
    if width <= 0:
        return 0
    return min(int(offset / width * DETAIL), DETAIL - 1)


def scaled_sigmoid(position: int, profile: Profile) -> float:
    """The window score of a first detection at sample ``position`` (0 .. DETAIL-1)."""
    x = -math.pi / 2 + math.pi * position / (DETAIL - 1)
    half = (profile.a_tp - profile.a_fp) / 2
    return half * (-math.tanh(x) / math.tanh(math.pi / 2)) + half + profile.a_fp


@dataclass(frozen=True)
class NabTally:
    """What NAB needs of one or more series: sigmoid positions of the true positives and the
    counts of missed windows and of predictions outside all windows."""

    windows: int = 0
    tp_positions: tuple[int, ...] = ()
    missed: int = 0
    false_positives: int = 0

    def __add__(self, other: NabTally) -> NabTally:
        return NabTally(
            self.windows + other.windows,
            self.tp_positions + other.tp_positions,
            self.missed + other.missed,
            self.false_positives + other.false_positives,
        )

    def raw(self, profile: Profile) -> tuple[float, float, float]:
        """``(S, S_null, S_perfect)`` under ``profile``."""
        score = (
            profile.a_fp * self.false_positives
            + profile.a_fn * self.missed
            + sum(scaled_sigmoid(p, profile) for p in self.tp_positions)
        )
        return score, self.windows * profile.a_fn, self.windows * profile.a_tp

    def score(self, profile: Profile) -> float:
        """Normalised NAB score (100 perfect, 0 the null detector); NaN without windows."""
        s, null, perfect = self.raw(profile)
        return 100.0 * (s - null) / (perfect - null) if perfect != null else math.nan

    def scores(self) -> dict[str, float]:
        return {name: self.score(p) for name, p in PROFILES.items()}


def detection_windows(
    times: npt.NDArray[np.float64], true_cp: npt.NDArray[np.bool_], width: float
) -> list[tuple[float, float]]:
    """``[c, c + width]`` for each true changepoint time, right windows cut at intersections."""
    bounds = [[float(t), float(t) + width] for t in times[np.asarray(true_cp, dtype=bool)]]
    for i in range(len(bounds) - 1):
        if bounds[i][1] >= bounds[i + 1][0]:
            bounds[i + 1][0] = bounds[i][1]
    return [(a, b) for a, b in bounds]


def tally(
    times: npt.NDArray[np.float64],
    true_cp: npt.NDArray[np.bool_],
    predicted_cp: npt.NDArray[np.bool_],
    width: float,
) -> NabTally:
    """NAB counts of one series; ``times`` increasing (seconds), ``width`` in the same unit."""
    t = np.asarray(times, dtype=np.float64)
    pred = t[np.asarray(predicted_cp, dtype=bool)]
    windows = detection_windows(t, true_cp, width)
    if not windows:
        return NabTally(false_positives=int(pred.size))
    positions: list[int] = []
    missed = 0
    outside = np.ones(pred.size, dtype=bool)
    for start, end in windows:
        inside = (pred >= start) & (pred <= end)
        outside &= ~inside
        if inside.any():
            first = float(pred[np.argmax(inside)])
            positions.append(sigmoid_position(first - start, end - start))
        else:
            missed += 1
    return NabTally(len(windows), tuple(positions), missed, int(outside.sum()))


def nab_scores(tallies: Iterable[NabTally]) -> dict[str, float]:
    """Normalised scores per profile over all series (raw scores summed first)."""
    total = NabTally()
    for item in tallies:
        total = total + item
    return total.scores()
