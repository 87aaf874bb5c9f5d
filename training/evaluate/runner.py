"""Replay labelled series through the service's own path: bundle → windows → scorer → detector.

Nothing here re-implements scoring or alerting. Each series is fed, in blocks, to a
:class:`monitor.windows.WindowStore` (same gap policy and stride as ``serve``); every ready
window is scored by :class:`monitor.scoring.Scorer` on the exported ONNX graph and handed to a
:class:`monitor.detector.Detector`, exactly as the service does per batch.

**Which point a window scores.** A window is attributed to the reading it ends at. Points
before the first full window (or after a long gap reset the window) have no score (NaN) and are
never flagged.

**Flagged points** (``mode="service"``). A point is flagged when, after the detector observed
the window ending at it, the asset has an open alert: from the window whose ``opened`` event
was emitted (inclusive) up to the window whose ``resolved`` event was emitted (exclusive); an
alert still open at the end of the series flags every point to the end. This is what an
operator watching the alert stream sees, with no hindsight: the first windows of the k-of-n
evidence (``start_ts_ms``) are *not* flagged retroactively.

**Reference rule** (``mode="reference"``, for comparison with the SKAB Conv-AE baseline only;
it is offline and looks ahead, so the service cannot run it). With limit
``UCL = quantile_0.999(scores of the training windows) × 4/3``, point ``i`` is flagged when the
scores of the ``L - 1`` windows ending at ``i .. i + L - 2`` all exceed ``UCL`` and
``L - 1 <= i < n - 2L + 2``: this is SKAB's notebook rule ``all(residual[i-L+1 : i] > UCL)``
with its residuals indexed by window *start*, re-indexed to window ends. Our window score (mean
squared error per sensor, averaged) stands in for SKAB's residual (mean absolute error per
sensor, summed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from monitor.bundle import Bundle
from monitor.detector import Detector, DetectorConfig, held_windows
from monitor.events import AlertEvent, EventType, ModelRef
from monitor.scoring import Scorer
from monitor.windows import WindowStore

logger = logging.getLogger(__name__)

Mode = Literal["service", "reference"]
#: Readings appended per block (the service appends what one poll returned).
BLOCK = 512
REFERENCE_QUANTILE = 0.999
REFERENCE_FACTOR = 4.0 / 3.0


@dataclass
class Series:
    """One asset's labelled test readings, sorted by time with strictly increasing ``ts_ms``."""

    name: str
    ts_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]  # [n, n_features], bundle feature order
    labels: npt.NDArray[np.bool_]
    #: Sensors a labelled point's fault affects (simulator ground truth), else empty.
    fault_sensors: tuple[frozenset[str], ...] = ()
    #: Points before this index only warm the windows up (e.g. SKAB's training rows).
    evaluate_from: int = 0
    #: Per-point timestamps in seconds for time-based scoring (NAB); default ``ts_ms / 1000``.
    times_s: npt.NDArray[np.float64] | None = None
    #: The asset the readings come from, where the data names one.
    asset: str | None = None

    def __post_init__(self) -> None:
        n = self.ts_ms.shape[0]
        if self.values.shape[0] != n or self.labels.shape != (n,):
            raise ValueError(f"series {self.name}: values/labels do not match {n} timestamps")
        if n > 1 and not bool((np.diff(self.ts_ms) > 0).all()):
            raise ValueError(f"series {self.name}: timestamps must be strictly increasing")

    @property
    def size(self) -> int:
        return int(self.ts_ms.shape[0])


@dataclass(frozen=True)
class Alert:
    """One alert, in point indices of its series: flagged over ``[opened, closed)``."""

    opened: int
    closed: int
    resolved: bool
    top_sensors: tuple[str, ...]
    peak_ratio: float


@dataclass
class Replay:
    """What the service path made of one series."""

    series: Series
    threshold: float
    score: npt.NDArray[np.float64]  # [n], NaN where no window ends
    sensor_error: npt.NDArray[np.float32]  # [n, n_features], NaN where no window ends
    flagged: npt.NDArray[np.bool_]  # [n]
    alerts: list[Alert] = field(default_factory=list)
    events: list[AlertEvent] = field(default_factory=list)
    mode: Mode = "service"
    #: The reference rule's control limit (``mode="reference"`` only).
    limit: float | None = None


def model_ref(bundle: Bundle) -> ModelRef:
    m = bundle.manifest.model
    return ModelRef(name=m.name, version=m.version, sha256=bundle.sha256)


