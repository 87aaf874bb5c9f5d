"""Alert-threshold calibration on held-out normal validation windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monitor.bundle import ScoreSummary, ThresholdSpec

SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class QuantileRule:
    """``threshold = factor × quantile_q(validation scores)``.

    The SKAB reference rule. With the defaults, about 1 % of normal windows reach the
    ``q``-quantile and the 1.5 factor leaves headroom for normal drift beyond the validation
    period; the detector's k-of-n rule then filters isolated excursions.
    """

    q: float = 0.99
    factor: float = 1.5

    name = "quantile"

    def __post_init__(self) -> None:
        if not 0.0 < self.q < 1.0 or self.factor <= 0:
            raise ValueError("quantile rule needs 0 < q < 1 and factor > 0")

    def calibrate(self, scores: npt.NDArray[np.floating]) -> ThresholdSpec:
        if scores.size == 0:
            raise ValueError("no validation scores to calibrate on")
        value = float(np.quantile(scores, self.q)) * self.factor
        return ThresholdSpec(
            value=value, rule=self.name, params={"q": self.q, "factor": self.factor}
        )


def summarize(scores: npt.NDArray[np.floating], threshold: float) -> ScoreSummary:
    s = np.asarray(scores, dtype=np.float64)
    return ScoreSummary(
        n_windows=int(s.size),
        mean=float(s.mean()),
        std=float(s.std()),
        min=float(s.min()),
        max=float(s.max()),
        quantiles={f"{q:g}": float(np.quantile(s, q)) for q in SUMMARY_QUANTILES},
        above_threshold=float(np.mean(s >= threshold)),
    )
