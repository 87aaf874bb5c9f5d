"""Per-asset alert state machine: scored windows in, :class:`~monitor.events.AlertEvent` out.

Pure and synchronous: no I/O, no clock. Time is the windows' own ``ts_ms`` (reading time), so the
same windows always yield the same events, whatever the batching.

Rules, per asset, for each window in ``ts`` order (``T`` = current threshold, ``r`` = score / T):

* A window is **above** when ``score >= T`` (the bundle contract: "at or above which a window is
  anomalous"). A window whose score is not finite carries no evidence and is skipped entirely.
* **Idle → open.** The last ``n`` windows are kept as a bitmask of "above" flags. When a window
  makes the count of above windows among the last ``n`` reach ``k``, an alert opens on that
  window: ``opened`` (seq 0). ``start_ts_ms`` is the ts of the oldest above window in the history
  (the first of the ``k``), and the alert id is ``alert_id(asset, start_ts_ms)``. The peak is the
  above window of the history with the highest ``r`` (earliest on a tie). The history is then
  cleared: windows that opened an alert never count towards the next one.
* **While open** the history is not kept. A window with a higher ``r`` than the peak becomes the
  peak; it is reported as ``updated`` only if ``r > reported_r * update_factor`` or its severity
  band is above the last reported one (so not on every window). Every window is also classified
  for resolution:

  - ``score <  T * hysteresis`` (**quiet**): the quiet streak grows by one;
  - ``score >= T * hysteresis`` (above, or in the dead band ``[T*h, T)``): the streak restarts at
    0. The alert stays open and no event is emitted: a dead-band window neither helps resolve the
    alert nor counts as new anomalous evidence.

  When the streak reaches ``m`` the alert **resolves** on that window: ``resolved`` with
  ``end_ts_ms = ts_ms`` = ts of that m-th quiet window: when the detector knew it was over,
  which is also the only ts a consumer can see the event at (not the last anomalous window).
* **Cooldown.** With ``cooldown_ms > 0``, windows with ``ts < end_ts_ms + cooldown_ms`` after a
  resolve are ignored: they neither open an alert nor enter the history, so the next alert needs
  ``k`` fresh above windows from the end of the cooldown.
* **Hold** (state-based suppression). A window the caller marks *held* (e.g. one in which the
  machine was stopped at some reading: a stop, a standstill or a start) and, with
  ``hold_ms > 0``, every window with ``ts < ts_held + hold_ms`` after it (the warm-up or
  cool-down that follows), is ignored while no alert is open, like a cooldown window; the
  history is cleared, so evidence from before the stop never adds to evidence after it. An open
  alert goes on as usual through held windows (it can still resolve).

Every event carries the current window's score, the alert's peak score, the *current* threshold,
the severity of the peak (``r < bands[0]`` warning, ``< bands[1]`` major, else critical) and the
peak window's top ``top_k`` sensors with a positive share of its error
(``share_f = sensor_error_f / sum(sensor_error)``; ties go to the earlier feature). ``seq`` is 0
for ``opened``, then 1, 2, … for ``updated``, and one more for ``resolved``.

Peaks are compared by ``r`` rather than raw score so that after :meth:`Detector.set_model` a new
model's scores are measured against its own threshold; with one model the two orders agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from monitor.errors import ConfigError, DataError
from monitor.events import AlertEvent, EventType, ModelRef, SensorShare, Severity, alert_id

#: Format of :meth:`Detector.snapshot`; bump on any incompatible change.
SNAPSHOT_VERSION = 1
#: Python ints make the history bitmask as wide as needed; this only bounds state size.
MAX_N = 1024

_SEVERITIES = (Severity.WARNING, Severity.MAJOR, Severity.CRITICAL)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DetectorConfig:
    """Alerting rules; see the module docstring for their exact meaning."""

    k: int = 3
    n: int = 5
    m: int = 10
    hysteresis: float = 0.8
    cooldown_ms: int = 0
    #: How long after a held window (see :meth:`Detector.observe`) windows stay held.
    hold_ms: int = 0
    #: Re-notify (``updated``) when the peak's score/threshold ratio grows by this factor.
    update_factor: float = 1.25
    #: Score/threshold ratios at which severity becomes major, then critical.
    severity_bands: tuple[float, float] = (2.0, 4.0)
    top_k: int = 3

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"detector.{field}: {getattr(self, field)!r} {why}")

        if not _is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise bad("n", f"must be an integer in 1..{MAX_N}")
        if not _is_int(self.k) or not 1 <= self.k <= self.n:
            raise bad("k", f"must be an integer in 1..n (n={self.n})")
        if not _is_int(self.m) or self.m < 1:
            raise bad("m", "must be an integer >= 1")
        if not _is_finite(self.hysteresis) or not 0 < self.hysteresis <= 1:
            raise bad("hysteresis", "must be in (0, 1]")
        if not _is_int(self.cooldown_ms) or self.cooldown_ms < 0:
            raise bad("cooldown_ms", "must be an integer >= 0")
        if not _is_int(self.hold_ms) or self.hold_ms < 0:
            raise bad("hold_ms", "must be an integer >= 0")
        if not _is_finite(self.update_factor) or self.update_factor < 1:
            raise bad("update_factor", "must be a finite number >= 1")
        bands = self.severity_bands
        if (
            not isinstance(bands, tuple)
            or len(bands) != 2
            or not all(_is_finite(b) for b in bands)
            or not 1 <= bands[0] <= bands[1]
        ):
            raise bad("severity_bands", "must be two finite ratios with 1 <= major <= critical")
        if not _is_int(self.top_k) or self.top_k < 1:
            raise bad("top_k", "must be an integer >= 1")

    def severity_rank(self, ratio: float) -> int:
        """0 (warning), 1 (major) or 2 (critical) for a score/threshold ratio."""
        major, critical = self.severity_bands
        return 0 if ratio < major else 1 if ratio < critical else 2


def held_windows(
    windows: npt.NDArray[np.float32], sensor: int, running_above: float
) -> npt.NDArray[np.bool_]:
    """Which of ``windows`` ([B, L, F], raw readings) ``detector.hold`` holds: those in which
    sensor ``sensor`` reads at or below ``running_above`` at some reading (the asset stopped,
    stopping or starting)."""
    held: npt.NDArray[np.bool_] = windows[:, :, sensor].min(axis=1) <= running_above
    return held


class _Win(NamedTuple):
    """An above-threshold window, as much of it as an alert may need to report."""

    ts: int
    score: float
    ratio: float
    top: tuple[SensorShare, ...]

    def dump(self) -> list[Any]:
        return [self.ts, self.score, self.ratio, [[s.sensor, s.share] for s in self.top]]

    @classmethod
    def load(cls, doc: Any) -> _Win:
        ts, score, ratio, top = doc
        if not _is_int(ts) or not _is_finite(score) or not _is_finite(ratio):
            raise ValueError(f"bad window {doc!r}")
        shares = tuple(SensorShare(str(name), float(share)) for name, share in top)
        return cls(ts, float(score), float(ratio), shares)


class _Alert:
    __slots__ = ("id", "peak", "quiet", "rep_rank", "rep_ratio", "seq", "start")

    def __init__(self, asset: str, start: int, peak: _Win, rep_ratio: float, rep_rank: int) -> None:
        self.start = start
        self.id = alert_id(asset, start)
        self.seq = 0
        self.peak = peak
        self.rep_ratio = rep_ratio  # peak ratio last reported (opened/updated)
        self.rep_rank = rep_rank  # severity rank last reported
        self.quiet = 0  # consecutive windows below threshold * hysteresis


class _State:
    """A non-idle asset. Idle assets (nothing open, empty history, no cooldown) have no entry."""

    __slots__ = ("alert", "cool_until", "hist", "hold_until", "pending")

    def __init__(self) -> None:
        self.hist = 0  # bit i set = the window i steps back was above; only while no alert
        self.pending: list[_Win] = []  # the above windows of ``hist``, oldest first
        self.cool_until: int | None = None
        self.hold_until: int | None = None  # windows before this ts are held
        self.alert: _Alert | None = None

    def idle(self) -> bool:
        return (
            self.alert is None
            and self.hist == 0
            and self.cool_until is None
            and self.hold_until is None
        )

    def dump(self, *, history: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.hist and history:
            doc["h"] = self.hist
            doc["p"] = [w.dump() for w in self.pending]
        if self.cool_until is not None:
            doc["c"] = self.cool_until
        if self.hold_until is not None:
            doc["u"] = self.hold_until
        a = self.alert
        if a is not None:
            doc["a"] = [a.start, a.seq, a.peak.dump(), a.rep_ratio, a.rep_rank, a.quiet]
        return doc

    @classmethod
    def load(cls, asset: str, doc: Mapping[str, Any], mask: int) -> _State:
        st = cls()
        hist = doc.get("h", 0)
        if not _is_int(hist) or hist & ~mask:
            raise ValueError(f"bad history {hist!r}")
        st.hist = hist
        st.pending = [_Win.load(w) for w in doc.get("p", [])]
        if len(st.pending) != hist.bit_count():
            raise ValueError("history and its windows disagree")
        cool = doc.get("c")
        if cool is not None and not _is_int(cool):
            raise ValueError(f"bad cooldown {cool!r}")
        st.cool_until = cool
        hold = doc.get("u")
        if hold is not None and not _is_int(hold):
            raise ValueError(f"bad hold {hold!r}")
        st.hold_until = hold
        if "a" in doc:
            start, seq, peak, rep_ratio, rep_rank, quiet = doc["a"]
            if not all(_is_int(v) for v in (start, seq, rep_rank, quiet)):
                raise ValueError("bad alert")
            if not _is_finite(rep_ratio) or seq < 0 or quiet < 0 or rep_rank not in (0, 1, 2):
                raise ValueError("bad alert")
            a = _Alert(asset, start, _Win.load(peak), float(rep_ratio), rep_rank)
            a.seq, a.quiet = seq, quiet
            st.alert = a
        if st.idle():
            raise ValueError("idle state")
        return st


class Detector:
    """The alert state machines of all assets this process owns."""

    def __init__(
        self,
        config: DetectorConfig,
        *,
        threshold: float,
        features: Sequence[str],
        model: ModelRef,
    ) -> None:
        self.config = config
        self._mask = (1 << config.n) - 1
        self._states: dict[str, _State] = {}
        self._open = 0
        self.set_model(threshold=threshold, model=model, features=features)

    @property
    def threshold(self) -> float:
        return self._threshold

    @property
    def features(self) -> tuple[str, ...]:
        return self._features

    @property
    def model(self) -> ModelRef:
        return self._model

    def set_model(self, *, threshold: float, model: ModelRef, features: Sequence[str]) -> None:
        """Switch to a new model (hot reload).

        Open alerts, partial histories and cooldowns are kept; the new threshold and feature order
        apply to windows observed from now on (history bits already set stay set).
        """
        if not _is_finite(threshold) or threshold <= 0:
            raise ConfigError(f"detector threshold: {threshold!r} must be finite and > 0")
        feats = tuple(features)
        if not feats or len(set(feats)) != len(feats):
            raise ConfigError("detector features: must be a non-empty list without duplicates")
        self._threshold = float(threshold)
        self._low = self._threshold * self.config.hysteresis
        self._features = feats
        self._model = model

    def open_alerts(self) -> int:
        """Number of alerts currently open."""
        return self._open

    def tracked_assets(self) -> int:
        """Number of non-idle assets (open alert, partial history or cooldown)."""
        return len(self._states)

    def has_state(self, asset: str) -> bool:
        """Whether ``asset`` is not idle (open alert, partial history or cooldown)."""
        return asset in self._states

    def forget(self, assets: Iterable[str]) -> None:
        """Drop the state of these assets (their partition went to another consumer)."""
        for asset in assets:
            st = self._states.pop(asset, None)
            if st is not None and st.alert is not None:
                self._open -= 1

    def observe(
        self,
        assets: Sequence[str],
        ts_ms: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
        sensor_error: npt.NDArray[np.float32],
        held: npt.NDArray[np.bool_] | None = None,
    ) -> list[AlertEvent]:
        """Feed a batch of scored windows; return the events they cause, in batch order.

        Windows of one asset must come in ``ts`` order (within and across batches); windows of
        different assets may interleave. ``held`` marks windows to hold (see the module
        docstring; none when ``None``). Raises ``ValueError`` on inconsistent shapes.
        """
        b = len(assets)
        nf = len(self._features)
        if ts_ms.shape != (b,) or scores.shape != (b,) or sensor_error.shape != (b, nf):
            raise ValueError(
                f"observe: {b} assets, ts {ts_ms.shape}, scores {scores.shape}, sensor_error "
                f"{sensor_error.shape}; expected ({b},), ({b},), ({b}, {nf})"
            )
        if held is not None and held.shape != (b,):
            raise ValueError(f"observe: {b} assets, held {held.shape}; expected ({b},)")
        if b == 0:
            return []
        thr = self._threshold
        # float64 throughout so "above" and the ratio agree exactly (a float32 comparison would
        # round the threshold).
        sc = scores.astype(np.float64)
        above = sc >= thr
        finite = np.isfinite(sc)
        all_finite = bool(finite.all())
        if not all_finite:
            above &= finite
        above_idx = np.flatnonzero(above)
        held_idx = np.flatnonzero(held) if held is not None else above_idx[:0]
        states = self._states
        # Fast path, the common case: nothing above threshold or held, and no asset with state.
        if not states and above_idx.size == 0 and held_idx.size == 0:
            return []
        above_rows = above_idx.tolist()
        # Give every asset with an above or held window a state up front, so that one C-level
        # pass over the batch finds all rows to step (any that stay idle are dropped below).
        for i in above_rows + held_idx.tolist():
            asset = str(assets[i])
            if asset not in states:
                states[asset] = _State()
        rows = list(compress(range(b), map(states.__contains__, assets)))
        if not all_finite:
            rows = [i for i in rows if finite[i]]
        if not rows:
            return []

        # Attribution of every above window (rare, so this is cheap), vectorised.
        tops: dict[int, tuple[SensorShare, ...]] = {}
        if above_rows:
            err = sensor_error[above_idx].astype(np.float64)
            total = err.sum(axis=1, keepdims=True)
            shares = np.divide(err, total, out=np.zeros_like(err), where=total > 0)
            order = np.argsort(-shares, axis=1, kind="stable")[:, : self.config.top_k]
            top_shares = np.take_along_axis(shares, order, axis=1)
            feats = self._features
            for row, cols, vals in zip(
                above_rows, order.tolist(), top_shares.tolist(), strict=True
            ):
                tops[row] = tuple(
                    SensorShare(feats[c], v) for c, v in zip(cols, vals, strict=True) if v > 0
                )

        idx = np.asarray(rows, dtype=np.intp)
        rsc = sc[idx]
        ts_l: list[int] = ts_ms[idx].tolist()
        score_l: list[float] = rsc.tolist()
        ratio_l: list[float] = (rsc / thr).tolist()
        quiet_l: list[bool] = (rsc < self._low).tolist()
        above_l: list[bool] = above[idx].tolist()
        held_l: list[bool] = [False] * len(rows) if held is None else held[idx].tolist()

        events: list[AlertEvent] = []
        for j, i in enumerate(rows):
            asset = str(assets[i])
            is_above = above_l[j]
            st = states.get(asset)
            if st is None:
                if not (is_above or held_l[j]):
                    continue  # idle and a normal window: nothing to remember
                st = states[asset] = _State()
            self._step(
                events,
                st,
                asset,
                ts_l[j],
                score_l[j],
                ratio_l[j],
                is_above,
                quiet_l[j],
                tops[i] if is_above else (),
                held_l[j],
            )
            if st.idle():
                del states[asset]
        return events

    def _step(
        self,
        events: list[AlertEvent],
        st: _State,
        asset: str,
        ts: int,
        score: float,
        ratio: float,
        is_above: bool,
        quiet: bool,
        top: tuple[SensorShare, ...],
        held: bool = False,
    ) -> None:
        """Advance one asset's state machine by one window, appending any event to ``events``."""
        cfg = self.config
        if held:
            st.hold_until = ts + cfg.hold_ms if cfg.hold_ms else None
        a = st.alert
        if a is not None:
            if is_above and ratio > a.peak.ratio:
                a.peak = _Win(ts, score, ratio, top)
                rank = cfg.severity_rank(ratio)
                if ratio > a.rep_ratio * cfg.update_factor or rank > a.rep_rank:
                    a.seq += 1
                    a.rep_ratio, a.rep_rank = ratio, rank
                    self._emit(events, EventType.UPDATED, asset, a, ts, score, None)
            if not quiet:
                a.quiet = 0
                return
            a.quiet += 1
            if a.quiet >= cfg.m:
                a.seq += 1
                self._emit(events, EventType.RESOLVED, asset, a, ts, score, ts)
                st.alert = None
                self._open -= 1
                if cfg.cooldown_ms:
                    st.cool_until = ts + cfg.cooldown_ms
            return

        if held or (st.hold_until is not None and ts < st.hold_until):
            st.hist, st.pending = 0, []
            return
        st.hold_until = None
        if st.cool_until is not None:
            if ts < st.cool_until:
                return
            st.cool_until = None
        old = st.hist
        if old >> (cfg.n - 1):  # the oldest window leaves the last-n; it was above
            del st.pending[0]
        st.hist = ((old << 1) | is_above) & self._mask
        if not is_above:
            return
        st.pending.append(_Win(ts, score, ratio, top))
        if st.hist.bit_count() < cfg.k:
            return
        peak = max(st.pending, key=lambda w: w.ratio)  # first maximum: earliest on a tie
        start = st.pending[0].ts
        st.alert = _Alert(asset, start, peak, peak.ratio, cfg.severity_rank(peak.ratio))
        st.hist, st.pending = 0, []
        self._open += 1
        self._emit(events, EventType.OPENED, asset, st.alert, ts, score, None)

    def _emit(
        self,
        events: list[AlertEvent],
        kind: EventType,
        asset: str,
        a: _Alert,
        ts: int,
        score: float,
        end: int | None,
    ) -> None:
        events.append(
            AlertEvent(
                alert_id=a.id,
                seq=a.seq,
                event=kind,
                asset=asset,
                start_ts_ms=a.start,
                end_ts_ms=end,
                ts_ms=ts,
                score=score,
                peak_score=a.peak.score,
                threshold=self._threshold,
                severity=_SEVERITIES[self.config.severity_rank(a.peak.ratio)],
                top_sensors=a.peak.top,
                model=self._model,
            )
        )

    def snapshot(self, assets: Iterable[str], *, history: bool = True) -> dict[str, Any]:
        """Compact JSON-able state of the non-idle ones among ``assets``; ``{}`` if all are idle.

        Restoring it into a detector with the same config continues exactly as this one would.
        With ``history=False`` the partial k-of-n histories are left out (much smaller): open
        alerts and cooldowns still continue exactly; only evidence towards a *new* alert
        restarts.
        """
        states = self._states
        out = {
            a: doc
            for a in assets
            if (st := states.get(a)) is not None and (doc := st.dump(history=history))
        }
        if not out:
            return {}
        return {"v": SNAPSHOT_VERSION, "n": self.config.n, "assets": out}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`snapshot`; its assets replace any state held for them.

        Raises :class:`DataError` if the snapshot is malformed or from another format or ``n``;
        nothing is changed then. An empty snapshot (all assets idle) changes nothing.
        """
        if not state:
            return
        try:
            if state.get("v") != SNAPSHOT_VERSION:
                raise ValueError(f"version {state.get('v')!r}, expected {SNAPSHOT_VERSION}")
            if state.get("n") != self.config.n:
                raise ValueError(
                    f"taken with n={state.get('n')!r}, this detector has n={self.config.n}"
                )
            loaded = {
                str(asset): _State.load(str(asset), doc, self._mask)
                for asset, doc in state["assets"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"detector snapshot unusable: {exc}") from None
        for asset, st in loaded.items():
            old = self._states.get(asset)
            if old is not None and old.alert is not None:
                self._open -= 1
            if st.alert is not None:
                self._open += 1
            self._states[asset] = st
