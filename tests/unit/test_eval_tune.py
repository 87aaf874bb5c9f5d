"""Alert-rule cross-validation (training.evaluate.tune) and the offline/online comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.events import AlertEvent, EventType, ModelRef, SensorShare, Severity
from training.evaluate import tune
from training.evaluate.online import Agreement, _compare_events, _compare_scores
from training.evaluate.runner import Replay, Series

L = 4  # window length of the synthetic series


def _series(
    test_scores: list[float],
    labels: list[int],
    *,
    name: str = "valve1/0",
    group: str = "valve1",
    calibration: float = 1.0,
) -> tune.CachedSeries:
    """400 training rows (calibration windows all scoring ``calibration``), then the test rows."""
    score = np.concatenate([np.full(tune.TRAIN_ROWS, calibration), test_scores])
    score[: L - 1] = np.nan
    n = score.size
    lab = np.zeros(n, dtype=bool)
    lab[tune.TRAIN_ROWS :] = np.asarray(labels, dtype=bool)
    cp = np.zeros(n, dtype=bool)
    cp[tune.TRAIN_ROWS :][np.flatnonzero(np.diff(np.concatenate([[0], labels])) != 0)] = True
    return tune.CachedSeries(name, group, L, score, lab, cp, np.arange(n, dtype=np.float64))


def test_threshold_is_a_quantile_of_the_validation_windows_only() -> None:
    s = _series([0.0] * 10, [0] * 10, calibration=2.0)
    s.score[:300] = 100.0  # training rows before the validation quarter do not count
    assert tune.Rule(q=0.99, factor=1.5, k=1, n=1, m=1).threshold(s) == pytest.approx(3.0)


def test_flags_follow_the_service_detector() -> None:
    # Threshold 2 (1 × 2); k=2 of n=3 opens on the second above window, m=2 quiet ones resolve:
    # flagged from the opening window up to (not including) the resolving one.
    scores = [0, 3, 0, 3, 3, 0, 0, 0, 3, 0]
    s = _series(scores, [0] * 10)
    flagged = tune.flags(s, tune.Rule(q=0.5, factor=2.0, k=2, n=3, m=2, hysteresis=1.0))
    assert flagged[tune.TRAIN_ROWS :].astype(int).tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]


def test_tally_counts_the_test_rows_only() -> None:
    s = _series([3, 3, 3, 0], [1, 1, 0, 0])
    flagged = np.zeros(s.score.size, dtype=bool)
    flagged[: tune.TRAIN_ROWS] = True  # training rows never count
    flagged[tune.TRAIN_ROWS : tune.TRAIN_ROWS + 3] = True
    t = tune.tally(s, flagged)
    assert (t.points.tp, t.points.fp, t.points.tn, t.points.fn) == (2, 1, 1, 0)


def test_objective_prefers_any_candidate_within_the_far_cap() -> None:
    within = {"f1": 0.1, "far_pct": 9.0}
    beyond = {"f1": 0.9, "far_pct": 11.0}
    assert tune.objective_value(within, "f1", 10.0) > tune.objective_value(beyond, "f1", 10.0)
    assert tune.objective_value(beyond, "f1", 100.0) == 0.9


def test_leave_group_out_never_tunes_on_the_held_out_group() -> None:
    # Threshold 1.2 ("low") or 2.0 ("high"). In the valve groups the anomaly scores 1.5: only the
    # low rule catches it. In "other" the long normal stretches score 1.5 and the anomaly 3.0:
    # the low rule flags everything, only the high rule is any good.
    labels = [0] * 5 + [1] * 10 + [0] * 5
    a = _series([0.0] * 5 + [1.5] * 10 + [0.0] * 5, labels, name="valve1/0", group="valve1")
    b = _series([0.0] * 5 + [1.5] * 10 + [0.0] * 5, labels, name="valve2/0", group="valve2")
    c_labels = [0] * 20 + [1] * 10 + [0] * 20
    c = _series([1.5] * 20 + [3.0] * 10 + [1.5] * 20, c_labels, name="other/1", group="other")
    low = tune.Rule(q=0.5, factor=1.2, k=1, n=1, m=1)
    high = tune.Rule(q=0.5, factor=2.0, k=1, n=1, m=1)
    report = tune.leave_group_out([[a, b, c]], [low, high], max_far_pct=100.0)
    chosen = {f.held_out: f.rule for f in report.folds}
    # Holding out "other", the valve groups choose the low rule, which fails on "other"
    # (TP 10, FP 40); holding out a valve group, "other" outweighs the remaining valve group
    # (low: F1 40/80, high: F1 20/30) and the high rule misses the held-out anomaly (FN 10).
    assert chosen == {"other": low, "valve1": high, "valve2": high}
    assert report.cv_figures["f1"] == pytest.approx(2 * 10 / (2 * 10 + 40 + 20))
    # On all groups the low rule wins in-sample (F1 60/100): better than it honestly is.
    assert report.chosen_on_all == low
    assert report.chosen_on_all_figures["f1"] == pytest.approx(0.6)
    json.dumps(report.to_json())  # serialisable: it goes into the run log


# -- offline/online comparison ------------------------------------------------------------


MODEL = ModelRef("m", "1", "0" * 64)


def _event(seq: int, kind: EventType, ts: int, score: float = 2.0) -> AlertEvent:
    return AlertEvent(
        alert_id="a1",
        seq=seq,
        event=kind,
        asset="pump-1",
        start_ts_ms=1000,
        end_ts_ms=ts if kind is EventType.RESOLVED else None,
        ts_ms=ts,
        score=score,
        peak_score=2.0,
        threshold=1.0,
        severity=Severity.MAJOR,
        top_sensors=(SensorShare("flow", 0.7),),
        model=MODEL,
    )


def _replay(events: list[AlertEvent]) -> Replay:
    n = 4
    series = Series(
        name="pump-1",
        ts_ms=np.arange(n, dtype=np.int64) * 1000,
        values=np.zeros((n, 1), dtype=np.float32),
        labels=np.zeros(n, dtype=bool),
    )
    score = np.array([np.nan, 0.5, 2.0, 0.25])
    return Replay(series, 1.0, score, np.zeros((n, 1), np.float32), np.zeros(n, bool), [], events)


def _scores_message(ts: list[int], score: list[float]) -> bytes:
    return json.dumps({"asset": "pump-1", "ts": ts, "score": score}).encode()


def test_comparison_agrees_on_equal_results() -> None:
    events = [_event(0, EventType.OPENED, 2000), _event(1, EventType.RESOLVED, 3000, 0.25)]
    out = Agreement(series=1)
    _compare_scores(
        [_replay(events)], [_scores_message([1000, 2000, 3000], [0.5, 2.0, 0.25])], out, 1e-4, 1e-6
    )
    _compare_events([_replay(events)], events, out, 1e-4, 1e-6)
    assert out.agree, out.differences
    assert (out.windows_matched, out.events_matched) == (3, 2)


@pytest.mark.parametrize(
    "messages",
    [
        [_scores_message([1000, 2000], [0.5, 2.0])],  # a window missing online
        [_scores_message([1000, 2000, 3000], [0.5, 2.1, 0.25])],  # a score off
        [_scores_message([1000, 2000, 3000], [0.5, 2.0, 0.25]), _scores_message([3000], [0.25])],
    ],
)
def test_comparison_finds_score_differences(messages: list[bytes]) -> None:
    out = Agreement(series=1)
    _compare_scores([_replay([])], messages, out, 1e-4, 1e-6)
    assert not out.agree
    assert out.differences


def test_comparison_finds_event_differences() -> None:
    offline = [_event(0, EventType.OPENED, 2000), _event(1, EventType.RESOLVED, 3000)]
    for online in (offline[:1], [offline[0], _event(1, EventType.RESOLVED, 4000)]):
        out = Agreement(series=1)
        _compare_events([_replay(offline)], online, out, 1e-4, 1e-6)
        assert not out.agree
    assert out.differences


def test_leave_group_out_also_chooses_the_model_configuration() -> None:
    # Configuration "good" scores the anomaly above the threshold in every group, "bad" never.
    labels = [0] * 5 + [1] * 10 + [0] * 5
    good = [0.0] * 5 + [3.0] * 10 + [0.0] * 5
    bad = [0.0] * 20

    def run(scores: list[float]) -> list[tune.CachedSeries]:
        return [
            _series(scores, labels, name=f"{g}/0", group=g) for g in ("valve1", "valve2", "other")
        ]

    rule = tune.Rule(q=0.5, factor=2.0, k=1, n=1, m=1)
    grid = tune.with_configs([rule], ["bad", "good"])
    report = tune.leave_group_out({"bad": [run(bad)], "good": [run(good)]}, grid)
    assert {f.rule.config for f in report.folds} == {"good"}
    assert report.cv_figures["f1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same number of runs"):
        tune.leave_group_out({"bad": [run(bad)], "good": [run(good), run(good)]}, grid)
