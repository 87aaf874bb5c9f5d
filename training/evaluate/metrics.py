"""Pure detection metrics over per-point labels, predictions and scores.

Everything here is synchronous numpy on arrays that are already aligned point by point; the
protocols decide which points take part. Conventions:

* Point metrics pool the confusion counts of all series first (no point adjustment):
  ``F1 = 2TP / (2TP + FP + FN)``, ``FAR = FP / (FP + TN)``, ``MAR = FN / (FN + TP)``.
* A *segment* is a maximal run of consecutive labelled (or flagged) points, half-open
  ``[start, end)`` in point indices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Confusion:
    """Point-wise confusion counts."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn
        )

    @property
    def f1(self) -> float:
        den = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / den if den else 0.0

    @property
    def far_pct(self) -> float:
        den = self.fp + self.tn
        return 100.0 * self.fp / den if den else 0.0

    @property
    def mar_pct(self) -> float:
        den = self.fn + self.tp
        return 100.0 * self.fn / den if den else 0.0


def confusion(truth: Bools, predicted: Bools) -> Confusion:
    """Confusion counts of boolean ``predicted`` against boolean ``truth``."""
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    if t.shape != p.shape:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} differ in shape")
    return Confusion(
        tp=int(np.sum(t & p)),
        fp=int(np.sum(~t & p)),
        tn=int(np.sum(~t & ~p)),
        fn=int(np.sum(t & ~p)),
    )


def pooled(pairs: Iterable[tuple[Bools, Bools]]) -> Confusion:
    """Sum of :func:`confusion` over ``(truth, predicted)`` pairs."""
    total = Confusion()
    for truth, predicted in pairs:
        total = total + confusion(truth, predicted)
    return total


def segments(mask: Bools) -> list[tuple[int, int]]:
    """Maximal runs of ``True`` as half-open ``(start, end)`` index pairs."""
    m = np.asarray(mask, dtype=np.int8)
    if m.size == 0:
        return []
    edges = np.diff(np.concatenate(([0], m, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


@dataclass(frozen=True)
class EventTally:
    """Event-level counts of one or more series."""

    segments: int = 0
    detected: int = 0
    alerts: int = 0
    true_alerts: int = 0
    delays: tuple[int, ...] = ()

    def __add__(self, other: EventTally) -> EventTally:
        return EventTally(
            self.segments + other.segments,
            self.detected + other.detected,
            self.alerts + other.alerts,
            self.true_alerts + other.true_alerts,
            self.delays + other.delays,
        )

    @property
    def precision(self) -> float:
        return self.true_alerts / self.alerts if self.alerts else 0.0

    @property
    def recall(self) -> float:
        return self.detected / self.segments if self.segments else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def mean_delay(self) -> float:
        return float(np.mean(self.delays)) if self.delays else math.nan


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether half-open intervals ``a`` and ``b`` share a point."""
    return a[0] < b[1] and b[0] < a[1]


def event_tally(labels: Bools, alerts: Sequence[tuple[int, int]]) -> EventTally:
    """Event counts of one series.

    A labelled segment is *detected* when any alert interval overlaps it; its delay is the
    index of its first flagged point (a point inside any alert) minus its start. An alert
    overlapping no segment is a false event.
    """
    segs = segments(labels)
    flagged = np.zeros(len(labels), dtype=bool)
    for start, end in alerts:
        flagged[start:end] = True
    detected = 0
    delays: list[int] = []
    for seg in segs:
        if any(overlaps(seg, a) for a in alerts):
            detected += 1
            delays.append(int(np.argmax(flagged[seg[0] : seg[1]])))
    true_alerts = sum(1 for a in alerts if any(overlaps(a, s) for s in segs))
    return EventTally(len(segs), detected, len(alerts), true_alerts, tuple(delays))


def _finite_pairs(scores: Floats, labels: Bools) -> tuple[Floats, Bools]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = np.isfinite(s)
    return s[keep], y[keep]


def roc_auc(scores: Floats, labels: Bools) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN scores are left out.

    NaN when only one class is present.
    """
    s, y = _finite_pairs(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_auc(scores: Floats, labels: Bools) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no
    interpolation): ``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds.
    NaN scores are left out; NaN without positives.
    """
    s, y = _finite_pairs(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # One operating point per distinct threshold: the last index of each run of equal scores.
    last = np.flatnonzero(np.diff(s_sorted, append=-np.inf) != 0)
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def detection_rate_at_far(scores: Floats, labels: Bools, far: float = 0.05) -> float:
    """Share of positive points flagged when the score threshold flags at most ``far`` of the
    negative points (flagged: ``score > t`` with ``t`` the ``(floor(far·N) + 1)``-th largest
    negative score, so ties never push the false-alarm share above ``far``). NaN scores are
    left out.
    """
    if not 0.0 <= far < 1.0:
        raise ValueError(f"far must be in [0, 1), got {far}")
    s, y = _finite_pairs(scores, labels)
    neg = np.sort(s[~y])[::-1]
    pos = s[y]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    k = math.floor(far * neg.size)
    threshold = neg[k] if k < neg.size else -np.inf
    return float(np.mean(pos > threshold))


@dataclass(frozen=True)
class Attribution:
    """Root-cause attribution hits: does the top-1 / any of the top-3 sensors name an affected
    sensor?"""

    cases: int = 0
    top1: int = 0
    top3: int = 0

    def __add__(self, other: Attribution) -> Attribution:
        return Attribution(self.cases + other.cases, self.top1 + other.top1, self.top3 + other.top3)

    def add(self, ranked: Sequence[str], truth: Iterable[str]) -> Attribution:
        """This tally plus one case: sensors ``ranked`` by share against the affected set."""
        affected = set(truth)
        return self + Attribution(
            1,
            int(bool(ranked[:1]) and ranked[0] in affected),
            int(bool(affected & set(ranked[:3]))),
        )

    @property
    def top1_accuracy(self) -> float:
        return self.top1 / self.cases if self.cases else math.nan

    @property
    def top3_accuracy(self) -> float:
        return self.top3 / self.cases if self.cases else math.nan