def replay(
    scorer: Scorer,
    series: Series,
    detector: DetectorConfig,
    *,
    mode: Mode = "service",
    reference_train_end: int | None = None,
    max_gap_steps: int = 3,
    block: int = BLOCK,
    hold: tuple[int, float] | None = None,
) -> Replay:
    """Score ``series`` through the service path and apply the alert rule of ``mode``.

    ``reference_train_end``: with ``mode="reference"``, the windows ending before this point are
    the training windows its control limit is taken from. ``hold``: the hold sensor's index
    and running level, as the service's ``detector.hold`` (``detector.hold_ms`` is the rest).
    """
    bundle = scorer.bundle
    m = bundle.manifest
    n, nf = series.size, m.n_features
    if series.values.shape[1] != nf:
        raise ValueError(f"series {series.name}: {series.values.shape[1]} sensors, bundle {nf}")
    store = WindowStore(
        length=m.window.length,
        n_features=nf,
        interval_ms=max(1, round(m.sampling_interval_s * 1000)),
        max_gap_steps=max_gap_steps,
    )
    det = Detector(
        detector, threshold=m.threshold.value, features=m.features, model=model_ref(bundle)
    )
    score = np.full(n, np.nan)
    sensor_error = np.full((n, nf), np.nan, dtype=np.float32)
    events: list[AlertEvent] = []
    rows = np.arange(n, dtype=np.int64)
    values = np.ascontiguousarray(series.values, dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        store.append(series.name, series.ts_ms[start:stop], values[start:stop], rows[start:stop], 0)
        batch = store.collect()
        if not len(batch):
            continue
        out = scorer.score(batch.windows)
        score[batch.offsets] = out.score
        sensor_error[batch.offsets] = out.sensor_error
        held = None if hold is None else held_windows(batch.windows, *hold)
        events.extend(det.observe(batch.assets, batch.ts_ms, out.score, out.sensor_error, held))

    if mode == "reference":
        if reference_train_end is None:
            raise ValueError("the reference rule needs reference_train_end")
        flagged, limit = reference_flags(score, m.window.length, reference_train_end)
        return Replay(
            series, m.threshold.value, score, sensor_error, flagged, [], events, mode, limit
        )
    alerts = _alerts(events, series.ts_ms)
    flagged = np.zeros(n, dtype=bool)
    for a in alerts:
        flagged[a.opened : a.closed] = True
    return Replay(series, m.threshold.value, score, sensor_error, flagged, alerts, events, mode)


def _alerts(events: Sequence[AlertEvent], ts_ms: npt.NDArray[np.int64]) -> list[Alert]:
    def row(ts: int) -> int:
        return int(np.searchsorted(ts_ms, ts))

    opened: dict[str, AlertEvent] = {}
    peak: dict[str, float] = {}
    out: list[Alert] = []
    for e in events:
        ratio = e.peak_score / e.threshold
        if e.event is EventType.OPENED:
            opened[e.alert_id] = e
            peak[e.alert_id] = ratio
        elif e.event is EventType.UPDATED:
            peak[e.alert_id] = max(peak[e.alert_id], ratio)
        else:
            first = opened.pop(e.alert_id)
            out.append(_alert(first, row(first.ts_ms), row(e.ts_ms), True, ratio))
    n = int(ts_ms.shape[0])
    for aid, first in opened.items():
        out.append(_alert(first, row(first.ts_ms), n, False, peak[aid]))
    out.sort(key=lambda a: a.opened)
    return out


def _alert(first: AlertEvent, opened: int, closed: int, resolved: bool, ratio: float) -> Alert:
    # The opened event's top sensors are the attribution an operator acts on first.
    top = tuple(s.sensor for s in first.top_sensors)
    return Alert(opened, closed, resolved, top, ratio)


def reference_flags(
    score: npt.NDArray[np.float64], length: int, train_end: int
) -> tuple[npt.NDArray[np.bool_], float]:
    """SKAB's Conv-AE rule on window-end-indexed ``score`` (see the module docstring)."""
    n = score.shape[0]
    train = score[:train_end]
    train = train[np.isfinite(train)]
    if train.size == 0:
        raise ValueError("no training windows for the reference control limit")
    limit = float(np.quantile(train, REFERENCE_QUANTILE)) * REFERENCE_FACTOR
    above = np.where(np.isfinite(score), score > limit, False)
    flagged = np.zeros(n, dtype=bool)
    span = length - 1
    for i in range(length - 1, n - 2 * length + 2):
        flagged[i] = bool(above[i : i + span].all())
    return flagged, limit
