"""Pure evaluation metrics: point, event, ranking and attribution figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.evaluate import metrics
from training.evaluate.runner import reference_flags


def b(*bits: int) -> np.ndarray:
    return np.array(bits, dtype=bool)


def test_confusion_and_point_figures() -> None:
    c = metrics.confusion(b(1, 1, 1, 0, 0, 0, 0, 0), b(1, 1, 0, 1, 0, 0, 0, 0))
    assert c == metrics.Confusion(tp=2, fp=1, tn=4, fn=1)
    assert c.f1 == pytest.approx(4 / 6)
    assert c.far_pct == pytest.approx(20.0)
    assert c.mar_pct == pytest.approx(100 / 3)


def test_pooled_sums_counts_not_figures() -> None:
    c = metrics.pooled([(b(1, 0), b(1, 0)), (b(1, 1, 0, 0), b(0, 0, 1, 1))])
    assert c == metrics.Confusion(tp=1, fp=2, tn=1, fn=2)


def test_empty_denominators_are_zero() -> None:
    c = metrics.Confusion()
    assert (c.f1, c.far_pct, c.mar_pct) == (0.0, 0.0, 0.0)


def test_segments() -> None:
    assert metrics.segments(b(0, 1, 1, 0, 1)) == [(1, 3), (4, 5)]
    assert metrics.segments(b()) == []


def test_event_tally() -> None:
    labels = b(0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0)
    # First segment caught 2 points late, second missed, one false alert at the end.
    t = metrics.event_tally(labels, [(4, 7), (11, 13)])
    assert (t.segments, t.detected, t.alerts, t.true_alerts) == (2, 1, 2, 1)
    assert t.delays == (2,)
    assert (t.precision, t.recall, t.f1) == (0.5, 0.5, 0.5)
    # An alert already open when a segment starts has delay 0.
    assert metrics.event_tally(labels, [(1, 9)]).delays == (0, 0)
    assert math.isnan(metrics.EventTally().mean_delay)


def test_roc_auc_hand_cases() -> None:
    assert metrics.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), b(0, 0, 1, 1)) == 1.0
    assert metrics.roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), b(0, 0, 1, 1)) == 0.0
    # One tie between a positive and a negative counts one half: (1 + 0.5) / 2.
    assert metrics.roc_auc(np.array([0.1, 0.5, 0.5, 0.9]), b(0, 0, 1, 1)) == pytest.approx(0.875)
    # NaN scores (no window yet) are left out.
    assert metrics.roc_auc(np.array([np.nan, 0.1, 0.9]), b(1, 0, 1)) == 1.0
    assert math.isnan(metrics.roc_auc(np.array([0.1, 0.2]), b(0, 0)))


def test_pr_auc_is_average_precision() -> None:
    # Ranking: pos, neg, pos -> AP = (1/2)*1 + (1/2)*(2/3)
    got = metrics.pr_auc(np.array([0.9, 0.5, 0.1]), b(1, 0, 1))
    assert got == pytest.approx(0.5 + 1 / 3)
    assert metrics.pr_auc(np.array([0.9, 0.8, 0.1]), b(1, 1, 0)) == pytest.approx(1.0)


def test_detection_rate_at_far() -> None:
    neg = np.arange(100, dtype=np.float64)  # 0..99: 5 % of them are 95..99
    pos = np.array([93.5, 94.5, 99.5, 200.0])
    scores = np.concatenate([neg, pos])
    labels = np.concatenate([np.zeros(100, bool), np.ones(4, bool)])
    # Threshold is the 6th-largest negative (94): strictly above flags 95..99, exactly 5 %.
    assert metrics.detection_rate_at_far(scores, labels, 0.05) == pytest.approx(0.75)


@given(st.lists(st.floats(0, 1), min_size=2, max_size=40), st.data())
def test_roc_auc_matches_pairwise_definition(scores: list[float], data: st.DataObject) -> None:
    labels = np.array(
        data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    )
    s = np.array(scores)
    pos, neg = s[labels], s[~labels]
    got = metrics.roc_auc(s, labels)
    if pos.size == 0 or neg.size == 0:
        assert math.isnan(got)
        return
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert got == pytest.approx(pairs / (pos.size * neg.size))


def test_attribution_tally() -> None:
    a = metrics.Attribution()
    a = a.add(("flow", "vibration_rms", "bearing_temp"), {"vibration_rms"})
    a = a.add(("vibration_rms",), {"vibration_rms", "bearing_temp"})
    a = a.add(("flow", "motor_current", "fluid_temp"), {"vibration_rms"})
    assert (a.cases, a.top1, a.top3) == (3, 1, 2)
    assert a.top1_accuracy == pytest.approx(1 / 3)
    assert a.top3_accuracy == pytest.approx(2 / 3)


def test_reference_rule_matches_the_skab_notebook_indexing() -> None:
    # SKAB: residual[j] of the window *starting* at j; point i flagged when
    # all(residual[i-L+1 : i] > UCL) for L-1 <= i < len(residual) - L + 1.
    rng = np.random.default_rng(3)
    L, n = 4, 40
    residual = rng.uniform(0, 1, n - L + 1)
    residual[:10] = rng.uniform(0, 0.1, 10)  # the "training" windows
    residual[15:30] = 5.0
    score = np.full(n, np.nan)
    score[L - 1 :] = residual  # our scores: indexed by window end
    flagged, limit = reference_flags(score, L, train_end=10 + L - 1)
    ucl = np.quantile(residual[:10], 0.999) * 4 / 3
    assert limit == pytest.approx(ucl)
    expected = np.zeros(n, dtype=bool)
    for i in range(L - 1, len(residual) - L + 1):
        expected[i] = bool(np.all(residual[i - L + 1 : i] > ucl))
    assert flagged.tolist() == expected.tolist()
    assert flagged.any()
