"""NAB scoring (SKAB's variant) against hand-computed cases, for every profile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import nab

TIMES = np.arange(200, dtype=np.float64)  # seconds


def _mask(*idx: int) -> np.ndarray:
    m = np.zeros(TIMES.size, dtype=bool)
    m[list(idx)] = True
    return m


def _y(position: int, a_tp: float, a_fp: float) -> float:
    """The scaled sigmoid written out by hand: A_tp at the window start, A_fp at its end."""
    x = -math.pi / 2 + math.pi * position / 999
    return (a_tp - a_fp) / 2 * (1 - math.tanh(x) / math.tanh(math.pi / 2)) + a_fp


def test_changepoints_of_a_binary_prediction() -> None:
    pred = np.array([1, 1, 0, 0, 1, 1, 1, 0], dtype=bool)
    assert nab.changepoints(pred).tolist() == [1, 0, 1, 0, 1, 0, 0, 1]
    assert not nab.changepoints(np.zeros(3, dtype=bool)).any()


def test_sigmoid_ends() -> None:
    for p in nab.PROFILES.values():
        assert nab.scaled_sigmoid(0, p) == pytest.approx(p.a_tp)
        assert nab.scaled_sigmoid(999, p) == pytest.approx(p.a_fp)


def test_detection_at_the_changepoint_is_perfect() -> None:
    t = nab.tally(TIMES, _mask(50), _mask(50), 60.0)
    assert t == nab.NabTally(windows=1, tp_positions=(0,), missed=0, false_positives=0)
    assert t.scores() == pytest.approx({"standard": 100.0, "low_fp": 100.0, "low_fn": 100.0})


def test_missed_changepoint_is_the_null_score() -> None:
    t = nab.tally(TIMES, _mask(50), _mask(), 60.0)
    assert t.missed == 1
    assert t.scores() == pytest.approx({"standard": 0.0, "low_fp": 0.0, "low_fn": 0.0})


def test_late_detection_plus_false_positive_per_profile() -> None:
    # Changepoint at 50 s: window [50, 110]. First detection at 80 s (half-way: sample 500),
    # a second one at 90 s inside the window (free), a false one at 150 s.
    t = nab.tally(TIMES, _mask(50), _mask(80, 90, 150), 60.0)
    assert t == nab.NabTally(windows=1, tp_positions=(500,), missed=0, false_positives=1)
    # standard (1, -0.11, -1): S = y - 0.11, null = -1, perfect = 1
    s = _y(500, 1.0, -0.11) - 0.11
    assert t.score(nab.PROFILES["standard"]) == pytest.approx(100 * (s + 1) / 2)
    # low FP (1, -0.22, -1)
    s = _y(500, 1.0, -0.22) - 0.22
    assert t.score(nab.PROFILES["low_fp"]) == pytest.approx(100 * (s + 1) / 2)
    # low FN (1, -0.11, -2): null = -2
    s = _y(500, 1.0, -0.11) - 0.11
    assert t.score(nab.PROFILES["low_fn"]) == pytest.approx(100 * (s + 2) / 3)
    # Numerically, for the record: about 66.7 / 58.4 / 77.8.
    assert t.scores()["standard"] == pytest.approx(66.70, abs=0.01)


def test_detection_before_the_window_is_a_false_positive_and_a_miss() -> None:
    # The window lies to the right of the changepoint: an early alarm does not count.
    t = nab.tally(TIMES, _mask(50), _mask(40), 60.0)
    assert (t.missed, t.false_positives, t.tp_positions) == (1, 1, ())
    s = -0.11 - 1.0
    assert t.score(nab.PROFILES["standard"]) == pytest.approx(100 * (s + 1) / 2)


def test_window_end_is_inclusive() -> None:
    t = nab.tally(TIMES, _mask(50), _mask(110), 60.0)
    assert t.tp_positions == (999,)
    assert t.score(nab.PROFILES["standard"]) == pytest.approx(100 * (-0.11 + 1) / 2)


def test_intersecting_windows_cut_the_right_one() -> None:
    # Changepoints at 50 and 80: windows [50, 110] and [110, 140].
    assert nab.detection_windows(TIMES, _mask(50, 80), 60.0) == [(50.0, 110.0), (110.0, 140.0)]
    t = nab.tally(TIMES, _mask(50, 80), _mask(120), 60.0)
    # 120 s is in the second (cut) window only: position floor(10/30 * 1000) = 333.
    assert t == nab.NabTally(windows=2, tp_positions=(333,), missed=1, false_positives=0)


def test_series_without_changepoints_only_cost_false_positives() -> None:
    empty = nab.tally(TIMES, _mask(), _mask(3, 7), 60.0)
    assert empty == nab.NabTally(false_positives=2)
    one = nab.tally(TIMES, _mask(50), _mask(50), 60.0)
    # Raw scores are summed over series before normalising.
    s = 1.0 - 2 * 0.11
    assert nab.nab_scores([empty, one])["standard"] == pytest.approx(100 * (s + 1) / 2)
    assert math.isnan(empty.score(nab.PROFILES["standard"]))


def test_window_uses_time_not_points() -> None:
    # Irregular clock: points 1 s apart, then 2 s apart; a 10 s window covers fewer points.
    times = np.array([0, 1, 2, 4, 6, 8, 10, 12, 14], dtype=np.float64)
    cp = np.zeros(times.size, dtype=bool)
    cp[1] = True  # t = 1 s, window [1, 11]
    pred = np.zeros(times.size, dtype=bool)
    pred[7] = True  # t = 12 s: outside
    t = nab.tally(times, cp, pred, 10.0)
    assert (t.missed, t.false_positives) == (1, 1)
